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
