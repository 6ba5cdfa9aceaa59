"""Exports: Chrome / Perfetto trace-event JSON and OpenTelemetry spans.

Perfetto / chrome://tracing (the JSON "Trace Event Format"): one process per host (`pid`,
named by a `process_name` metadata event), one thread (track) per layer and lane within it.
Spans that may overlap on one track (service tasks of one worker, migration rounds and Nova
steps, thread intervals) are async events (`ph` b/e with a shared `id` and `cat`), which the
viewers stack instead of mis-nesting; point events are instants (`ph` i). Times are µs.

OTLP: a request's (or a VM's) tree becomes one trace in OTLP's own encoding (OTLP/JSON to a
file, OTLP/HTTP protobuf to a collector): see stacklens.views.otlp.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

import typer

from stacklens.analyses.explain import Node
from stacklens.errors import StacklensError

LAYER_TIDS = {"app": 1, "virt": 2, "kernel": 3, "net": 4, "storage": 5}


def _plain(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = list(v)
        else:
            out[k] = json.dumps(v, default=str)
    return out


def trace_events(roots: Iterable[Node]) -> dict[str, Any]:
    """Trace-event JSON (dict) for the given trees."""
    events: list[dict[str, Any]] = []
    pids: dict[str, int] = {}
    next_id = 1

    def pid_of(host: str | None) -> int:
        h = host or "(no host)"
        if h not in pids:
            pids[h] = len(pids) + 1
            events.append({"ph": "M", "name": "process_name", "pid": pids[h], "tid": 0, "args": {"name": h}})
            for layer, tid in LAYER_TIDS.items():
                events.append({"ph": "M", "name": "thread_name", "pid": pids[h], "tid": tid, "args": {"name": layer}})
        return pids[h]

    def emit(n: Node, parent_host: str | None) -> None:
        nonlocal next_id
        host = n.host or parent_host
        if n.start is not None and n.kind != "group":
            pid, tid = pid_of(host), LAYER_TIDS.get(n.layer, 6)
            args = _plain(n.attrs) | {"kind": n.kind}
            if n.end is not None and n.end > n.start:
                ident = f"0x{next_id:x}"
                next_id += 1
                base = {"cat": n.layer, "name": n.label, "id": ident, "pid": pid, "tid": tid}
                events.append(base | {"ph": "b", "ts": n.start / 1000, "args": args})
                events.append(base | {"ph": "e", "ts": n.end / 1000})
            else:
                events.append({"ph": "i", "s": "t", "cat": n.layer, "name": n.label, "pid": pid, "tid": tid,
                               "ts": n.start / 1000, "args": args})
        for c in n.children:
            emit(c, host)

    for r in roots:
        emit(r, None)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"producer": "stacklens", "hosts": sorted(pids)}}


def store_trees(store) -> list[Node]:
    """Whole-store export: per VM its tree (states, tasks, migrations, threads), plus the
    service tasks that belong to no VM."""
    from stacklens.analyses.explain import explain_vm
    from stacklens.models.correlation import vm_identities
    from stacklens.models.service_tasks import service_tasks
    con = store.connect()
    roots, seen = [], set()
    for r in vm_identities(con).to_pylist():
        key = r["instance"] or r["vm"]
        if key in seen:
            continue
        seen.add(key)
        try:
            roots.append(explain_vm(store, key))
        except StacklensError:
            continue
    loose = Node("service tasks", "app", "group")
    for t in service_tasks(con).to_pylist():
        if not t["instance"] and not t["vmname"]:
            loose.add(Node(t["task"], "app", "span", t["host"], t["start_ts"], t["end_ts"],
                           {"worker": t["worker"], "request_id": t["request_id"], "outcome": t["outcome"]}))
    if loose.children:
        roots.append(loose)
    return roots


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE, JsonOpt

    @app.command()
    def export(store: str = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory."),
               perfetto: Optional[Path] = typer.Option(None, help="Write Chrome/Perfetto trace-event JSON here."),
               otlp: Optional[Path] = typer.Option(None, help="Write OTLP/JSON (TracesData) of the request or VM here."),
               otlp_endpoint: Optional[str] = typer.Option(None, "--otlp-endpoint",
                                                           help="Send the spans as OTLP/HTTP protobuf to this collector "
                                                                "(http://host:4318; /v1/traces is appended)."),
               request: Optional[str] = typer.Option(None, "--request", help="Only this request."),
               vm: Optional[str] = typer.Option(None, "--vm", help="Only this VM."),
               json_out: bool = JsonOpt) -> None:
        """Export to Perfetto/chrome://tracing JSON, or a request as OpenTelemetry spans."""
        from stacklens.analyses.explain import explain_request, explain_vm
        from stacklens.store import Store
        from stacklens.views.terminal import console, emit_json
        if perfetto is None and otlp is None and otlp_endpoint is None:
            raise StacklensError("export: give --perfetto FILE, --otlp FILE and/or --otlp-endpoint URL")
        if (otlp is not None or otlp_endpoint) and not (request or vm):
            raise StacklensError("export: OTLP exports one trace: give --request ID or --vm NAME")
        s = Store(store)
        if request:
            roots = [explain_request(s, request)]
        elif vm:
            roots = [explain_vm(s, vm)]
        else:
            roots = store_trees(s)
        result: dict[str, Any] = {}
        if perfetto is not None:
            doc = trace_events(roots)
            perfetto.parent.mkdir(parents=True, exist_ok=True)
            perfetto.write_text(json.dumps(doc, default=str))
            result["perfetto"] = {"path": str(perfetto), "events": len(doc["traceEvents"])}
        if otlp is not None or otlp_endpoint:
            from stacklens.views.otlp import send_otlp_http, span_count, traces_data
            doc = traces_data(roots)
            if otlp is not None:
                otlp.parent.mkdir(parents=True, exist_ok=True)
                otlp.write_text(json.dumps(doc))
                result["otlp"] = {"path": str(otlp), "spans": span_count(doc),
                                  "services": sorted({_resource_service(r) for r in doc["resourceSpans"]})}
            if otlp_endpoint:
                result["otlp_http"] = send_otlp_http(doc, otlp_endpoint)
        if json_out:
            emit_json(result)
        else:
            _say_written(result, console)


def _resource_service(rs: dict[str, Any]) -> str:
    return next(a["value"]["stringValue"] for a in rs["resource"]["attributes"] if a["key"] == "service.name")


def _say_written(result: dict[str, Any], console) -> None:
    """One line per output: where it went and what it holds."""
    if "perfetto" in result:
        p = result["perfetto"]
        counts = ", ".join(f"{n:,} {k}" for k, n in p.get("by_kind", {}).items() if n)
        console.print(f"wrote {p['path']}: {p['events']:,} trace events (Chrome/Perfetto JSON)"
                      + (f" — {counts}" if counts else ""), highlight=False)
    if "otlp" in result:
        o = result["otlp"]
        console.print(f"wrote {o['path']}: {o['spans']:,} spans (OTLP/JSON TracesData) from "
                      f"{', '.join(o['services'])}", highlight=False)
    if "otlp_http" in result:
        h = result["otlp_http"]
        console.print(f"sent {h['spans']:,} spans to {h['url']}: HTTP {h['http_status']}, "
                      f"{h['rejected_spans']} rejected", highlight=False)
