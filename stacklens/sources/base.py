"""What every reader provides: recognition by content, rows of the event table, a report.

A reader turns one *part* of a trace bundle (a log file, a CTF trace directory, …) into
Arrow tables in the common event schema (columns it does not know are filled by ingest).
It never raises on bad records: it skips them and says so in its report. It raises
`SourceError` only when the part as a whole cannot be read.
"""

from __future__ import annotations

import json

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, ClassVar, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import SourceError

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
    meta: dict = field(default_factory=dict)  # facts for the source's manifest (clock uuid, …)
    out_of_range: int = 0  # records skipped because their timestamp does not fit int64 ns

    def skip(self, position: int, count: int = 1) -> None:
        self.skipped += count
        if len(self.bad_positions) < MAX_BAD_POSITIONS:
            self.bad_positions.append(position)

    def skip_out_of_range(self, positions: "Sequence[int] | np.ndarray") -> None:
        """Skip the records at `positions` whose timestamp does not fit int64 ns (years
        before 1678 or after 2261): counted with the other bad records, and one note says
        how many were out of range."""
        n = len(positions)
        if not n:
            return
        for p in positions[:MAX_BAD_POSITIONS]:
            self.skip(int(p))
        self.skipped += max(0, n - MAX_BAD_POSITIONS)
        from stacklens.sources.timefmt import NS_RANGE_TEXT
        old = f"{self.out_of_range} record(s) with a timestamp {NS_RANGE_TEXT} skipped"
        self.out_of_range += n
        note = f"{self.out_of_range} record(s) with a timestamp {NS_RANGE_TEXT} skipped"
        if old in self.notes:
            self.notes[self.notes.index(old)] = note
        else:
            self.notes.append(note)

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

    def open_binary(self) -> BinaryIO:
        """The part opened for reading; a part that cannot be opened is rejected in one line."""
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None

    def lost(self) -> pa.Table | None:
        """Lost-event records (LOST_SCHEMA columns but host/src), if the format has them."""
        return None


def json_objects(table: pa.Table, columns: list[str] | None = None) -> pa.Array:
    """One JSON object string per row built from `columns` of `table` (null values left out).

    Column-wise string kernels build the text: a JSON encoder called per row in Python would
    dominate ingest time. Strings, integers, floats and booleans are encoded here; other types
    (lists, structs) are encoded by DuckDB's to_json, also column-wise."""
    columns = list(columns or table.column_names)
    n = table.num_rows
    pieces = []
    for i, name in enumerate(columns):
        col = table.column(name)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        value = json_values(col)
        key = json.dumps(name) + ":"
        member = pc.binary_join_element_wise(pa.scalar("," if i else ""), pa.scalar(key), value, "")
        pieces.append(pc.if_else(value.is_valid(), member, pa.scalar("")))
    if not pieces:
        return pa.repeat(pa.scalar("{}"), n)
    body = pc.binary_join_element_wise(pa.scalar("{"), *pieces, pa.scalar("}"), "")
    # Members after a left-out first member start with a comma: "{,"  →  "{".
    return pc.replace_substring(body, "{,", "{", max_replacements=1)


_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")]


def json_values(col: pa.Array) -> pa.Array:
    """JSON text of each value of `col` (null stays null)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.dictionary_decode(), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = col.cast(pa.string())
        # Escape only the values that need it (a rewrite of every value is the costly part).
        needs = pc.fill_null(pc.match_substring_regex(out, r'[\\"\x00-\x1f\x7f]'), False)
        if pc.any(needs).as_py():
            sub = out.filter(needs)
            for a, b in _ESCAPES:
                sub = pc.replace_substring(sub, a, b)
            ctrl = pc.match_substring_regex(sub, r"[\x00-\x1f\x7f]")
            if pc.any(ctrl).as_py():  # rare: other control characters, encoded one by one
                originals = col.cast(pa.string()).filter(needs)
                vals = sub.to_pylist()
                for i in np.flatnonzero(ctrl.to_numpy(zero_copy_only=False) == True):  # noqa: E712
                    vals[i] = json.dumps(originals[int(i)].as_py())[1:-1]
                sub = pa.array(vals, type=pa.string())
            out = pc.replace_with_mask(out, needs, sub)
        return pc.binary_join_element_wise(pa.scalar('"'), out, pa.scalar('"'), "")
    if pa.types.is_boolean(t):
        return pc.if_else(col, pa.scalar("true"), pa.scalar("false"))
    if pa.types.is_integer(t):
        return col.cast(pa.string())
    if pa.types.is_floating(t):
        finite = pc.is_finite(col)
        return pc.if_else(finite, col.cast(pa.string()), pa.scalar(None, pa.string()))
    import duckdb  # only for nested values; most ingests never get here
    con = duckdb.connect()
    con.register("t", pa.table({"v": col}))
    return con.sql("SELECT CAST(to_json(v) AS VARCHAR) AS j FROM t").to_arrow_table().column("j").combine_chunks()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
