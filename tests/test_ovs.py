"""Open vSwitch packet paths on the thesis ovs-switch trace, checked against babeltrace2's text.

The oracle parses `babeltrace2 --clock-seconds` output of the kernel trace and follows each
tag through its events on its own (plain Python over the text), then compares every packet's
path and stage latencies with the model's (DuckDB over our store)."""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict

import pytest

from tests.conftest import need_data, need_program

OVS_TRACE = ("thesis", "ovs-switch", "lttng-traces", "auto-20160803-122317")
LINE = re.compile(r"^\[(\d+)\.(\d{9})\] \S+ \S+ addons_lttng_ovs_(\w+): \{[^}]*\}, \{ (.*) \}$")


@pytest.fixture(scope="module")
def ovs_store(tmp_path_factory):
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    trace = need_data(*OVS_TRACE)
    store = Store(tmp_path_factory.mktemp("ovs") / "store", create=True)
    ingest(store, [trace])
    return store


@pytest.fixture(scope="module")
def bt2_events():
    """(ts_ns, stage, fields) for every OvS event, as babeltrace2 prints them."""
    bt = need_program("babeltrace2")
    kernel = need_data(*OVS_TRACE, "kernel")
    text = subprocess.run([bt, "--clock-seconds", str(kernel)], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        fields = {}
        for item in m.group(4).split(", "):
            k, v = item.split(" = ")
            fields[k] = int(v, 0)
        out.append((int(m.group(1)) * 1_000_000_000 + int(m.group(2)), m.group(3), fields))
    assert out, "babeltrace2 printed no OvS events"
    return out


def _oracle_packets(events):
    """Per tag, split at each receive; path and stage timestamps by plain iteration."""
    by_tag = defaultdict(list)
    for ts, stage, f in events:
        if f["id"]:
            by_tag[f["id"]].append((ts, stage))
    packets = []
    for tag, evs in by_tag.items():
        current = None
        for ts, stage in evs:
            if stage == "vport_receive" or current is None:
                current = {"tag": tag, "stages": defaultdict(list)}
                packets.append(current)
            current["stages"][stage].append(ts)
    for p in packets:
        s = p["stages"]
        sends = len(s["vport_send"])
        if not s["vport_receive"]:
            path = "no_receive"
        elif not s["upcall_start"]:
            path = {0: "no_send", 1: "fast"}.get(sends, "fast_flood")
        elif not s["upcall_end"] and sends == 0:
            path = "upcall_lost"
        else:
            path = "slow" if sends <= 1 else "slow_flood"
        p["path"] = path
        first = lambda k: s[k][0] if s[k] else None  # noqa: E731
        p["receive_ts"] = first("vport_receive")
        diff = lambda a, b: (first(b) - first(a)) if first(a) is not None and first(b) is not None else None  # noqa: E731
        p["upcall_ns"] = diff("upcall_start", "upcall_end")
        p["to_upcall_ns"] = diff("vport_receive", "upcall_start")
        p["reinject_ns"] = diff("upcall_end", "vport_send")
        p["latency_ns"] = diff("vport_receive", "vport_send")
        p["sends"] = sends
    return packets


def test_stage_counts_match_the_issue_and_babeltrace2(ovs_store, bt2_events):
    from stacklens.models.ovs import stage_counts
    ours = stage_counts(ovs_store.connect())
    assert ours == {"vport_receive": 204, "upcall_start": 81, "upcall_end": 69, "vport_send": 360}
    bt = defaultdict(int)
    for _, stage, _ in bt2_events:
        bt[stage] += 1
    assert ours == dict(bt)


def test_every_tagged_packet_classified_with_babeltrace2_latencies(ovs_store, bt2_events):
    from stacklens.models.ovs import PATHS, packet_paths
    ours = packet_paths(ovs_store.connect()).to_pylist()
    expected = _oracle_packets(bt2_events)
    assert len(ours) == len(expected) > 150
    assert all(p["path"] in PATHS for p in ours)
    key = lambda p: (p["tag"], p["receive_ts"] or 0)  # noqa: E731
    for o, e in zip(sorted(ours, key=key), sorted(expected, key=key)):
        assert (o["tag"], o["path"], o["sends"]) == (e["tag"], e["path"], e["sends"])
        for col in ("receive_ts", "upcall_ns", "to_upcall_ns", "reinject_ns", "latency_ns"):
            assert o[col] == e[col], (o["tag"], col)
    # The trace holds both paths, and floods, so the classification is exercised.
    paths = {p["path"] for p in ours}
    assert {"fast", "slow", "fast_flood", "slow_flood"} <= paths


def test_untagged_share_and_protocols(ovs_store, bt2_events):
    from stacklens.models.ovs import packet_paths, untagged_share
    con = ovs_store.connect()
    share = untagged_share(con)
    receives = [f for _, s, f in bt2_events if s == "vport_receive"]
    assert share["received"] == len(receives)
    assert share["untagged"] == sum(1 for f in receives if f["id"] == 0)
    protos = {p["tag"]: p["proto"] for p in packet_paths(con).to_pylist()}
    bt_proto = {f["id"]: f["protocol"] for f in receives if f["id"]}
    names = {0x800: "IPv4", 0x86DD: "IPv6", 0x806: "ARP"}
    assert protos == {t: names[p] for t, p in bt_proto.items()}


# ---- the network lab: a real ovs-vswitchd (netdev datapath) between two namespaces ----------

@pytest.fixture(scope="module")
def network_lab(tmp_path_factory):
    import os
    for prog in ("ovs-vswitchd", "ovsdb-server", "ovs-appctl", "ip"):
        need_program(prog)
    if os.geteuid() != 0:
        pytest.skip("the network lab needs root (network namespaces)")
    from stacklens.lab.network import run_network
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    out = tmp_path_factory.mktemp("netlab") / "bundle"
    result = run_network(out)
    store = Store(out.parent / "store", create=True)
    ingest(store, [out])
    return result, store, json.loads((out / "lab.json").read_text()), out


def test_network_lab_burst_after_flush(network_lab):
    from stacklens.analyses.ovs_report import live_report
    result, store, lab, _ = network_lab
    report = live_report(store.connect())
    (dp,) = report["datapaths"]
    interval = lab["parameters"]["sample_s"] * 1e9
    (reconf,) = dp["reconfigurations"]
    # The flush time as the lab itself took it (lab.json), not from our store.
    assert abs(reconf["ts"] - lab["flush_ns"]) < 1_000_000
    after_flush = [b for b in dp["miss_bursts"] if b["end"] >= lab["flush_ns"]]
    assert after_flush, dp["miss_bursts"]
    # Each sample closes the interval it counts: the burst's interval ends within one
    # sampling interval after the flush.
    assert 0 <= after_flush[0]["start"] - lab["flush_ns"] <= 1.5 * interval
    # The burst is the lab's active megaflows going back through ovs-vswitchd.
    assert after_flush[0]["total"] >= lab["parameters"]["udp_ports"]
    assert reconf["slow_share_after"]["share"] > reconf["slow_share_before"]["share"]


def test_network_lab_misses_equal_ovs_counters(network_lab):
    from stacklens.models.ovs import datapath_series, miss_upcalls
    result, store, lab, out = network_lab
    con = store.connect()
    series = datapath_series(con).to_pylist()
    # OvS's own per-thread counters (pmd-stats-show, a different command than the dpctl/show
    # our series is built from), read by the lab at the start and the end.
    ovs_misses = lambda c: c["miss_success"] + c["miss_failed"]  # noqa: E731
    assert series[-1]["missed"] - series[0]["missed"] == sum(r["d_missed"] or 0 for r in series)
    assert series[-1]["missed"] == ovs_misses(lab["ovs_counters_end"])
    assert series[-1]["lost"] == lab["ovs_counters_end"]["miss_failed"]
    # And every miss is one "miss upcall" record in ovs-vswitchd's own log.
    log_records = (out / "ovs" / "ovs-vswitchd.log").read_text().count("miss upcall:")
    assert miss_upcalls(con).num_rows == log_records == series[-1]["missed"]


def test_network_lab_slow_packets_name_their_vms(network_lab):
    from stacklens.models.ovs import miss_upcalls
    result, store, lab, _ = network_lab
    rows = miss_upcalls(store.connect()).to_pylist()
    ip_to_vm = {vm["ip"]: name for name, vm in lab["vms"].items()}
    ipv4 = [r for r in rows if r["ip_src"] in ip_to_vm and r["ip_dst"] in ip_to_vm]
    assert ipv4
    for r in ipv4:  # the VM behind the input port (from OvS's database) sent the packet
        assert (r["src_vm"], r["dst_vm"]) == (ip_to_vm[r["ip_src"]], ip_to_vm[r["ip_dst"]])


def test_lab_leaves_nothing_running(network_lab):
    import subprocess
    result, *_ = network_lab
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert all(vm["namespace"] not in names for vm in result.vms.values())
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    assert all(vm["port"] not in links for vm in result.vms.values())


def test_ovs_cli_json_and_png(ovs_store, tmp_path):
    from typer.testing import CliRunner
    from stacklens.cli import _register_commands, app
    if "ovs" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        _register_commands()
    png = tmp_path / "ovs.png"
    res = CliRunner().invoke(app, ["ovs", "--store", str(ovs_store.root), "--png", str(png), "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    k = body["datapath_kprobes"]
    assert k["events"] == {"vport_receive": 204, "upcall_start": 81, "upcall_end": 69, "vport_send": 360}
    assert sum(k["paths"].values()) == k["tagged_packets"]
    assert sum(body["histograms"]["upcall_ns"]["counts"]) == k["latency"]["upcall_ns"]["n"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    meta = Image.open(png).text  # the tEXt chunks matplotlib wrote
    assert "latency" in meta["Title"]
    panels = json.loads(meta["Description"])["panels"]
    assert {p["stage"]: p["packets"] for p in panels} == {
        k: v["n"] for k, v in k["latency"].items() if v["n"]}
    res = CliRunner().invoke(app, ["ovs", "--store", str(ovs_store.root)])
    assert res.exit_code == 0 and "upcall" in res.output


def test_ovs_text_prints_the_fast_and_slow_path_medians(ovs_store, bt2_events):
    import statistics
    from typer.testing import CliRunner
    from stacklens.cli import _register_commands, app
    from stacklens.views.terminal import fmt_duration
    if "ovs" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        _register_commands()
    res = CliRunner().invoke(app, ["ovs", "--store", str(ovs_store.root)])
    assert res.exit_code == 0, res.output
    packets = _oracle_packets(bt2_events)  # babeltrace2's text, followed tag by tag here
    for label, paths in (("fast path (no upcall)", ("fast", "fast_flood")), ("slow path (upcall)", ("slow", "slow_flood"))):
        lat = [p["latency_ns"] for p in packets if p["path"] in paths and p["latency_ns"] is not None]
        assert f"{label}: median receive → send {fmt_duration(statistics.median(lat))} over {len(lat)} packets" \
            in res.output


def test_ovs_latency_figure_shares_bins_and_counts_babeltrace2_packets(ovs_store, bt2_events):
    """The histogram figure: one panel per stage, titled and labelled with units, log x axis,
    the same bins in every panel, and per panel as many packets as the babeltrace2 oracle
    finds with that stage latency."""
    import numpy as np
    from stacklens.analyses.ovs_report import STAGE_COLUMNS, stage_latencies
    from stacklens.models.ovs import packet_paths
    from stacklens.views.figures import close, ovs_latency_figure
    lat = stage_latencies(packet_paths(ovs_store.connect()))
    fig = ovs_latency_figure({c: (STAGE_COLUMNS[c], lat[c]) for c in STAGE_COLUMNS})
    try:
        expected = _oracle_packets(bt2_events)
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == list(STAGE_COLUMNS.values())
        assert fig._suptitle.get_text().startswith("Open vSwitch")
        assert "µs" in axes[-1].get_xlabel() and all(ax.get_ylabel() == "packets" for ax in axes)
        assert all(ax.get_xscale() == "log" for ax in axes)
        lefts = [tuple(np.round([b.get_x() for b in ax.patches], 9)) for ax in axes]
        assert len(set(lefts)) == 1 and len(lefts[0]) >= 5  # shared bins
        for ax, col in zip(axes, STAGE_COLUMNS):
            n = sum(1 for p in expected if p[col] is not None and p[col] > 0)
            assert sum(b.get_height() for b in ax.patches) == n > 0, col
            med = np.median([p[col] for p in expected if p[col] is not None and p[col] > 0])
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert legend[0] == f"{n} packets" and legend[1].startswith("median ")
            assert float(ax.lines[0].get_xdata()[0]) == pytest.approx(med / 1000)
    finally:
        close(fig)


def test_bad_sample_lines_are_skipped_and_reported(network_lab, tmp_path):
    from stacklens.sources.base import ReadOptions
    from stacklens.sources.ovs_stats import OvsStatsReader
    *_, out = network_lab
    good = (out / "ovs" / "ovs-stats.jsonl").read_text().splitlines()
    bad = tmp_path / "ovs-stats.jsonl"
    bad.write_text("\n".join(good[:3] + ['{"ovs_sample_ns": 17, "appctl": {"dpctl/sh'] + good[3:]) + "\n")
    reader = OvsStatsReader(bad, ReadOptions())
    rows = sum(t.num_rows for t in reader.tables())
    clean = OvsStatsReader(out / "ovs" / "ovs-stats.jsonl", ReadOptions())
    assert rows == sum(t.num_rows for t in clean.tables()) > 0
    assert reader.report.skipped == 1 and reader.report.bad_positions == [4]


def test_network_lab_diagnosed_as_upcall_storm(network_lab):
    """diagnose names the lab's flush as the cause of the miss burst, with the VMs whose packets
    went back to ovs-vswitchd counted from ovs-vswitchd's own log text."""
    import datetime as dt
    import re
    from stacklens.diagnose.rules import diagnose_store
    result, store, lab, out = network_lab
    found = [f for f in diagnose_store(store) if f.rule == "ovs_upcall_storm"]
    assert len(found) == 1, [f.statement for f in found]
    (f,) = found
    assert f.subject["command"] == "revalidator/purge" and "revalidator/purge" in f.statement
    command = next(e for e in f.evidence if e.kind == "event")
    assert abs(command.start - lab["flush_ns"]) < 1_000_000
    burst = next(e for e in f.evidence if e.label == "miss burst")
    assert lab["flush_ns"] - 1_000_000 <= burst.start <= burst.end
    assert burst.value >= lab["parameters"]["udp_ports"]  # every active UDP flow missed again
    # the log's miss upcalls after the flush up to the burst's end, by the VM whose MAC sent them
    mac_vm = {vm["mac"]: name for name, vm in lab["vms"].items()}
    text = (out / "ovs" / "ovs-vswitchd.log").read_text()
    expected: dict[str, int] = {}
    for stamp, flow in re.findall(r"^(\S+)\|\d+\|dpif_netdev\|DBG\|[^\n]*miss upcall:\n([^\n]*)", text, flags=re.M):
        t = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
        ns = (int(t.timestamp()) * 10**6 + t.microsecond) * 1000
        if lab["flush_ns"] < ns <= burst.end:
            vm = mac_vm[re.search(r"eth\(src=([0-9a-f:]+)", flow).group(1)]
            expected[vm] = expected.get(vm, 0) + 1
    got = {e.ref["vm"]: e.value for e in f.evidence if e.label.startswith("upcalls from ")}
    assert got == expected and set(f.subject["vms"]) == set(expected)
    # the sampled burst = the upcalls the daemon logged (a log line and a sample in the same ms may fall
    # either side of the sample)
    assert abs(sum(got.values()) - burst.value) <= 2
    assert f.action


def test_diagnose_kprobe_upcalls_lost_and_bursts(ovs_store, bt2_events):
    """The diagnosis over the datapath kprobes: lost upcalls and upcall bursts, both counted
    here from babeltrace2's text (packets followed by tag; upcall_start per 1 s bin)."""
    import statistics
    from stacklens.diagnose.rules import diagnose_store
    findings = {f.rule: f for f in diagnose_store(ovs_store)}
    packets = _oracle_packets(bt2_events)
    lost = [p for p in packets if p["path"] == "upcall_lost"]
    upcalled = [p for p in packets if p["stages"]["upcall_start"]]
    f = findings["ovs_lost_upcalls"]
    assert f.subject["lost"] == len(lost) > 0 and f.subject["upcalls"] == len(upcalled)
    assert f.statement.startswith(f"{len(lost)} of the {len(upcalled)} upcalls")
    examples = [e for e in f.evidence if e.kind == "event"]
    assert {e.ref["tag"] for e in examples} <= {p["tag"] for p in lost} and examples
    assert all(e.start == p["stages"]["upcall_start"][0] for e in examples for p in lost if p["tag"] == e.ref["tag"])
    # bursts: runs of 1 s bins with at least max(3, 4 x median) upcall_start events
    starts = sorted(ts for ts, stage, _ in bt2_events if stage == "upcall_start")
    first = starts[0] // 10**9 * 10**9
    counts = [0] * ((starts[-1] - first) // 10**9 + 1)
    for ts in starts:
        counts[(ts - first) // 10**9] += 1
    threshold = max(3, 4 * statistics.median(counts))
    runs, i = [], 0
    while i < len(counts):
        if counts[i] >= threshold:
            j = i
            while j + 1 < len(counts) and counts[j + 1] >= threshold:
                j += 1
            runs.append((first + i * 10**9, first + (j + 1) * 10**9, sum(counts[i:j + 1])))
            i = j + 1
        else:
            i += 1
    b = findings["ovs_upcall_bursts"]
    assert b.subject["bursts"] == len(runs) > 0 and b.subject["upcalls"] == sum(n for *_, n in runs)
    shown = {(e.start, e.end, e.value) for e in b.evidence if e.kind == "interval"}
    assert shown <= set(runs) and len(shown) == min(len(runs), 5)


def test_sample_times_out_of_int64_ns_range_are_skipped(network_lab, tmp_path):
    """Issue 15: samples (and log records) of the real lab whose time no int64 ns holds are
    skipped and reported by line; the other lines give exactly the rows of the untouched file."""
    import re
    from stacklens.sources.ovs_stats import OvsLogReader, OvsStatsReader
    from tests.test_time_range import assert_kept_and_reported, rows_of
    *_, out = network_lab
    src = out / "ovs" / "ovs-stats.jsonl"
    clean, _ = rows_of(OvsStatsReader, src)
    lines = src.read_text().split("\n")
    assert len([ln for ln in lines if ln]) >= 4
    news = {2: "9223372036854775808", 3: "-9223372036854775809", len([ln for ln in lines if ln]): "10" * 20}
    for i, new in news.items():
        lines[i - 1], n = re.subn(r'"ovs_sample_ns": -?\d+', f'"ovs_sample_ns": {new}', lines[i - 1], count=1)
        assert n == 1
    path = tmp_path / "ovs-stats.jsonl"
    path.write_text("\n".join(lines))
    got, reader = rows_of(OvsStatsReader, path)
    assert_kept_and_reported(got, reader, clean, list(news))
    logs = [p for p in out.rglob("*") if p.is_file() and OvsLogReader.sniff(p, p.read_bytes()[:16384])]
    assert logs
    clean, _ = rows_of(OvsLogReader, logs[0])
    lines = logs[0].read_text().split("\n")
    heads = [i for i, ln in enumerate(lines, start=1) if re.match(r"^\d{4}-\d\d-\d\dT", ln)]
    news = {heads[1]: "9999", heads[len(heads) // 2]: "1600", heads[-1]: "2263"}
    for i, year in news.items():
        lines[i - 1] = year + lines[i - 1][4:]
    path = tmp_path / logs[0].name
    path.write_text("\n".join(lines))
    got, reader = rows_of(OvsLogReader, path)
    # a record's continuation lines go with it
    assert_kept_and_reported(got, reader, clean, list(news))
