"""Collection-plane commands: `stacklens agent`, `stacklens client … start|stop|status|pull`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from stacklens.views.terminal import console, emit_json, print_table

DEFAULT_STORE = os.environ.get("STACKLENS_STORE", "stacklens-store")


def register(app: typer.Typer) -> None:
    @app.command()
    def agent(config: Path = typer.Option(..., "--config", help="Agent config (TOML)."),
              ready_file: Optional[Path] = typer.Option(None, help="Write the bound port here once serving.")) -> None:
        """Run this node's agent: authenticated HTTP API over the tracers (127.0.0.1 by default)."""
        from stacklens.collect.agent import serve
        serve(config, ready_file)

    client_app = typer.Typer(no_args_is_help=True, help="Drive many agents (start|stop|status|pull).")

    @client_app.callback()
    def client(ctx: typer.Context,
               agents: Path = typer.Option(..., "--agents", help="Agents file (TOML: \\[\\[agent]] name, url, token).")) -> None:
        """Drive the agents listed in --agents."""
        from stacklens.collect.client import load_agents
        ctx.obj = load_agents(agents)

    @client_app.command()
    def start(ctx: typer.Context, tracers: list[str] = typer.Argument(..., help="Tracer names."),
              json_out: bool = typer.Option(False, "--json")) -> None:
        """Start TRACERS on every agent."""
        from stacklens.collect import client as c
        _show_actions(c.start(ctx.obj, tracers), json_out)

    @client_app.command()
    def stop(ctx: typer.Context, tracers: list[str] = typer.Argument(..., help="Tracer names."),
             json_out: bool = typer.Option(False, "--json")) -> None:
        """Stop TRACERS on every agent."""
        from stacklens.collect import client as c
        _show_actions(c.stop(ctx.obj, tracers), json_out)

    @client_app.command()
    def status(ctx: typer.Context, json_out: bool = typer.Option(False, "--json")) -> None:
        """State of every tracer of every agent (crashes with their exit code)."""
        from stacklens.collect import client as c
        result = c.status(ctx.obj)
        if json_out:
            return emit_json(result)
        rows = [(s["agent"], s["host"], name, t["state"], t["pid"], t["exit_code"], t["restarts"],
                 t["crashes"], t["segments"]) for s in result for name, t in s["tracers"].items()]
        print_table(["agent", "host", "tracer", "state", "pid", "exit", "restarts", "crashes", "segments"],
                    rows, title="agents")
        for s in result:
            for name, t in s["tracers"].items():
                if t.get("crashes"):
                    console.print(f"{s['agent']} {name} {t['state']} (exit {t['exit_code']}, {t['crashes']} crash(es)): "
                                  f"{t.get('reason') or 'no reason logged'}", markup=False, highlight=False, soft_wrap=True)

    @client_app.command()
    def pull(ctx: typer.Context, store: str = typer.Option(DEFAULT_STORE, "--store", "-s"),
             spool: Optional[Path] = typer.Option(None, help="Where fetched segments are kept (default STORE/collected)."),
             json_out: bool = typer.Option(False, "--json")) -> None:
        """Fetch new segments from every agent and ingest them with the agent's host name."""
        from stacklens.collect import client as c
        report = c.pull(ctx.obj, store, spool)
        if json_out:
            return emit_json(report)
        print_table(["agent", "segments", "fetched", "ingested", "rows", "problems"],
                    [(n, a["segments"], a["fetched"], a["ingested"], a["rows"], len(a["problems"]))
                     for n, a in report["agents"].items()], title="pull")
        for a in report["agents"].values():  # what was refused or rejected, and why
            for p in a["problems"]:
                console.print(f"{p['status']}: {p['path']}: {p.get('message') or ''}", markup=False, highlight=False)
        for f in report["findings"]:
            if f["finding"] == "package_version_skew":
                where = ", ".join(f"{h} {v}" for h, v in f["hosts"].items())
                console.print(f"[{f['severity']}] {f['manager']} package {f['package']} differs across nodes: {where}")
            else:
                console.print(f"[{f['severity']}] {f['host']}: pip check: {f['problem']}")

    app.add_typer(client_app, name="client")


def _show_actions(rows: list[dict], json_out: bool) -> None:
    if json_out:
        return emit_json(rows)
    print_table(["agent", "tracer", "state"], [(r["agent"], r["tracer"], r["state"]) for r in rows])
