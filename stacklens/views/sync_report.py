"""`stacklens sync`: match packets across hosts, compute and store the clock transforms."""

from __future__ import annotations

import typer

from stacklens.views.terminal import console, emit_json, fmt_duration, print_table


def run_sync(store_path: str, json_out: bool) -> None:
    from stacklens.store import Store
    from stacklens.sync import sync_store
    report = sync_store(Store(store_path))
    if json_out:
        emit_json(report)
        return
    if not report["hosts"]:
        console.print("no events in the store")
        return
    console.print(f"reference clock: [bold]{report['reference']}[/]")
    print_table(["sent on", "received on", "matched packets"],
                [[p["send_host"], p["recv_host"], p["matches"]] for p in report["packets"]], right=["matched packets"])
    print_table(["host", "quality", "offset", "drift", "accuracy", "matches", "note"],
                [[h["host"], h["quality"], fmt_duration(h["offset_ns"]), f"{h['drift_ppm']:+.3f} ppm",
                  fmt_duration(h["accuracy_ns"]) if h["accuracy_ns"] is not None else "-", h["matches"],
                  (f"via {', '.join(h['via'])}; " if h["via"] else "") + (h["reason"] if h["quality"] != "reference" else "")]
                 for h in report["hosts"]], right=["offset", "drift", "accuracy", "matches"])
    console.print("transforms stored: every query now returns synchronized timestamps")


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE, JsonOpt

    @app.command()
    def sync(store: str = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory."),
             json_out: bool = JsonOpt) -> None:
        """Synchronize host clocks from packets matched across hosts (convex hull) and store the transforms."""
        run_sync(store, json_out)
