"""The diagnosis rules beyond migration, each on real data or real programs, with the expected
finding derived here independently of our models:

* scheduling: nova-scheduler logs from the real oslo.log (tests/programs/nova_scheduler_log.py),
  the filter arithmetic redone by tests/test_app_scheduling.expected_decisions, durations from
  the notification file's own timestamps;
* errors with their request flow: two services (nova-api, nova-compute) logging through the
  real oslo.log with one global_request_id per request (tests/programs/oslo_request_flow.py);
  loghub's 2,000 real Nova lines (no ERROR level in loghub's own parse) give none;
* VM stuck in a state: the thesis RabbitMQ firehose dump, whole (the VM went active: nothing)
  and cut after its last `building` update (what a capture of a hung build shows), the
  timestamps read from the XML text here;
* volume attached twice: Nova's real instance.volume_attach/detach samples re-timed as in
  tests/test_app_cinder.py;
* poor clock sync: Trace Compass's synctraces, whose raw clocks put receptions before sends
  (counted here with our own join); after `stacklens sync` that finding is gone, and the one
  left is the error bound at the trace's ends (its 46 packets cover 0.12 s of 23 s), whose
  figure is the one tests/test_sync.py recomputes from the packets and Trace Compass's transform.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import PACKET_DELAYS, ROOT, need_data
from stacklens.store import Store
from stacklens.store.ingest import ingest

pytestmark = pytest.mark.timeout(300)


def _diagnose(store: Store, **thresholds):
    from stacklens.diagnose.rules import diagnose_store
    return diagnose_store(store, **thresholds)


def _by_rule(findings, rule: str) -> list:
    return [f for f in findings if f.rule == rule]


def _check_shape(f) -> None:
    """Every finding carries evidence and a what-to-do."""
    assert f.statement and f.action and f.evidence
    assert any(e.value is not None or e.start is not None for e in f.evidence)


# ---- scheduling -------------------------------------------------------------------------------
# the same real scheduler log as the scheduling model's tests (one fixture, one program run)
from tests.test_app_scheduling import scheduled  # noqa: E402,F401


def test_no_valid_host_names_the_filter_and_hosts(scheduled):
    from tests.test_app_scheduling import expected_decisions
    st, _ = scheduled
    failed = {e["request_id"]: e for e in expected_decisions() if e["selected"] is None}
    assert failed
    found = _by_rule(_diagnose(st), "scheduling_no_valid_host")
    assert {f.subject["request_id"] for f in found} == set(failed)
    for f in found:
        e = failed[f.subject["request_id"]]
        _check_shape(f)
        assert f.severity == "critical" and f"{e['eliminated_by']} removed the last host" in f.statement
        assert f.subject["instance"] == e["instance"]
        # the filter chain as evidence, the last filter naming the hosts it removed
        chain = [ev for ev in f.evidence if ev.kind == "number"]
        assert [ev.value for ev in chain] == [after for _, _, after, _ in e["chain"]]
        last_filter, _, _, removed = e["chain"][-1]
        assert chain[-1].label.startswith(last_filter) and all(h in chain[-1].label for h in removed)


def test_slow_scheduling_from_notification_times(scheduled):
    st, notes = scheduled
    times: dict[str, dict[str, int]] = {}
    for line in notes.read_text().splitlines():
        m = json.loads(line)
        t = dt.datetime.strptime(m["timestamp"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
        ns = (int(t.timestamp()) * 10**6 + t.microsecond) * 1000
        times.setdefault(m["_context_request_id"] if "_context_request_id" in m else
                         m["payload"]["nova_object.data"]["instance_uuid"], {})[m["event_type"].rsplit(".", 1)[1]] = ns
    durations = {k: v["end"] - v["start"] for k, v in times.items() if "end" in v}
    assert len(durations) >= 3
    threshold = sorted(durations.values())[len(durations) // 2]
    slow = {k for k, d in durations.items() if d >= threshold}
    assert 0 < len(slow) < len(durations)
    found = _by_rule(_diagnose(st, slow_scheduling_ns=threshold), "scheduling_slow")
    assert {f.subject["instance"] for f in found} | {f.subject["request_id"] for f in found} >= slow
    assert len(found) == len(slow)
    for f in found:
        _check_shape(f)
        key = f.subject["instance"] if f.subject["instance"] in durations else f.subject["request_id"]
        (iv,) = f.evidence
        assert iv.end - iv.start == durations[key]
    # Nova's default-sized threshold: 2 ms requests are not slow
    assert not _by_rule(_diagnose(st), "scheduling_slow")
    # the terminal/HTML evidence line: the duration once, in the unit that suits it, as the
    # notifications' own difference formats (no "2242000 ns" next to "+2.242 ms", no 0.000)
    from stacklens.views.diagnose import _evidence_text
    for f in found:
        key = f.subject["instance"] if f.subject["instance"] in durations else f.subject["request_id"]
        text = _evidence_text(f.evidence[0])
        d = durations[key]
        want = f"{d / 1e9:.3f} s" if d >= 1e9 else f"{d / 1e6:.3f} ms" if d >= 1e6 else f"{d / 1e3:.3f} µs"
        assert text.count(want) == 1 and text.endswith(f" +{want}]"), text
        assert not re.search(r"\d{4,} ns|0\.000 ", text), text


# ---- errors with their request flow -----------------------------------------------------------
FLOW_REQUESTS = [
    {"global_request_id": "req-aaaaaaaa-0000-4000-8000-000000000001", "instance": "33333333-0000-4000-8000-000000000001",
     "fail_in": None, "error": ""},
    {"global_request_id": "req-aaaaaaaa-0000-4000-8000-000000000002", "instance": "33333333-0000-4000-8000-000000000002",
     "fail_in": "nova-compute", "error": "Volume 9f1c could not be found <script>x</script>"},
    {"global_request_id": "req-aaaaaaaa-0000-4000-8000-000000000003", "instance": "33333333-0000-4000-8000-000000000003",
     "fail_in": None, "error": ""},
    {"global_request_id": "req-aaaaaaaa-0000-4000-8000-000000000004", "instance": "33333333-0000-4000-8000-000000000004",
     "fail_in": "nova-api", "error": "Quota exceeded for instances"},
]


def _line_ns(line: str) -> int:
    t = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
    return (int(t.timestamp()) * 10**6 + t.microsecond) * 1000


def test_request_errors_follow_the_global_request_across_services(tmp_path):
    pytest.importorskip("oslo_log")
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"requests": FLOW_REQUESTS}))
    logs = {}
    for service, host in (("nova-api", "api"), ("nova-compute", "cmp1")):
        log = tmp_path / f"{service}.log"
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "programs" / "oslo_request_flow.py"),
                               str(log), str(scenario), service], check=True, timeout=60,
                              env=dict(os.environ, TZ="UTC"), capture_output=True, text=True)
        logs[service] = (log, host, json.loads(done.stdout))
    st = Store(tmp_path / "store", create=True)
    for service, (log, host, _) in logs.items():
        assert ingest(st, [log], host=host)[0].status == "ingested"
    found = {f.subject["request_id"]: f for f in _by_rule(_diagnose(st), "request_error")}
    failing = {r["global_request_id"]: r for r in FLOW_REQUESTS if r["fail_in"]}
    assert set(found) == set(failing)
    for gid, r in failing.items():
        f = found[gid]
        _check_shape(f)
        log, host, local_ids = logs[r["fail_in"]]
        # the ERROR line of this request in the failing service's own log text
        err_line = next(line for line in log.read_text().splitlines()
                        if " ERROR " in line and local_ids[gid] in line)
        assert f"in {r['fail_in']}@{host}" in f.statement and r["error"] in f.statement
        assert "Traceback" not in f.statement  # one sentence, not the traceback
        err = f.evidence[0]
        assert err.kind == "event" and err.host == host and err.start == _line_ns(err_line)
        # the flow: every service whose log names the request (by its local id), in time order
        visited = []
        for service, (slog, shost, ids) in logs.items():
            lines = [line for line in slog.read_text().splitlines() if ids[gid] in line]
            if lines:
                visited.append((_line_ns(lines[0]), f"{service}@{shost}", _line_ns(lines[-1])))
        assert f"its flow: {' → '.join(s for _, s, _ in sorted(visited))}" in f.statement
        spans = {ev.label: (ev.start, ev.end) for ev in f.evidence if ev.label.startswith("request on ")}
        for first, where, last in visited:
            assert spans[f"request on {where.split('@')[0]}"] == (first, last)
        assert f.action and f"explain --request {gid}" in f.action


@pytest.fixture(scope="module")
def loghub_store(tmp_path_factory):
    st = Store(tmp_path_factory.mktemp("loghub") / "s", create=True)
    ingest(st, [need_data("openstack", "loghub", "OpenStack_2k.log")])
    return st


def test_loghub_has_no_request_errors(loghub_store):
    with open(need_data("openstack", "loghub", "OpenStack_2k.log_structured.csv"), newline="") as fh:
        levels = {row["Level"] for row in csv.DictReader(fh)}
    assert "WARNING" in levels and not levels & {"ERROR", "CRITICAL"}  # loghub's own parse
    assert not _by_rule(_diagnose(loghub_store), "request_error")


# ---- VM stuck in a state ----------------------------------------------------------------------
def _dump_events(text: str) -> list[str]:
    return re.findall(r"<event>.*?</event>", text, flags=re.S)


def _element(event: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}>\s*(.*?)\s*</{tag}>", event, flags=re.S)
    return m.group(1) if m else None


def _dump_ns(stamp: str) -> int:
    t = dt.datetime.fromisoformat(stamp.strip()).replace(tzinfo=dt.timezone.utc)
    return (int(t.timestamp()) * 10**6 + t.microsecond) * 1000


@pytest.fixture(scope="module")
def dump_cut(tmp_path_factory):
    """The thesis dump with its notifications cut after the VM's last `building` update: the
    RPC traffic goes on, the VM's own records stop (what a hung build leaves behind)."""
    base = need_data("thesis", "rabbitmq-dump")
    out = tmp_path_factory.mktemp("dump") / "rabbitmq-dump"
    out.mkdir()
    for p in base.glob("*.xml"):
        if p.name != "notifications.info.xml":
            (out / p.name).symlink_to(p)
    events = _dump_events((base / "notifications.info.xml").read_text())
    updates = [i for i, e in enumerate(events) if _element(e, "event_type") == "compute.instance.update"]
    last_building = max(i for i in updates if _element(events[i], "state") == "building")
    kept = events[:last_building + 1]
    assert len(kept) < len(events)
    (out / "notifications.info.xml").write_text("\n".join(kept) + "\n")
    last = events[last_building]
    # the latest time anything in the cut dump carries (notification or RPC context)
    stamps = [_dump_ns(s) for p in out.glob("*.xml")
              for s in re.findall(r"<(?:_context_)?timestamp>\s*(.*?)\s*</", p.read_text(), flags=re.S)]
    expected = {"instance": _element(last, "instance_id"), "state": _element(last, "state"),
                "task": _element(last, "new_task_state"), "since": _dump_ns(_element(last, "timestamp")),
                "end": max(stamps)}
    st = Store(out.parent / "store", create=True)
    ingest(st, [out])
    full = Store(out.parent / "full", create=True)
    ingest(full, [base])
    return st, full, expected


