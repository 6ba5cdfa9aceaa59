"""`stacklens diagnose PATH|--store DIR`: ranked findings (terminal, --json, --html report)."""

from __future__ import annotations

import html
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from stacklens.errors import StacklensError
from stacklens.views.terminal import console, emit_json, fmt_duration, fmt_ts

SEVERITY_COLOUR = {"critical": "red", "warning": "yellow", "info": "cyan"}


def diagnose_path(path: Path | None, store_dir: str | None, cluster: str | None = None, **thresholds: int):
    """Findings of a store, or of a bundle ingested first into a temporary store. `cluster`:
    a Dask scheduler's address for the per-host part (a store only: the workers must see it)."""
    from stacklens.diagnose.rules import diagnose_store
    from stacklens.store import Store
    if path is None:
        return diagnose_store(Store(store_dir), cluster, **thresholds)
    if not path.exists():
        raise StacklensError(f"{path}: no such file or directory")
    if (path / "stacklens-store.json").exists():
        return diagnose_store(Store(path), cluster, **thresholds)
    if cluster:
        raise StacklensError(f"diagnose --cluster: {path} is a bundle, and its temporary store would be on this "
                             "machine only; ingest it into a store on the shared filesystem "
                             "(stacklens ingest --cluster) and give that store")
    from stacklens.store.ingest import ingest
    tmp = Path(tempfile.mkdtemp(prefix="stacklens-diagnose-"))
    try:
        store = Store(tmp / "store", create=True)
        ingest(store, [path])
        return diagnose_store(store, **thresholds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


DURATION_UNITS = {"ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def evidence_value(e) -> str:
    """An evidence value in words: durations in the unit that suits them (as the interval
    beside them is), counts with thousands separators, other values with their unit."""
    if e.value is None:
        return ""
    if e.unit in DURATION_UNITS and isinstance(e.value, (int, float)):
        return fmt_duration(e.value * DURATION_UNITS[e.unit])
    v = f"{e.value:,}" if isinstance(e.value, int) and not isinstance(e.value, bool) else str(e.value)
    return f"{v} {e.unit}" if e.unit else v


def _evidence_text(e) -> str:
    span = e.end - e.start if e.end is not None and e.start is not None else None
    v = evidence_value(e)
    if span and e.unit in DURATION_UNITS and isinstance(e.value, (int, float)) \
            and abs(e.value * DURATION_UNITS[e.unit] - span) < 1000:
        v = ""  # the interval's own duration, shown once beside its start
    when = (f" [{fmt_ts(e.start)}" + (f" +{fmt_duration(span)}" if span else "") + "]") if e.start is not None else ""
    where = f" @{e.host}" if e.host else ""
    return f"{e.label}{' = ' + v if v else ''}{where}{when}"


def print_findings(findings) -> None:
    if not findings:
        console.print("[green]no findings[/]: nothing in the store matched a diagnosis rule")
        return
    for i, f in enumerate(findings, 1):
        c = SEVERITY_COLOUR[f.severity]
        console.print(f"[bold]{i}.[/] [{c}]{f.severity.upper()}[/] [dim]{f.rule}[/] {escape(f.statement)}")
        for e in f.evidence:
            console.print(f"     · {escape(_evidence_text(e))}", highlight=False)
        console.print(f"     [bold]what to do:[/] {escape(f.action)}")
        console.print()


def html_report(findings, title: str = "stacklens diagnosis") -> str:
    """A self-contained HTML page; every value from the traces is escaped."""
    e = html.escape
    rows = []
    for i, f in enumerate(findings, 1):
        ev = "".join(f"<li>{e(_evidence_text(x))}</li>" for x in f.evidence)
        rows.append(f'<section class="finding {e(f.severity)}" id="finding-{i}"><h2>{i}. '
                    f'<span class="sev">{e(f.severity)}</span> {e(f.statement)}</h2>'
                    f'<p class="rule">{e(f.rule)} · subject {e(json.dumps(f.subject, default=str))}</p>'
                    f'<ul class="evidence">{ev}</ul><p class="action"><b>What to do:</b> {e(f.action)}</p></section>')
    body = "".join(rows) or '<p class="none">No findings: nothing in the store matched a diagnosis rule.</p>'
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
            "body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}"
            ".finding{border-left:6px solid #999;padding:.3em 1em;margin:1em 0;background:#fafafa}"
            ".critical{border-color:#c62828}.warning{border-color:#ef8f00}.info{border-color:#1565c0}"
            ".sev{text-transform:uppercase;font-size:.8em}.rule{color:#666}h2{font-size:1.05em}"
            f"</style></head><body><h1>{e(title)}</h1>{body}</body></html>")


def register(app: typer.Typer) -> None:
    from stacklens.cli import ClusterOpt, JsonOpt

    @app.command()
    def diagnose(path: Optional[Path] = typer.Argument(None, help="A trace bundle (ingested into a temporary store) or a store."),
                 store: Optional[str] = typer.Option(None, "--store", "-s", help="Store directory."),
                 html_out: Optional[Path] = typer.Option(None, "--html", help="Also write an HTML report here."),
                 stuck_after: float = typer.Option(300.0, "--stuck-after", help="Seconds in a transitional VM state "
                                                   "with no further record before it is reported stuck."),
                 slow_scheduling: float = typer.Option(2.0, "--slow-scheduling", help="Seconds of select_destinations "
                                                       "above which scheduling is reported slow."),
                 cluster: Optional[str] = ClusterOpt, json_out: bool = JsonOpt) -> None:
        """Ranked findings: what went wrong, the evidence, what to do."""
        if (path is None) == (store is None):
            raise StacklensError("diagnose: give a bundle PATH or --store DIR (one of them)")
        if stuck_after <= 0 or slow_scheduling <= 0:
            raise StacklensError("diagnose: --stuck-after and --slow-scheduling must be positive seconds")
        findings = diagnose_path(path, store, cluster, stuck_after_ns=round(stuck_after * 1e9),
                                 slow_scheduling_ns=round(slow_scheduling * 1e9))
        if html_out is not None:
            html_out.parent.mkdir(parents=True, exist_ok=True)
            html_out.write_text(html_report(findings, f"stacklens diagnosis of {path or store}"))
        if json_out:
            emit_json({"findings": [f.to_dict() for f in findings], "html": str(html_out) if html_out else None})
        else:
            print_findings(findings)
            if html_out is not None:
                console.print(f"HTML report: {html_out}")
