"""The store on disk: Parquet partitioned by host and layer, queried through DuckDB.

Layout of a store directory:
    events/host=<h>/layer=<l>/<src>-<k>.parquet   rows of the common event table
    lost/<src>.parquet                            lost (discarded) event records
    sources/<src>.json                            one manifest per ingested source
    clocks.json                                   per-host clock transforms (filled by sync)

A source is identified by the hash of its content (`src`), and each row by (src, pos): ingesting
the same content again is recognised from its manifest and adds nothing. The manifest is
written last, so a source whose ingest was interrupted has no manifest and its partial files
are replaced on the next attempt.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stacklens.errors import StacklensError
from stacklens.store.schema import EVENT_SCHEMA, LOST_SCHEMA, conform

if TYPE_CHECKING:  # DuckDB is imported by queries only: ingest does not need it
    import duckdb

STORE_MARK = "stacklens-store.json"
STORE_VERSION = 1
ROWS_PER_FILE = 1_000_000
# ... or fewer when rows are wide (text logs): a file's rows are buffered until it is
# written, so this bounds the writer's memory (with two files in flight)
BYTES_PER_FILE = 64 << 20
ROW_GROUP = 131_072
DICTIONARY_COLUMNS = ["host", "layer", "source", "name", "cpu", "pid", "tid", "procname",
                      "request_id", "instance", "src"]


@dataclass(frozen=True)
class ClockTransform:
    """t_ref = t + offset_ns + round((t - base_ns) * drift), drift = slope - 1.

    Kept in this form so that nanoseconds survive at 10^18 magnitudes: the large terms are
    integer additions and only the small product goes through floating point."""

    offset_ns: int = 0
    drift: float = 0.0
    base_ns: int = 0
    quality: str = "identity"
    reference: str | None = None

    def apply(self, ts: int) -> int:
        return ts + self.offset_ns + round((ts - self.base_ns) * self.drift)


class Store:
    """A stacklens store directory."""

    def __init__(self, root: str | os.PathLike[str], create: bool = False) -> None:
        self.root = Path(root)
        mark = self.root / STORE_MARK
        if not mark.exists():
            if not create:
                if not self.root.exists():
                    raise StacklensError(f"{self.root}: no such store (run `stacklens ingest` first)")
                raise StacklensError(f"{self.root}: not a stacklens store (no {STORE_MARK})")
            if self.root.exists() and any(self.root.iterdir()):
                raise StacklensError(f"{self.root}: directory exists and is not a stacklens store")
            self.root.mkdir(parents=True, exist_ok=True)
            mark.write_text(json.dumps({"version": STORE_VERSION}))
        for sub in ("events", "lost", "sources"):
            (self.root / sub).mkdir(exist_ok=True)

    # ---- sources -------------------------------------------------------------------------
    def has_source(self, src: str) -> bool:
        return (self.root / "sources" / f"{src}.json").exists()

    def sources(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.root / "sources").glob("*.json")):
            out.append(json.loads(p.read_text()))
        return out

    def writer(self, src: str) -> "SourceWriter":
        return SourceWriter(self, src)

    def _drop_partial(self, src: str) -> None:
        for p in (self.root / "events").glob(f"*/*/{src}-*.parquet"):
            p.unlink()
        lost = self.root / "lost" / f"{src}.parquet"
        if lost.exists():
            lost.unlink()

    # ---- clocks --------------------------------------------------------------------------
    def clocks(self) -> dict[str, ClockTransform]:
        p = self.root / "clocks.json"
        if not p.exists():
            return {}
        raw = json.loads(p.read_text())
        return {h: ClockTransform(**v) for h, v in raw.items()}

    def set_clocks(self, transforms: dict[str, ClockTransform]) -> None:
        data = {h: t.__dict__ for h, t in transforms.items()}
        tmp = self.root / "clocks.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.root / "clocks.json")

    # ---- files ---------------------------------------------------------------------------
    def event_files(self, host: str | None = None, layer: str | None = None) -> list[Path]:
        h = f"host={quote(host, safe='')}" if host else "host=*"
        l = f"layer={layer}" if layer else "layer=*"
        return sorted((self.root / "events").glob(f"{h}/{l}/*.parquet"))

    def lost_files(self) -> list[Path]:
        return sorted((self.root / "lost").glob("*.parquet"))

    # ---- queries -------------------------------------------------------------------------
    def connect(self, host: str | None = None, layer: str | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the views `events` (synchronized timestamps; raw ones in
        `ts_raw`), `events_raw`, `lost` and `sources`. `host`/`layer` restrict which
        partitions are read at all."""
        import duckdb
        con = duckdb.connect()
        con.execute("SET threads TO 2")
        files = [str(p) for p in self.event_files(host, layer)]
        if files:
            con.execute(f"CREATE VIEW events_raw AS SELECT * FROM read_parquet({_sql_list(files)})")
        else:
            con.register("_empty_events", EVENT_SCHEMA.empty_table())
            con.execute("CREATE VIEW events_raw AS SELECT * FROM _empty_events")
        clocks = {h: t for h, t in self.clocks().items() if t.quality != "identity"}
        if clocks:
            rows = [{"host": h, "offset_ns": t.offset_ns, "drift": t.drift, "base_ns": t.base_ns}
                    for h, t in clocks.items()]
            con.register("_clocks", pa.Table.from_pylist(rows))
            con.execute(
                "CREATE VIEW events AS SELECT e.* REPLACE ("
                " e.ts + coalesce(c.offset_ns, 0)"
                " + CAST(round((e.ts - coalesce(c.base_ns, 0)) * coalesce(c.drift, 0.0)) AS BIGINT) AS ts),"
                " e.ts AS ts_raw FROM events_raw e LEFT JOIN _clocks c USING (host)")
        else:
            con.execute("CREATE VIEW events AS SELECT *, ts AS ts_raw FROM events_raw")
        lost = [str(p) for p in self.lost_files()]
        if lost:
            con.execute(f"CREATE VIEW lost AS SELECT * FROM read_parquet({_sql_list(lost)})")
        else:
            con.register("_empty_lost", LOST_SCHEMA.empty_table())
            con.execute("CREATE VIEW lost AS SELECT * FROM _empty_lost")
        srcs = self.sources()
        src_table = pa.Table.from_pylist(
            [{k: s.get(k) for k in ("src", "path", "format", "host", "layer", "rows", "skipped",
                                     "lost", "bytes", "ts_min", "ts_max", "ingested_at")}
             for s in srcs],
            schema=_SOURCES_SCHEMA)
        con.register("_sources", src_table)
        con.execute("CREATE VIEW sources AS SELECT * FROM _sources")
        return con


