"""Exports checked by their formats' own consumers and rules, with counts from the raw data.

* OTLP/JSON parsed by opentelemetry-proto's `TracesData` (google.protobuf.json_format), and
  OTLP/HTTP received by a real HTTP server started here that decodes the protobuf body with
  opentelemetry-proto's `ExportTraceServiceRequest` (the collector's own decoder). The spans'
  services, times and RPC hops are compared with the RabbitMQ firehose dump read here with
  plain regular expressions.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.conftest import need_data

REQ = "req-ba9ff601-04cc-4889-810f-812f73e1f7dc"


def _cli(args: list[str]):
    from typer.testing import CliRunner
    from stacklens.cli import _register_commands, app
    if "export" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        _register_commands()
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def rabbit_store(tmp_path_factory):
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    dump = need_data("thesis", "rabbitmq-dump")
    store = Store(tmp_path_factory.mktemp("rabbit") / "store", create=True)
    ingest(store, [dump])
    return store, dump


def _dump_oracle(dump: Path) -> dict:
    """From the raw firehose XML: the request's RPC messages (those with a method) and its
    notifications (event_type, publisher, time)."""
    import datetime as dt
    rpcs, notes = 0, []
    for f in dump.glob("*.xml"):
        events = f.read_text().split("<event>")[1:]
        if f.name == "notifications.info.xml":
            for e in events:
                grab = lambda tag: re.search(rf"<{tag}>\s*([^<]+?)\s*</{tag}>", e).group(1)  # noqa: E731
                t = dt.datetime.strptime(grab("timestamp"), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
                notes.append((grab("event_type"), grab("publisher_id"),
                              int(t.timestamp()) * 10**9 + t.microsecond * 1000))
        elif not f.name.startswith("reply_"):
            rpcs += sum(1 for e in events if REQ in e and "<method>" in e)
    return {"rpcs": rpcs, "notifications": notes}


def _check_otlp_json(doc: dict, oracle: dict) -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
    parsed = json_format.Parse(json.dumps(doc), TracesData())  # raises on any schema violation
    assert len(parsed.resource_spans) == len(doc["resourceSpans"]) > 1
    spans, services = [], {}
    for rs in doc["resourceSpans"]:
        attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
        svc = attrs["service.name"]["stringValue"]
        assert svc != "unknown_service:python"
        for ss in rs["scopeSpans"]:
            assert ss["scope"]["name"] == "stacklens"
            for sp in ss["spans"]:
                services[sp["spanId"]] = svc
                spans.append(sp)
    # OTLP/JSON encoding rules: hex ids of 16/8 bytes, ns times as decimal strings,
    # attributes as key/value lists, enums as integers
    assert len({sp["traceId"] for sp in spans}) == 1
    for sp in spans:
        assert re.fullmatch(r"[0-9a-f]{32}", sp["traceId"]) and re.fullmatch(r"[0-9a-f]{16}", sp["spanId"])
        assert isinstance(sp["startTimeUnixNano"], str) and sp["startTimeUnixNano"].isdigit()
        assert int(sp["endTimeUnixNano"]) >= int(sp["startTimeUnixNano"]) > 10**18
        assert isinstance(sp["kind"], int) and all(set(a) == {"key", "value"} for a in sp["attributes"])
        for a in sp["attributes"]:
            if "intValue" in a["value"]:
                assert isinstance(a["value"]["intValue"], str)
        if "parentSpanId" in sp:
            assert sp["parentSpanId"] in services
    assert sum(1 for sp in spans if "parentSpanId" not in sp) == 1
    # each task of the dump's notifications is a span of the service that published it,
    # with the times of its .start and .end notifications
    notes = oracle["notifications"]
    by_name = {sp["name"]: sp for sp in spans}
    for et, pub, ts in notes:
        if et.endswith(".start"):
            task = et[: -len(".start")]
            end = next(t for e, p, t in notes if e == f"{task}.end" and p == pub)
            sp = by_name[task]
            assert (int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"])) == (ts, end)
            assert services[sp["spanId"]] == "nova-" + pub.split(".")[0]
            assert sp["status"]["code"] == 1  # STATUS_CODE_OK
    # one span per RPC message of the request, as a client (call) or producer (cast) span
    hops = [sp for sp in spans if sp["name"].startswith("RPC ")]
    assert len(hops) == oracle["rpcs"] > 0
    assert {sp["kind"] for sp in hops} == {3, 4}
    assert {"nova-api", "nova-conductor", "nova-scheduler", "nova-compute"} <= set(services.values())


def test_otlp_json_file_parses_as_traces_data(rabbit_store, tmp_path):
    store, dump = rabbit_store
    out = tmp_path / "req.otlp.json"
    res = _cli(["export", "--store", str(store.root), "--request", REQ, "--otlp", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    _check_otlp_json(doc, _dump_oracle(dump))
    n = sum(len(ss["spans"]) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"])
    assert res.output.startswith(f"wrote {out}: {n} spans (OTLP/JSON")


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: decodes POST /v1/traces with opentelemetry-proto."""
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                              ExportTraceServiceResponse)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
            self.send_error(404 if self.path != "/v1/traces" else 415)
            return
        self.received.append(ExportTraceServiceRequest.FromString(body))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_otlp_http_to_a_local_receiver(rabbit_store, tmp_path):
    store, dump = rabbit_store
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = tmp_path / "req.json"
        res = _cli(["export", "--store", str(store.root), "--request", REQ, "--otlp", str(out),
                    "--otlp-endpoint", url, "--json"])
        assert res.exit_code == 0, res.output
        sent = json.loads(res.output)["otlp_http"]
        assert sent["http_status"] == 200 and sent["rejected_spans"] == 0 and sent["url"] == url + "/v1/traces"
        # a port nobody listens on: a one-line error, not a traceback
        bad = _cli(["export", "--store", str(store.root), "--request", REQ, "--otlp-endpoint", "http://127.0.0.1:9"])
        from stacklens.errors import StacklensError
        assert bad.exit_code != 0 and isinstance(bad.exception, StacklensError)
        assert "127.0.0.1:9/v1/traces" in str(bad.exception)
    finally:
        server.shutdown()
        server.server_close()
    [req] = _Collector.received
    doc = json.loads(out.read_text())
    spans = [sp for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    assert len(spans) == sent["spans"] == sum(len(ss["spans"]) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"])
    # the protobuf carries the ids' bytes (16 and 8), the same as the file's hex
    file_ids = {sp["spanId"] for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for sp in ss["spans"]}
    assert all(len(sp.trace_id) == 16 and len(sp.span_id) == 8 for sp in spans)
    assert {sp.span_id.hex() for sp in spans} == file_ids
    services = {a.value.string_value for rs in req.resource_spans for a in rs.resource.attributes
                if a.key == "service.name"}
    assert {"nova-api", "nova-scheduler", "nova-compute"} <= services


# ---- Chrome / Perfetto trace-event JSON ------------------------------------------------------
# No Perfetto trace processor can run here (the PyPI `perfetto` package only downloads its
# trace_processor_shell from Google's servers; neither PyPI, npm nor Debian ship one), so the
# export is checked against the trace-event format's rules and its events counted against
# the store (DuckDB) and the raw data (babeltrace2, the firehose XML).

def _perfetto(store_root: Path, out: Path, *extra: str) -> dict:
    res = _cli(["export", "--store", str(store_root), "--perfetto", str(out), *extra])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert res.output.startswith(f"wrote {out}: {len(doc['traceEvents']):,} trace events")
    return doc


def _rules(doc: dict) -> None:
    from stacklens.views.perfetto import check_trace_events
    evs = doc["traceEvents"]
    assert check_trace_events(evs) == []
    procs = {e["pid"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]) for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    for e in evs:
        if e["ph"] in ("X", "s", "f"):
            assert e["pid"] in procs and (e["pid"], e["tid"]) in threads, e  # every track is named
        if e["ph"] == "C":
            assert e["pid"] in procs and all(isinstance(v, float) for v in e["args"].values())


@pytest.fixture(scope="module")
def many_threads_store(tmp_path_factory):
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    trace = need_data("tracecompass", "many-threads")
    store = Store(tmp_path_factory.mktemp("mt") / "store", create=True)
    ingest(store, [trace])
    return store


def test_perfetto_kernel_only_store(many_threads_store, tmp_path):
    """A kernel-only store: one track per CPU with a slice per thread that ran there (as
    many as DuckDB counts switches to a non-idle thread per CPU, plus the thread already
    running at the trace start), processes and threads named, thread states, CPU usage."""
    doc = _perfetto(many_threads_store.root, tmp_path / "mt.json")
    _rules(doc)
    evs = doc["traceEvents"]
    con = many_threads_store.connect()
    start = con.execute("SELECT min(ts) FROM events").fetchall()[0][0]
    oracle = dict(con.execute("""
        WITH sw AS (SELECT cpu, ts, CAST(fields->>'next_tid' AS BIGINT) AS next_tid,
                           CAST(fields->>'prev_tid' AS BIGINT) AS prev_tid,
                           row_number() OVER (PARTITION BY cpu ORDER BY ts, pos) AS k
                    FROM events WHERE name = 'sched_switch')
        SELECT cpu, count(*) FILTER (WHERE next_tid <> 0)
                    + count(*) FILTER (WHERE k = 1 AND prev_tid <> 0 AND ts > ?)
        FROM sw GROUP BY cpu""", [start]).fetchall())
    assert len(oracle) == 8  # the trace's 8 CPUs
    cpu_pid = next(e["pid"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"
                   and e["args"]["name"].endswith(" CPUs"))
    cpu_tid = {int(e["args"]["name"].split()[1]): e["tid"] for e in evs
               if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == cpu_pid}
    per_cpu = {c: sum(1 for e in evs if e["ph"] == "X" and e["pid"] == cpu_pid and e["tid"] == t)
               for c, t in cpu_tid.items()}
    assert per_cpu == oracle
    # every thread the trace switched to has a named track of thread states
    switched = {r[0] for r in con.execute(
        "SELECT DISTINCT CAST(fields->>'next_tid' AS BIGINT) FROM events WHERE name = 'sched_switch'").fetchall()} - {0}
    state_tracks = {e["tid"] for e in evs if e["ph"] == "X" and e["cat"] == "thread_state"}
    assert switched <= state_tracks
    assert {e["name"] for e in evs if e.get("cat") == "thread_state"} >= {"running", "runnable", "blocked"}
    usage = [e["args"]["busy"] for e in evs if e["ph"] == "C" and e["cat"] == "cpu_usage"]
    assert len(usage) > 100 and all(0 <= u <= 100.001 for u in usage) and max(usage) > 0
    # equal bins: their mean is the whole trace's busy share, summed here from the switches
    end = con.execute("SELECT max(ts) FROM events").fetchall()[0][0]
    busy = con.execute("""
        WITH sw AS (SELECT cpu, ts, CAST(fields->>'next_tid' AS BIGINT) AS next_tid,
                           CAST(fields->>'prev_tid' AS BIGINT) AS prev_tid,
                           lead(ts) OVER (PARTITION BY cpu ORDER BY ts, pos) AS nxt,
                           row_number() OVER (PARTITION BY cpu ORDER BY ts, pos) AS k
                    FROM events WHERE name = 'sched_switch')
        SELECT sum(CASE WHEN next_tid <> 0 THEN coalesce(nxt, ?) - ts ELSE 0 END)
             + sum(CASE WHEN k = 1 AND prev_tid <> 0 THEN ts - ? ELSE 0 END) FROM sw""", [end, start]).fetchall()[0][0]
    assert sum(usage) / len(usage) == pytest.approx(100 * busy / ((end - start) * 8), abs=0.01)


@pytest.fixture(scope="module")
def thesis_store(tmp_path_factory):
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    paths = [need_data("thesis", d) for d in ("nova", "cinder", "rabbitmq-dump")]
    store = Store(tmp_path_factory.mktemp("thesis") / "store", create=True)
    ingest(store, paths)
    return store, paths


def test_perfetto_tasks_requests_and_rpc_flows(thesis_store, tmp_path):
    """Tasks: one slice per `.start` record (babeltrace2 over the thesis traces, regular
    expressions over the firehose notifications); one flow arrow per RPC message of a
    request in the firehose dump, each from its caller's track to the callee's."""
    import subprocess
    from tests.conftest import need_program
    store, (nova, cinder, dump) = thesis_store
    doc = _perfetto(store.root, tmp_path / "thesis.json")
    _rules(doc)
    evs = doc["traceEvents"]
    bt = need_program("babeltrace2")
    starts = 0
    for trace in (nova, cinder):
        text = subprocess.run([bt, str(trace)], capture_output=True, text=True, timeout=60, check=True).stdout
        starts += len(re.findall(r"lttng_trace:\{\\?'event_type\\?':\\?'?[\w.]+\.start\b", text))
    notes = _dump_oracle(dump)["notifications"]
    starts += sum(1 for et, _, _ in notes if et.endswith(".start"))
    assert starts == 12
    assert sum(1 for e in evs if e["ph"] == "X" and e["cat"] == "task") == starts
    rpcs = 0
    for f in dump.glob("*.xml"):
        if not f.name.startswith(("reply_", "notifications")):
            rpcs += sum(1 for e in f.read_text().split("<event>")[1:]
                        if "<method>" in e and re.search(r"<_context_request_id>\s*req-", e))
    flows_s = [e for e in evs if e["ph"] == "s"]
    assert len(flows_s) == rpcs == 79
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    ends = {e["id"]: e for e in evs if e["ph"] == "f"}
    assert all(names[(s["pid"], s["tid"])] != names[(ends[s["id"]]["pid"], ends[s["id"]]["tid"])] for s in flows_s)
    procs = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    assert f"request {REQ}" in procs and {"VM vm-26009", "VM vm-13960"} <= procs
    # the request's spans keep the notifications' times, relative to origin_ns; this store
    # spans 2015 and 2016 (thesis traces and the dump): µs resolution, said in otherData
    t0 = next(t for et, _, t in notes if et == "compute.instance.create.start")
    t1 = next(t for et, _, t in notes if et == "compute.instance.create.end")

    def check_create(d: dict, resolution: int) -> None:
        assert d["otherData"]["resolution_ns"] == resolution
        origin = int(d["otherData"]["origin_ns"])
        c = next(e for e in d["traceEvents"] if e["ph"] == "X" and e.get("cat") == "request"
                 and e["name"] == "compute.instance.create")
        assert (round(c["ts"] * 1000) + origin) // resolution == t0 // resolution
        assert abs(round(c["dur"] * 1000) - (t1 - t0)) < resolution
    check_create(doc, 1000)
    # one request only: its RPC messages, its span times to the ns
    one = _perfetto(store.root, tmp_path / "one.json", "--request", REQ)
    _rules(one)
    assert sum(1 for e in one["traceEvents"] if e["ph"] == "s") == _dump_oracle(dump)["rpcs"]
    check_create(one, 1)
