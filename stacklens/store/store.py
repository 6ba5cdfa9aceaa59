"""The store on disk: Parquet partitioned by host and layer, queried through DuckDB.

This module is the store given as a path (a directory on a filesystem with rename and fcntl
locks); a store at a URL (file://, s3://, …) is an ObjectStore (objectstore.py), committed by
manifest objects instead. `Store(location)` gives the right one.

Layout of a store directory:
    events/host=<h>/layer=<l>/<src>-<w>-<k>.parquet   rows of the common event table
    lost/<src>-<w>.parquet                            lost (discarded) event records
    sources/<src>.json                                one manifest per ingested source
    clocks.json                                       per-host clock transforms (filled by sync)
    tmp/<w>/, tmp/<w>.lock                            a writer's staging area and its lock
    store.lock                                        the commit lock

A source is identified by the hash of its content (`src`), and each row by (src, pos): ingesting
the same content again is recognised from its manifest and adds nothing. `<w>` names the writer
(process id and a random token), so two writers never share a file name.

Crash safety. The manifest commits a part: it lists the part's files, and readers take the
files to read from the manifests only, never from a directory listing, so rows no manifest
covers are invisible. A writer stages its files under tmp/<w>/ (each fsynced once written) and
commits under the store's commit lock (an fcntl lock on store.lock, so writers in several
processes serialise there):
    0. (before the lock) the manifest, listing the files' final names, is written and fsynced
       as tmp/<w>/manifest.json;
    1. if sources/<src>.json exists, another writer committed the same content: drop ours;
    2. each file is renamed to its place under events/ and lost/; those directories fsynced;
    3. tmp/<w>/manifest.json is renamed to sources/<src>.json — the commit point — and
       sources/ is fsynced;
    4. tmp/<w>/ and its lock are removed.
A writer holds an fcntl lock on tmp/<w>.lock while it lives. Opening a store removes what dead
writers left (their lock is free): the staging directory and, when the writer died between
steps 2 and 3, the files its staged manifest names (no committed manifest lists them). A live writer's files are
never touched (its lock is held), and staging areas are created and cleaned under the commit
lock, so a cleaner never sees a staging area before its writer has locked it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stacklens.errors import StacklensError
from stacklens.store.location import LOCAL_PROTOCOLS, is_url, local_root, protocol
from stacklens.store.schema import EVENT_SCHEMA, LOST_SCHEMA, STORED_SCHEMA, conform

if TYPE_CHECKING:  # DuckDB is imported by queries only: ingest does not need it
    import duckdb

STORE_MARK = "stacklens-store.json"
STORE_VERSION = 1
COMMIT_LOCK = "store.lock"
STAGING = "tmp"
ROWS_PER_FILE = 1_000_000
# ... or fewer when rows are wide (text logs): a file's rows are buffered until it is
# written, so this bounds the writer's memory (with two files in flight)
BYTES_PER_FILE = 64 << 20
ROW_GROUP = 131_072
DICTIONARY_COLUMNS = ["host", "layer", "source", "name", "cpu", "pid", "tid", "procname",
                      "request_id", "instance", "src"]

# Min/max statistics let DuckDB skip row groups on filters; nobody filters on the JSON of
# `fields` by range, and computing them over every payload costs.
STATISTICS_COLUMNS = [f.name for f in EVENT_SCHEMA if f.name != "fields"]


def is_disk_full(e: BaseException) -> bool:
    """An OSError that means the file system (or the user's quota) is full. Arrow's own IO
    errors carry the errno only in their message."""
    if not isinstance(e, OSError):
        return False
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by name (a directory: so the names in it are durable)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) * path.is_dir())
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# How event files are encoded. Dictionary encoding only where values repeat: on near-unique
# columns (ts, pos, fields) it costs time and makes files larger.
# ts (sorted within a file) and pos (consecutive) as deltas: on 5 M CTF events their encoding
# took 0.23 s of a 0.96 s write as plain values + zstd, 0.09 s as deltas, 7 MB smaller; DuckDB
# reads them as fast
# zstd for the two columns that make the file (the JSON of `fields`, the times), Snappy for
# the others, which hold a few bytes per page: zstd set up a compression context per page,
# ~50 µs each, 13 of 14 columns' pages for 3 % of the bytes (5 M CTF events: write CPU
# 0.66 -> 0.58 s, file 27.7 -> 28.5 MB)
COMPRESSION = {f.name: ("zstd" if f.name in ("fields", "ts") else "snappy") for f in EVENT_SCHEMA}
EVENT_FILE_OPTIONS: dict[str, Any] = {"compression": COMPRESSION, "row_group_size": ROW_GROUP,
                                      "use_dictionary": DICTIONARY_COLUMNS,
                                      "write_statistics": STATISTICS_COLUMNS,
                                      "column_encoding": {"ts": "DELTA_BINARY_PACKED",
                                                          "pos": "DELTA_BINARY_PACKED"},
                                      # values handed to the encoders 16 k at a time, not 1 k: the
                                      # same file, 0.13 s less of a 0.83 s write on 5 M events
                                      "write_batch_size": 16384}


def _distinct(col: pa.ChunkedArray) -> list:
    """The distinct values of a column, in order of first appearance. A dictionary chunk
    whose dictionary holds one value (a part's host, a trace's layer) is that value without
    hashing its indices; unique() on dictionary chunks is per chunk, hence the dict."""
    out: dict = {}
    for chunk in col.chunks:
        if not len(chunk):
            continue
        if pa.types.is_dictionary(chunk.type) and len(chunk.dictionary) == 1 and not chunk.null_count:
            out.setdefault(chunk.dictionary[0].as_py(), None)
        else:
            out.update(dict.fromkeys(pc.unique(chunk).to_pylist()))
    return list(out)


def _write_parquet(table: pa.Table, path: Path, options: dict[str, Any] | None = None) -> None:
    pq.write_table(table, path, **(options or {}))
    fsync_path(path)  # in the writer's thread: overlaps with decoding the next batch


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


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
    """A stacklens store directory. `Store(url)` for a URL (file://, s3://, …) — or a path whose
    store was created from one — is an ObjectStore (objectstore.py): the same interface,
    committed by manifest objects instead of rename and locks."""

    def __new__(cls, root: str | os.PathLike[str], create: bool = False) -> "Store":
        if cls is Store and _manifest_committed(root):
            from stacklens.store.objectstore import ObjectStore
            return super().__new__(ObjectStore)
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike[str], create: bool = False) -> None:
        self.root = local_root(root)  # a path, or a file:// URL of a store created from a path
        mark = self.root / STORE_MARK
        if not mark.exists():
            if not create:
                if not self.root.exists():
                    raise StacklensError(f"{self.root}: no such store (run `stacklens ingest` first)")
                raise StacklensError(f"{self.root}: not a stacklens store (no {STORE_MARK})")
            self._create(mark)
        for sub in ("events", "lost", "sources", STAGING):
            try:
                (self.root / sub).mkdir(exist_ok=True)
            except OSError:
                if sub != STAGING:  # a read-only store without tmp/ still reads
                    raise
        self.recover()

    def _create(self, mark: Path) -> None:
        # Several processes may create the same store at once (parallel ingest): the mark is
        # published by rename, and a directory holding only marks in the making is empty.
        self.root.mkdir(parents=True, exist_ok=True)
        others = [p for p in self.root.iterdir()
                  if p.name != STORE_MARK and not p.name.startswith(f".{STORE_MARK}.")]
        if others and not mark.exists():
            raise StacklensError(f"{self.root}: directory exists and is not a stacklens store")
        if not mark.exists():
            tmp = self.root / f".{STORE_MARK}.{os.getpid()}-{secrets.token_hex(4)}"
            try:
                tmp.write_text(json.dumps({"version": STORE_VERSION}))
                tmp.replace(mark)
            except OSError as e:
                _unlink(tmp)
                if is_disk_full(e):
                    raise StacklensError(f"{self.root}: disk full while creating the store") from None
                raise

    # ---- locking and recovery -------------------------------------------------------------
    def gc(self, grace: float | None = None) -> list[str]:
        """Remove what dead writers left (here: `recover`; the grace period is for stores
        without locks, objectstore.py)."""
        return self.recover()

    @contextmanager
    def _commit_lock(self, blocking: bool = True) -> Iterator[bool]:
        """The store's commit lock (fcntl, so it serialises processes); yields False when
        `blocking` is off and another process holds it, or the store is read-only."""
        try:
            fd = os.open(self.root / COMMIT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            if blocking:
                raise
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def recover(self) -> list[str]:
        """Remove what dead writers left: staging areas and files published by a commit that
        did not reach its manifest. Skipped (returns []) while another process commits, or on
        a read-only store: what is left is invisible to readers, and the next opener cleans it."""
        staging = self.root / STAGING
        try:
            if not staging.is_dir() or not any(staging.iterdir()):
                return []
        except OSError:
            return []
        try:
            with self._commit_lock(blocking=False) as locked:
                return self._recover_locked() if locked else []
        except OSError:
            return []

    def _recover_locked(self) -> list[str]:
        """With the commit lock held: clean every staging area whose writer is dead."""
        staging = self.root / STAGING
        removed = []
        tokens = {p.name[:-5] if p.name.endswith(".lock") else p.name for p in staging.iterdir()}
        for token in sorted(tokens):
            lock = staging / f"{token}.lock"
            fd = None
            if lock.exists():
                try:
                    fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except (BlockingIOError, FileNotFoundError):
                    if fd is not None:
                        os.close(fd)
                    continue  # alive (or just cleaned by another process)
            try:
                removed += self._rollback(staging / token)
                shutil.rmtree(staging / token, ignore_errors=True)
                _unlink(lock)
                removed.append(f"{STAGING}/{token}")
            finally:
                if fd is not None:
                    os.close(fd)
        return removed

    def _rollback(self, area: Path) -> list[str]:
        """Delete the files a dead writer published: those its staged manifest lists (it is
        written before any file is moved, and moved itself last) that the source's committed
        manifest does not list."""
        try:
            plan = json.loads((area / "manifest.json").read_text())
        except (OSError, ValueError):
            return []  # never got to publishing, or got past its commit point
        manifest = self._read_manifest(self.root / "sources" / f"{plan['src']}.json")
        kept = set(_manifest_files(manifest)) if manifest else set()
        gone = []
        for rel in _manifest_files(plan):
            if rel not in kept and (self.root / rel).exists():
                _unlink(self.root / rel)
                gone.append(rel)
        return gone

    # ---- sources -------------------------------------------------------------------------
    def has_source(self, src: str) -> bool:
        return (self.root / "sources" / f"{src}.json").exists()

    def _read_manifest(self, path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StacklensError(f"{path}: unreadable manifest ({e})") from None

    def sources(self) -> list[dict[str, Any]]:
        """Every committed source's manifest (a snapshot: a part committed while this runs is
        in it whole or not at all)."""
        out = []
        for p in sorted((self.root / "sources").glob("*.json")):
            m = self._read_manifest(p)
            if m is not None:
                out.append(m)
        return out

    def writer(self, src: str) -> "SourceWriter":
        return SourceWriter(self, src)

    # ---- clocks --------------------------------------------------------------------------
    def clocks(self) -> dict[str, ClockTransform]:
        p = self.root / "clocks.json"
        if not p.exists():
            return {}
        raw = json.loads(p.read_text())
        return {h: ClockTransform(**v) for h, v in raw.items()}

    def set_clocks(self, transforms: dict[str, ClockTransform]) -> None:
        data = {h: t.__dict__ for h, t in transforms.items()}
        tmp = self.root / f"clocks.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        fsync_path(tmp)
        tmp.replace(self.root / "clocks.json")

    # ---- files ---------------------------------------------------------------------------
    def _files(self, sources: list[dict[str, Any]], host: str | None = None,
               layer: str | None = None) -> list[Path]:
        h = f"host={quote(host, safe='')}/" if host else None
        l = f"/layer={quote(layer, safe='')}/" if layer else None
        out = []
        for s in sources:
            for rel in _manifest_files(s):
                if rel.startswith("events/") and (h is None or rel[7:].startswith(h)) \
                        and (l is None or l in rel):
                    out.append(self._file(rel))
            if "files" not in s:  # a manifest written before manifests listed their files
                out += self._legacy_files(s["src"], host, layer)
        return sorted(set(out))

    def _file(self, rel: str) -> Path:
        """A store-relative path as DuckDB reads it."""
        return self.root / rel

    def _legacy_files(self, src: str, host: str | None, layer: str | None) -> list[Path]:
        h = f"host={quote(host, safe='')}" if host else "host=*"
        l = f"layer={quote(layer, safe='')}" if layer else "layer=*"
        return list((self.root / "events").glob(f"{h}/{l}/{src}-*.parquet"))

    def _lost_files(self, sources: list[dict[str, Any]]) -> list[Path]:
        out = []
        for s in sources:
            if "files" in s:
                out += [self._file(rel) for rel in _manifest_files(s) if rel.startswith("lost/")]
            elif (self.root / "lost" / f"{s['src']}.parquet").exists():
                out.append(self.root / "lost" / f"{s['src']}.parquet")
        return sorted(out)

    def event_files(self, host: str | None = None, layer: str | None = None) -> list[Path]:
        """The committed event files (those the manifests list)."""
        return self._files(self.sources(), host, layer)

    def fingerprint(self) -> tuple:
        """Changes when the store's content does: an ingest, a `stacklens sync`."""
        files = tuple((p.name, p.stat().st_size) for p in self.event_files())
        clocks = self.root / "clocks.json"
        return files, clocks.stat().st_mtime_ns if clocks.exists() else None

    def _attach(self, con: "duckdb.DuckDBPyConnection") -> None:
        """Make the store's files readable by `con` (local paths: nothing to do)."""

    def lost_files(self) -> list[Path]:
        return self._lost_files(self.sources())

    # ---- queries -------------------------------------------------------------------------
    def connect(self, host: str | None = None, layer: str | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the views `events` (synchronized timestamps; raw ones in
        `ts_raw`), `events_raw`, `lost` and `sources`. `host`/`layer` restrict which
        partitions are read at all. The views are one snapshot of the committed sources: an
        ingest running meanwhile adds nothing to them, and never half a part."""
        import duckdb
        con = duckdb.connect()
        con.execute("SET threads TO 2")
        self._attach(con)
        srcs = self.sources()
        files = [str(p) for p in self._files(srcs, host, layer)]
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
        lost = [str(p) for p in self._lost_files(srcs)]
        if lost:
            con.execute(f"CREATE VIEW lost AS SELECT * FROM read_parquet({_sql_list(lost)})")
        else:
            con.register("_empty_lost", LOST_SCHEMA.empty_table())
            con.execute("CREATE VIEW lost AS SELECT * FROM _empty_lost")
        src_table = pa.Table.from_pylist(
            [{k: s.get(k) for k in ("src", "path", "format", "host", "layer", "rows", "skipped",
                                     "lost", "bytes", "ts_min", "ts_max", "ingested_at")}
             for s in srcs],
            schema=_SOURCES_SCHEMA)
        con.register("_sources", src_table)
        con.execute("CREATE VIEW sources AS SELECT * FROM _sources")
        return con


def _manifest_committed(location: str | os.PathLike[str]) -> bool:
    """Whether the store at `location` is (or, not existing yet, will be) committed by
    manifest objects: a URL other than file://, a new store given as a file:// URL, or a store
    whose mark says so. A store created from a path keeps its rename + lock commit, also when
    given as a file:// URL."""
    if not is_url(location):
        mark = Path(location) / STORE_MARK
    elif protocol(location) in LOCAL_PROTOCOLS:
        mark = local_root(location) / STORE_MARK
    else:
        return True
    try:
        return json.loads(mark.read_text()).get("commit") == "manifest"
    except FileNotFoundError:
        return is_url(location)
    except (OSError, ValueError, AttributeError):
        return False  # the local store reports what is wrong with its mark


def _manifest_files(manifest: dict[str, Any]) -> list[str]:
    """The store-relative paths of a manifest's files (events and lost)."""
    return [f["path"] for f in manifest.get("files", ())]


_SOURCES_SCHEMA = pa.schema([
    ("src", pa.string()), ("path", pa.string()), ("format", pa.string()), ("host", pa.string()),
    ("layer", pa.string()), ("rows", pa.int64()), ("skipped", pa.int64()), ("lost", pa.int64()),
    ("bytes", pa.int64()), ("ts_min", pa.int64()), ("ts_max", pa.int64()),
    ("ingested_at", pa.float64()),
])


def _sql_list(items: Iterable[str]) -> str:
    return "[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"


class SourceWriter:
    """Writes one source's rows into the store's staging area; `commit` publishes them (see the
    module's docstring for the protocol), `abort` drops them. Safe with other writers, in this
    process or others, on the same store — also of the same source: it is committed once, and
    the later commits return the first one's manifest with `duplicate` set."""

    def __init__(self, store: Store, src: str) -> None:
        self.store = store
        self.src = src
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.rows = 0
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self.duplicate = False  # commit found the source committed by another writer
        self._buffers: dict[tuple[str, str], list[pa.Table]] = {}
        self._buffered: dict[tuple[str, str], int] = {}
        self._buffered_bytes: dict[tuple[str, str], int] = {}
        self._file_no = 0
        self._lost: list[pa.Table] = []
        self._staged: list[tuple[Path, str, int]] = []  # (staged file, store-relative destination, rows)
        self._published: list[Path] = []
        self._done = False
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._lock_fd: int | None = None
        self._open()
        # Parquet encoding runs in one background thread (Arrow releases the GIL), overlapping
        # with the reader decoding the next batch.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stacklens-parquet")

    def _open(self) -> None:
        """Create and lock this writer's staging area."""
        store = self.store
        staging = store.root / STAGING
        self._area = staging / self.token
        self._lock_path = staging / f"{self.token}.lock"
        # Created under the commit lock so that no cleaner sees the area before it is locked.
        with store._commit_lock():
            store._recover_locked()
            staging.mkdir(exist_ok=True)
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._area.mkdir()
            except BaseException:
                self._release()
                raise

    def write(self, table: pa.Table, **constants: object) -> None:
        """Add rows; `constants` fill columns the table lacks (host, layer, source, …)."""
        table = conform(table, STORED_SCHEMA, src=self.src, **constants)
        if table.num_rows == 0:
            return
        self.rows += table.num_rows
        mm = pc.min_max(table.column("ts"))
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        self.ts_min = lo if self.ts_min is None else min(self.ts_min, lo)
        self.ts_max = hi if self.ts_max is None else max(self.ts_max, hi)
        hosts = _distinct(table.column("host"))
        layers = _distinct(table.column("layer"))
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
        k = self._file_no
        self._file_no += 1
        table = pa.concat_tables(tables)
        dest = (f"events/host={quote(host, safe='')}/layer={quote(layer, safe='')}/"
                f"{self.src}-{self.token}-{k:05d}.parquet")
        assert self._pool is not None
        self._pending.append(self._pool.submit(*self._file_write(table, dest, k)))
        while len(self._pending) > 1:  # at most two files in flight: memory stays bounded
            self._pending.pop(0).result()

    def _file_write(self, table: pa.Table, dest: str, k: int) -> tuple:
        """(function, *args) that writes an event file bound for `dest`: staged under the
        writer's area, renamed into place by `commit`."""
        staged = self._area / f"{k:05d}.parquet"
        self._staged.append((staged, dest, table.num_rows))
        return (_write_parquet, table, staged, EVENT_FILE_OPTIONS)

    def _wait(self) -> None:
        """Wait for every file being written; a failed write raises here."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Publish the rows; returns the source's manifest. On any error nothing of this
        source is visible and the error is raised (call `abort` to clean up)."""
        record = self._record(manifest)
        staged_manifest = self._area / "manifest.json"
        staged_manifest.write_text(json.dumps(record, indent=1))
        fsync_path(staged_manifest)
        root = self.store.root
        final = root / "sources" / f"{self.src}.json"
        with self.store._commit_lock():
            existing = self.store._read_manifest(final)
            if existing is not None:  # another writer committed the same content first
                self.duplicate = True
                self.abort()
                return existing
            dirs: set[Path] = set()
            for staged, dest, _ in self._staged:
                target = root / dest
                if not target.parent.is_dir():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    dirs.update((target.parent.parent, target.parent.parent.parent))
                os.rename(staged, target)
                self._published.append(target)
                dirs.add(target.parent)
            for d in sorted(dirs, key=lambda p: -len(p.parts)):  # new directories before their parents
                fsync_path(d)
            os.rename(staged_manifest, final)  # the commit point
            self._done = True
            self._published = []
            try:
                fsync_path(final.parent)
            finally:
                self._cleanup()
        return record

    def _record(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write what is buffered; the source's manifest record, listing its files."""
        if self._done:
            raise RuntimeError("writer already committed or aborted")
        for key in list(self._buffers):
            self._flush(key)
        self._wait()
        if self._pool is not None:
            self._pool.shutdown()
        lost_count = 0
        if self._lost:
            lost = pa.concat_tables(self._lost)
            lost_count = int(pc.sum(lost.column("count")).as_py() or 0)
            self._write_lost(lost, f"lost/{self.src}-{self.token}.parquet")
        record = dict(manifest)
        record.update(src=self.src, rows=self.rows, lost=lost_count, ts_min=self.ts_min,
                      ts_max=self.ts_max, ingested_at=time.time(),
                      files=[{"path": dest, "rows": n} for _, dest, n in self._staged])
        return record

    def _write_lost(self, lost: pa.Table, dest: str) -> None:
        staged = self._area / "lost.parquet"
        _write_parquet(lost, staged)
        self._staged.append((staged, dest, lost.num_rows))

    def abort(self) -> None:
        """Drop everything this writer wrote (nothing of it was visible). Idempotent."""
        self._buffers.clear()
        for f in self._pending:
            f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pending = []
        if self._done:
            return
        self._done = True
        for p in self._published:  # renamed before a failure in commit, never in a manifest
            _unlink(p)
        self._published = []
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self._area, ignore_errors=True)
        _unlink(self._lock_path)
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:  # a writer dropped without commit or abort: its lock goes
        try:
            self._release()
        except Exception:
            pass


def remove_store(root: Path) -> None:
    """Delete a store directory (only if it is one)."""
    if (root / STORE_MARK).exists():
        shutil.rmtree(root)
