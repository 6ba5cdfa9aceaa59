"""`stacklens dump TRACE`: CTF events as babeltrace2-style text (to diff with babeltrace2)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `stacklens dump` (the CTF decoder is imported only when the command runs)."""

    @app.command("dump")
    def dump_command(trace: Path = typer.Argument(..., help="CTF trace directory (or a tree of them).")) -> None:
        """Print CTF events in babeltrace2's text style (UTC times), to diff with babeltrace2."""
        from stacklens.sources.ctf.dump import dump
        try:
            status = dump(trace)
        except BrokenPipeError:
            status = 0
        raise typer.Exit(status)