_SOURCES_SCHEMA = pa.schema([
    ("src", pa.string()), ("path", pa.string()), ("format", pa.string()), ("host", pa.string()),
    ("layer", pa.string()), ("rows", pa.int64()), ("skipped", pa.int64()), ("lost", pa.int64()),
    ("bytes", pa.int64()), ("ts_min", pa.int64()), ("ts_max", pa.int64()),
    ("ingested_at", pa.float64()),
])


def _sql_list(items: Iterable[str]) -> str:
    return "[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"


class SourceWriter:
    """Writes one source's rows into the store; `commit` makes them visible to re-ingest."""

    def __init__(self, store: Store, src: str) -> None:
        self.store = store
        self.src = src
        self.rows = 0
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self._buffers: dict[tuple[str, str], list[pa.Table]] = {}
        self._buffered: dict[tuple[str, str], int] = {}
        self._buffered_bytes: dict[tuple[str, str], int] = {}
        self._file_no = 0
        self._lost: list[pa.Table] = []
        # Parquet encoding runs in one background thread (Arrow releases the GIL), overlapping
        # with the reader decoding the next batch.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stacklens-parquet")
        self._pending: list[Future] = []
        store._drop_partial(src)

    def write(self, table: pa.Table, **constants: object) -> None:
        """Add rows; `constants` fill columns the table lacks (host, layer, source, …)."""
        table = conform(table, EVENT_SCHEMA, src=self.src, **constants)
        if table.num_rows == 0:
            return
        self.rows += table.num_rows
        mm = pc.min_max(table.column("ts"))
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        self.ts_min = lo if self.ts_min is None else min(self.ts_min, lo)
        self.ts_max = hi if self.ts_max is None else max(self.ts_max, hi)
        hosts = pc.unique(table.column("host")).to_pylist()
        layers = pc.unique(table.column("layer")).to_pylist()
        if len(hosts) == 1 and len(layers) == 1:
            self._add((hosts[0], layers[0]), table)
            return
        for h in hosts:
            for l in layers:
                part = table.filter(pc.and_(pc.equal(table.column("host"), h),
                                            pc.equal(table.column("layer"), l)))
                if part.num_rows:
                    self._add((h, l), part)

    def write_lost(self, table: pa.Table, **constants: object) -> None:
        self._lost.append(conform(table, LOST_SCHEMA, src=self.src, **constants))

    def _add(self, key: tuple[str, str], table: pa.Table) -> None:
        self._buffers.setdefault(key, []).append(table)
        self._buffered[key] = self._buffered.get(key, 0) + table.num_rows
        self._buffered_bytes[key] = self._buffered_bytes.get(key, 0) + table.nbytes
        if self._buffered[key] >= ROWS_PER_FILE or self._buffered_bytes[key] >= BYTES_PER_FILE:
            self._flush(key)

    def _flush(self, key: tuple[str, str]) -> None:
        tables = self._buffers.pop(key, [])
        self._buffered.pop(key, None)
        self._buffered_bytes.pop(key, None)
        if not tables:
            return
        host, layer = key
        d = self.store.root / "events" / f"host={quote(host, safe='')}" / f"layer={quote(layer, safe='')}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{self.src}-{self._file_no:05d}.parquet"
        self._file_no += 1
        # Dictionary encoding only where values repeat: on near-unique columns (ts, pos,
        # fields) it costs time and makes files larger.
        self._pending.append(self._pool.submit(
            pq.write_table, pa.concat_tables(tables), path, compression="zstd",
            row_group_size=ROW_GROUP, use_dictionary=DICTIONARY_COLUMNS))
        while len(self._pending) > 1:  # at most two files in flight: memory stays bounded
            self._pending.pop(0).result()

    def _wait(self) -> None:
        """Wait for every file being written; a failed write raises here."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        for key in list(self._buffers):
            self._flush(key)
        self._wait()
        self._pool.shutdown()
        lost_count = 0
        if self._lost:
            lost = pa.concat_tables(self._lost)
            lost_count = int(pc.sum(lost.column("count")).as_py() or 0)
            pq.write_table(lost, self.store.root / "lost" / f"{self.src}.parquet")
        record = dict(manifest)
        record.update(src=self.src, rows=self.rows, lost=lost_count, ts_min=self.ts_min,
                      ts_max=self.ts_max, ingested_at=time.time())
        path = self.store.root / "sources" / f"{self.src}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
        return record

    def abort(self) -> None:
        self._buffers.clear()
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=True)
        self._pending = []
        self.store._drop_partial(self.src)


def remove_store(root: Path) -> None:
    """Delete a store directory (only if it is one)."""
    if (root / STORE_MARK).exists():
        shutil.rmtree(root)
