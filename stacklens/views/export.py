"""`stacklens export`: Chrome / Perfetto trace-event JSON (stacklens.views.perfetto: CPUs,
threads and their states, tasks, requests with RPC flow arrows, migrations, counters) and
OpenTelemetry traces in OTLP's own encoding (stacklens.views.otlp: OTLP/JSON to a file,
OTLP/HTTP protobuf to a collector).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from stacklens.errors import StacklensError


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
        result: dict[str, Any] = {}
        if perfetto is not None:
            from stacklens.views.perfetto import event_kinds, perfetto_trace
            doc = perfetto_trace(s, request=request, vm=vm)
            perfetto.parent.mkdir(parents=True, exist_ok=True)
            perfetto.write_text(json.dumps(doc, default=str, separators=(",", ":")))
            result["perfetto"] = {"path": str(perfetto), "events": len(doc["traceEvents"]),
                                  "by_kind": event_kinds(doc)}
        if otlp is not None or otlp_endpoint:
            roots = [explain_request(s, request)] if request else [explain_vm(s, vm)]
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
