"""Terminal rendering shared by the CLI commands: tables, timestamps, JSON."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

def _width() -> int | None:
    # Piped output is not wrapped at 80 columns: tables stay greppable.
    if sys.stdout.isatty():
        return None
    return int(os.environ.get("COLUMNS", "200"))


console = Console(width=_width())
err_console = Console(stderr=True)


def fmt_ts(ns: int | None) -> str:
    """int64 ns since the epoch → ISO 8601 UTC with nanoseconds."""
    if ns is None:
        return "-"
    sec, frac = divmod(int(ns), 1_000_000_000)
    return dt.datetime.fromtimestamp(sec, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def fmt_duration(ns: int | float | None) -> str:
    """A duration in the unit that suits it: s, ms, µs with 3 decimals, whole ns below 1 µs,
    and `0 s` for nothing (never `0.000 µs`)."""
    if ns is None:
        return "-"
    if ns == 0:
        return "0 s"
    if abs(ns) < 1000:
        return f"{ns:.0f} ns"
    s = ns / 1e9
    if abs(s) >= 1:
        return f"{s:.3f} s"
    if abs(s) >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.3f} µs"


def emit_json(obj: Any) -> None:
    """Machine output: plain JSON on stdout (no colours, no wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=1, default=_json_default, ensure_ascii=False) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (dt.datetime, dt.date)):
        return o.isoformat()
    if isinstance(o, bytes):
        return o.hex()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    return str(o)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
                right: Iterable[str] = ()) -> None:
    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    right = set(right)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)
