"""`stacklens ui --store DIR`: the local web UI (127.0.0.1 only)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE

    @app.command()
    def ui(store: str = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory."),
           port: int = typer.Option(8765, help="Port on 127.0.0.1.")) -> None:
        """Web UI: VM states, service tasks, request swimlanes, migrations, OvS, kernel, findings."""
        from stacklens.store import Store
        from stacklens.views.terminal import console
        from stacklens.views.web.app import serve
        s = Store(store)
        console.print(f"stacklens ui on http://127.0.0.1:{port}/ (Ctrl-C stops)")
        serve(s, port)