def test_vm_stuck_in_building_after_the_cut(dump_cut):
    st, full, exp = dump_cut
    stuck_for = exp["end"] - exp["since"]
    assert stuck_for > 1_000_000_000
    found = _by_rule(_diagnose(st, stuck_after_ns=stuck_for - 1), "vm_stuck")
    assert len(found) == 1
    (f,) = found
    _check_shape(f)
    assert f.subject["instance"] == exp["instance"]
    assert f"{exp['state']}/{exp['task']}" in f.statement
    (iv,) = f.evidence
    assert (iv.start, iv.end) == (exp["since"], exp["end"])
    # the same threshold just above the gap, the default (5 min), and the whole dump (the VM
    # went active): nothing
    assert not _by_rule(_diagnose(st, stuck_after_ns=stuck_for + 1), "vm_stuck")
    assert not _by_rule(_diagnose(st), "vm_stuck")
    assert not _by_rule(_diagnose(full, stuck_after_ns=1), "vm_stuck")
    # the operator's knob on the command line
    done = subprocess.run([sys.executable, "-m", "stacklens.cli", "diagnose", "--store", str(st.root),
                           "--stuck-after", f"{(stuck_for - 1_000_000) / 1e9:.3f}", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [f["subject"]["instance"] for f in json.loads(done.stdout)["findings"] if f["rule"] == "vm_stuck"] \
        == [exp["instance"]]


# ---- volume attached twice --------------------------------------------------------------------
def test_volume_attached_twice(tmp_path):
    from tests.test_app_cinder import VM_A, VM_B, VOL_SEQ, VOL_SHARED, _event
    lines = [_event("attach", 1, VOL_SHARED, VM_A, "cmp1"), _event("attach", 5, VOL_SHARED, VM_B, "cmp2"),
             _event("detach", 9, VOL_SHARED, VM_A, "cmp1"),
             _event("attach", 2, VOL_SEQ, VM_A, "cmp1"), _event("detach", 3, VOL_SEQ, VM_A, "cmp1"),
             _event("attach", 4, VOL_SEQ, VM_B, "cmp2")]
    p = tmp_path / "notifications.jsonl"
    p.write_text("\n".join(lines) + "\n")
    st = Store(tmp_path / "store", create=True)
    ingest(st, [p])
    # the overlap put in above: B attached at 5 s while A held the volume until 9 s
    s = int(dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    (f,) = _by_rule(_diagnose(st), "volume_multi_attach")
    _check_shape(f)
    assert f.subject == {"volume": VOL_SHARED} and f.severity == "critical"
    assert {VM_A, VM_B} <= set(re.findall(r"[0-9a-f-]{36}", f.statement)) and "cmp1" in f.statement
    assert {(e.ref["instance"], e.host, e.start, e.end) for e in f.evidence} == \
        {(VM_A, "cmp1", s + 5 * 10**9, s + 9 * 10**9), (VM_B, "cmp2", s + 5 * 10**9, s + 9 * 10**9)}


# ---- poor clock sync --------------------------------------------------------------------------
def test_poor_clock_sync_until_synchronized(tmp_path):
    base = need_data("tracecompass", "synctraces")
    st = Store(tmp_path / "s", create=True)
    ingest(st, [base / "scp_src", base / "scp_dest"])
    delays = st.connect().execute(PACKET_DELAYS).fetchall()
    early = [d for _, _, d in delays if d <= 0]
    assert early  # the raw clocks put receptions before sends
    (f,) = _by_rule(_diagnose(st), "clock_sync")
    _check_shape(f)
    assert set(f.subject["hosts"]) == {"VM1", "VM3"}
    numbers = {e.label: e.value for e in f.evidence if e.kind == "number"}
    assert numbers["packets received before they were sent"] == len(early)
    assert numbers["packets matched between the hosts"] == len(delays)
    assert numbers["worst delay (receive - send)"] == min(early)
    assert "stacklens sync" in f.action
    done = subprocess.run([sys.executable, "-m", "stacklens.cli", "sync", "--store", str(st.root), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(d > 0 for _, _, d in st.connect().execute(PACKET_DELAYS).fetchall())
    # no more causality violations; what is left is the bound away from the packets
    from stacklens.diagnose.rules import POOR_ACCURACY_NS
    vm1 = next(h for h in json.loads(done.stdout)["hosts"] if h["host"] == "VM1")
    assert vm1["accuracy_window_ns"] < POOR_ACCURACY_NS <= vm1["accuracy_ns"]
    (f,) = _by_rule(_diagnose(st), "clock_sync")
    _check_shape(f)
    assert f.subject == {"host": "VM1"} and f.severity == "warning"
    assert "received before" not in f.statement and "at the ends of its trace" in f.statement
    numbers = {e.label: e.value for e in f.evidence if e.kind == "number"}
    assert numbers["error bound at the trace's ends"] == vm1["accuracy_ns"]
    assert numbers["error bound over the matched packets"] == vm1["accuracy_window_ns"]
    assert numbers["matched packets"] == 46
    # the evidence intervals are on the synchronized clock: the trace's own first and last event
    first, last = st.connect().execute("SELECT min(ts), max(ts) FROM events WHERE host = 'VM1'").fetchone()
    (trace,) = [e for e in f.evidence if e.label == "trace"]
    assert (trace.start, trace.end) == (first, last)


# ---- idle workers -----------------------------------------------------------------------------
def test_idle_workers_of_a_sticky_pool(tmp_path):
    """A real LTTng session (own lttng-sessiond) records a thesis-instrumented worker pool whose
    dispatcher sends every request to one worker; the idle ones are those the program itself
    measured as (almost) never busy. The thesis nova trace, whose two compute workers both
    worked, gives no finding."""
    from stacklens.diagnose.rules import IDLE_BUSY_SHARE, PEER_BUSY_SHARE
    from tests.conftest import need_python_lttngust, own_lttng_sessiond
    env = dict(os.environ, LTTNG_HOME=str(tmp_path / "home"), LTTNG_UST_PYTHON_REGISTER_TIMEOUT="5000")
    (tmp_path / "home").mkdir()
    need_python_lttngust(env)
    trace = tmp_path / "trace"
    with own_lttng_sessiond(env):
        for cmd in (["create", "pool", "--output", str(trace)], ["enable-event", "--python", "nova.conductor.manager"],
                    ["start"]):
            subprocess.run(["lttng", *cmd], env=env, check=True, capture_output=True, timeout=30)
        done = subprocess.run(["/usr/bin/python3", str(ROOT / "tests" / "programs" / "thesis_worker_pool.py"),
                               "4", "6", "0.15"], env=env, check=True, capture_output=True, text=True, timeout=60)
        for cmd in (["stop"], ["destroy"]):
            subprocess.run(["lttng", *cmd], env=env, check=True, capture_output=True, timeout=60)
    measured = json.loads(done.stdout)
    span = measured["last_ns"] - measured["first_ns"]
    shares = {name: w["busy_ns"] / span for name, w in measured["workers"].items()}
    idle = {name for name, share in shares.items() if share < IDLE_BUSY_SHARE}
    assert max(shares.values()) >= PEER_BUSY_SHARE and len(idle) == 3
    st = Store(tmp_path / "store", create=True)
    assert all(r.status == "ingested" for r in ingest(st, [trace], host="controller"))
    (f,) = _by_rule(_diagnose(st), "idle_workers")
    _check_shape(f)
    # the store's worker ids are logger/thread ident: map each to the program's thread name
    names = dict(st.connect().execute(
        "SELECT DISTINCT 'nova.conductor.manager/' || CAST(fields->>'$.thread' AS VARCHAR), fields->>'$.threadName'"
        " FROM events WHERE name = 'lttng_python:event'").fetchall())
    assert {names[w] for w in f.subject["idle"]} == idle
    assert "3 of 4" in f.statement and f.subject["host"] == "controller"
    busy_ms = {names[e.ref["worker"]]: e.value for e in f.evidence}
    busiest = max(shares, key=shares.get)
    # the busy time from the trace is the program's own, less the time to log the two records
    assert busy_ms[busiest] == pytest.approx(measured["workers"][busiest]["busy_ns"] / 1e6, rel=0.05)

    thesis = Store(tmp_path / "thesis", create=True)
    ingest(thesis, [need_data("thesis", "nova")])
    assert not _by_rule(_diagnose(thesis), "idle_workers")
