"""What every reader provides: recognition by content, rows of the event table, a report.

A reader turns one *part* of a trace bundle (a log file, a CTF trace directory, …) into
Arrow tables in the common event schema (columns it does not know are filled by ingest).
It never raises on bad records: it skips them and says so in its report. It raises
`SourceError` only when the part as a whole cannot be read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import duckdb
import pyarrow as pa

MAX_BAD_POSITIONS = 10


@dataclass
class ReadOptions:
    """Context a reader needs from the bundle or the command line."""

    host: str | None = None  # forced host name (bundle.toml or --host)
    tz: str = "UTC"  # time zone of text timestamps without one ("UTC", "+02:00", "Europe/Paris")
    on_progress: Callable[[int], None] | None = None  # called with bytes consumed

    def progress(self, nbytes: int) -> None:
        if self.on_progress is not None and nbytes:
            self.on_progress(nbytes)


@dataclass
class SourceReport:
    """What a reader found: kept rows, skipped records (with the first positions), notes."""

    rows: int = 0
    skipped: int = 0
    bad_positions: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    host_hint: str | None = None  # a host name found in the data itself (e.g. CTF env)

    def skip(self, position: int, count: int = 1) -> None:
        self.skipped += count
        if len(self.bad_positions) < MAX_BAD_POSITIONS:
            self.bad_positions.append(position)

    def summary(self, unit: str = "line") -> str | None:
        if not self.skipped:
            return None
        where = ", ".join(str(p) for p in self.bad_positions)
        more = " …" if self.skipped > len(self.bad_positions) else ""
        return f"skipped {self.skipped} bad {unit}{'s' if self.skipped != 1 else ''} ({unit} {where}{more})"


class Reader(ABC):
    """One input format."""

    format: ClassVar[str]  # value of the `source` column
    layer: ClassVar[str]  # default layer of its events
    unit: ClassVar[str] = "line"  # what `pos` counts, for messages
    is_directory: ClassVar[bool] = False  # reads a directory (CTF trace) rather than a file

    def __init__(self, path: Path, options: ReadOptions) -> None:
        self.path = path
        self.options = options
        self.report = SourceReport()

    @classmethod
    @abstractmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        """True if `path` (whose first bytes are `head`; empty for a directory) is this format."""

    @abstractmethod
    def tables(self) -> Iterator[pa.Table]:
        """Rows of the event table, in batches of bounded size."""

    def lost(self) -> pa.Table | None:
        """Lost-event records (LOST_SCHEMA columns but host/src), if the format has them."""
        return None


def json_objects(table: pa.Table, columns: list[str]) -> pa.Array:
    """One JSON object string per row built from `columns` of `table` (null values dropped).

    Done by DuckDB in C++: building JSON per row in Python would dominate ingest time."""
    con = duckdb.connect()
    con.register("t", table.select(columns))
    members = ", ".join(f"{_q(c)} := {_q(c)}" for c in columns)
    # A JSON merge patch onto {} drops the keys whose value is null.
    out = con.sql(f"SELECT CAST(json_merge_patch('{{}}', to_json(struct_pack({members}))) AS VARCHAR) AS j"
                  " FROM t").to_arrow_table()
    return out.column("j").combine_chunks()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
