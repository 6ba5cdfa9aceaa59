"""Correlation, explain and diagnose on real migration-lab bundles (normal, stressed,
interference), each produced here by `stacklens lab run` (two real TCG QEMUs, ftrace).

Oracles are the lab's own record (lab.json: QEMU pids/tids read from /proc, the scenario's
bandwidth cap, the busy VMs) and QEMU's own QMP samples — never our output."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_program

pytestmark = pytest.mark.timeout(400)
LAB_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    need_program("qemu-system-x86_64")
    need_program("gcc")
    root = tmp_path_factory.mktemp("diag")
    out = {}
    for scenario in ("normal", "stressed", "interference"):
        bundle = root / scenario
        done = subprocess.run([sys.executable, "-m", "stacklens.cli", "lab", "run", "--scenario", scenario,
                               "--out", str(bundle)], capture_output=True, text=True, timeout=LAB_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-2000:]
        out[scenario] = bundle
    return out


@pytest.fixture(scope="module")
def stores(bundles, tmp_path_factory):
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    out = {}
    for name, bundle in bundles.items():
        store = Store(tmp_path_factory.mktemp("st") / name, create=True)
        ingest(store, [bundle])
        out[name] = store
    return out


def _lab(bundle: Path) -> dict:
    return json.loads((bundle / "lab.json").read_text())


def _diagnose_cli(target: list[str], tmp: Path) -> tuple[dict, str]:
    html = tmp / "report.html"
    done = subprocess.run([sys.executable, "-m", "stacklens.cli", "diagnose", *target, "--json", "--html", str(html)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), html.read_text()


def test_vm_threads_two_ways_agree(bundles, stores):
    """QEMU's trace tids joined with the kernel trace find the same process as the lab's /proc
    reading, and every thread the lab saw."""
    from stacklens.models.correlation import resolve_vm, vm_threads
    for name in ("normal", "interference"):
        lab = _lab(bundles[name])
        con = stores[name].connect()
        assert resolve_vm(con, lab["vm"]) == (lab["vm"], lab["instance"])
        assert resolve_vm(con, lab["instance"]) == (lab["vm"], lab["instance"])
        rows = vm_threads(con).to_pylist()
        for proc in lab["processes"]:
            if proc["vm"] != lab["vm"]:
                continue
            traced = [r for r in rows if r["via"] == "qemu.trace+kernel" and r["vm"] == proc["vm"]
                      and r["host"] == proc["host"]]
            assert traced, f"{name}: no {proc['role']} threads found through the QEMU trace"
            assert {r["pid"] for r in traced} == {proc["pid"]}
            # threads the lab saw in /proc while migrating; the kernel trace may know more
            assert {t["tid"] for t in proc["threads"]} <= {r["tid"] for r in traced}


def test_normal_has_no_findings(bundles, tmp_path):
    report, html = _diagnose_cli([str(bundles["normal"])], tmp_path)
    assert _lab(bundles["normal"])["status"] == "completed"
    assert report["findings"] == [], [f["statement"] for f in report["findings"]]
    assert "No findings" in html


def test_stressed_names_non_convergence_with_both_rates(bundles, tmp_path):
    lab = _lab(bundles["stressed"])
    assert lab["status"] == "cancelled"
    report, html = _diagnose_cli([str(bundles["stressed"])], tmp_path)
    findings = report["findings"]
    assert [f["rule"] for f in findings][:1] == ["migration_not_converging"]
    f = findings[0]
    assert f["severity"] == "critical" and f["subject"]["vm"] == lab["vm"]
    numbers = {e["label"]: e["value"] for e in f["evidence"] if e["kind"] == "number"}
    dirty = next(v for k, v in numbers.items() if k.startswith("guest dirty rate"))
    sent = next(v for k, v in numbers.items() if k.startswith("transfer rate"))
    # QEMU's own dirty-pages-rate samples while migrating (QMP record of the source)
    qmp_rates = []
    for line in next((bundles["stressed"] / "src").glob("*.qmp.jsonl")).read_text().splitlines():
        m = json.loads(line)
        rate = (((m.get("msg") or m).get("return") or {}).get("ram") or {}).get("dirty-pages-rate") \
            if isinstance((m.get("msg") or m).get("return"), dict) else None
        if rate:
            qmp_rates.append(rate)
    assert qmp_rates, "no dirty-pages-rate in the QMP record"
    assert abs(dirty - statistics.median(qmp_rates)) <= 0.25 * statistics.median(qmp_rates)
    # the transfer rate is the scenario's bandwidth cap in pages
    cap_pages = lab["parameters"]["bandwidth"] / 4096
    assert abs(sent - cap_pages) <= 0.15 * cap_pages
    assert f"{dirty:,}" in f["statement"] and f"{sent:,}" in f["statement"]
    assert "rolled back" in f["statement"]
    assert "did not converge" in html


def test_interference_names_the_busy_vms(bundles, stores, tmp_path):
    lab = _lab(bundles["interference"])
    busy = {p["vm"]: {t["tid"] for t in p["threads"]} for p in lab["processes"] if p["role"].startswith("busy")}
    assert len(busy) == 2
    report, _ = _diagnose_cli(["--store", str(stores["interference"].root)], tmp_path)
    found = [f for f in report["findings"] if f["rule"] == "migration_interference"]
    assert len(found) == 1, [f["statement"] for f in report["findings"]]
    f = found[0]
    assert f["subject"]["vm"] == lab["vm"]
    for vm, tids in busy.items():
        assert f"VM {vm}" in f["statement"]
        ev = next(e for e in f["evidence"] if e["ref"].get("vm") == vm)
        assert set(ev["ref"]["tids"]) <= tids  # the preempting threads are that VM's own (from /proc)
        assert ev["ref"]["share"] >= 0.1
    assert not any(f["rule"] == "migration_not_converging" for f in report["findings"])


def test_explain_vm_and_request_nest_down_to_kernel_threads(bundles, stores):
    lab = _lab(bundles["interference"])
    for args in (["--vm", lab["vm"]], ["--request", lab["request_id"]]):
        done = subprocess.run([sys.executable, "-m", "stacklens.cli", "explain", "--store",
                               str(stores["interference"].root), *args, "--json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        tree = json.loads(done.stdout)

        def walk(n, path=()):
            yield path + (n,)
            for c in n["children"]:
                yield from walk(c, path + (n,))

        chains = list(walk(tree))
        mig = [c[-1] for c in chains if c[-1]["kind"] == "migration"]
        assert len(mig) == 1
        rounds = [c for c in mig[0]["children"] if c["kind"] == "round"]
        # QEMU's dirty-sync-count counts the syncs; rounds are the gaps between them
        assert len(rounds) == lab["query_migrate"]["ram"]["dirty-sync-count"] - 1
        source = next(p for p in lab["processes"] if p["role"] == "source")
        threads = {c["attrs"]["tid"] for c in mig[0]["children"] if c["kind"] == "thread"}
        assert {t["tid"] for t in source["threads"]} <= threads
        # a kernel preemptor sits under a thread under the migration under the root
        assert any(c[-1]["kind"] == "preemptor" and c[-2]["kind"] == "thread" for c in chains)
        if args[0] == "--request":
            assert tree["kind"] == "request" and tree["attrs"]["request_id"] == lab["request_id"]
            assert any(c[-1]["kind"] == "span" and c[-1]["layer"] == "app" for c in chains)


def test_bad_arguments_are_one_line_errors(tmp_path):
    for args in (["diagnose"], ["diagnose", str(tmp_path / "missing")], ["explain", "--store", str(tmp_path)]):
        done = subprocess.run([sys.executable, "-m", "stacklens.cli", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("stacklens: error:") and "Traceback" not in done.stderr


def test_perfetto_export_is_well_formed(bundles, stores, tmp_path):
    lab = _lab(bundles["interference"])
    out = tmp_path / "trace.json"
    done = subprocess.run([sys.executable, "-m", "stacklens.cli", "export", "--store", str(stores["interference"].root),
                           "--perfetto", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    evs = doc["traceEvents"]
    from stacklens.views.perfetto import check_trace_events
    assert check_trace_events(evs) == []  # ph/ts/pid/tid, X nesting per track, flows paired
    procs = {e["pid"]: e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    assert "lab-src CPUs" in procs.values()
    # the lab's QEMU threads (tids read from /proc by the lab) have thread-state tracks
    src_tids = {t["tid"] for p in lab["processes"] if p["host"] == "lab-src" for t in p["threads"]}
    state_tids = {e["tid"] for e in evs if e["ph"] == "X" and e.get("cat") == "thread_state"}
    assert src_tids & state_tids
    rounds = [e for e in evs if e["ph"] == "X" and e.get("cat") == "migration"
              and (e["name"].startswith("round ") or e["name"].startswith("precopy"))]
    assert len(rounds) == lab["query_migrate"]["ram"]["dirty-sync-count"] - 1


def test_otlp_spans_of_a_request(bundles, stores):
    from google.protobuf import json_format
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
    from stacklens.analyses.explain import explain_request
    from stacklens.views.otlp import traces_data
    lab = _lab(bundles["interference"])
    doc = traces_data([explain_request(stores["interference"], lab["request_id"])])
    json_format.Parse(json.dumps(doc), TracesData())  # the protocol's own schema
    spans = [sp for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for sp in ss["spans"]]
    assert len({s["traceId"] for s in spans}) == 1
    ids = {s["spanId"] for s in spans}
    roots = [s for s in spans if "parentSpanId" not in s]
    assert len(roots) == 1 and roots[0]["name"] == f"request {lab['request_id']}"
    assert all(s["parentSpanId"] in ids for s in spans if "parentSpanId" in s)
    # every Nova step the lab notified (".start" lines of the bundle) is a span with its times
    starts = [json.loads(l) for l in (bundles["interference"] / "control" / "notifications.jsonl").read_text().splitlines()
              if '.start"' in l]
    kind = lambda s: next(a["value"]["stringValue"] for a in s["attributes"] if a["key"] == "stacklens.kind")  # noqa: E731
    tasks = [s for s in spans if kind(s) == "span" and s["name"].startswith("instance.")]
    assert {s["name"] for s in tasks} == {m["event_type"].rsplit(".", 1)[0] for m in starts}
    assert all(int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"]) for s in spans)
