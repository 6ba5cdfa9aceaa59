"""`stacklens ui --store DIR`: the local web UI (127.0.0.1 unless --host, then with a token)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE

    @app.command()
    def ui(store: str = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory."),
           port: int = typer.Option(8765, help="Port to listen on."),
           host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (beyond loopback needs --token)."),
           token: str = typer.Option(None, "--token", help="Require this token (env STACKLENS_UI_TOKEN)."),
           allow_host: list[str] = typer.Option([], "--allow-host",
                                                help="Another name browsers may use in the Host header.")) -> None:
        """Web UI: VM states, service tasks, request swimlanes, migrations, OvS, kernel, findings."""
        from stacklens.store import Store
        from stacklens.views.terminal import console
        from stacklens.views.web.app import resolve_token, serve
        s = Store(store)
        tok = resolve_token(host, token)
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        console.print(f"stacklens ui on http://{shown}:{port}/" + (f"?token={tok}" if tok else "") + " (Ctrl-C stops)")
        serve(s, port, bind=host, token=tok, allowed_hosts=tuple(allow_host))
