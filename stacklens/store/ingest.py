"""Ingest: run the right reader on every part of a bundle and write its rows to the store.

Idempotent by content: a part's id is the hash of its bytes (of every file, for a trace
directory); a part already in the store is skipped, so ingesting twice adds nothing.
Each part is committed whole or not at all (see store.py); a full disk stops the ingest with
StoreFullError and leaves the store as it was before that part.
"""

from __future__ import annotations

import os
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from stacklens.errors import SourceError, StacklensError
from stacklens.gcpause import paused_gc
from stacklens.sources.base import ReadOptions
from stacklens.sources.bundle import NotRead, Part, discover
from stacklens.store.source_ids import part_source_id, source_id  # noqa: F401 (source_id: re-exported)
from stacklens.store.store import Store, is_disk_full


class StoreFullError(StacklensError):
    """The store's file system filled up during a part; that part was dropped whole."""


@dataclass
class PartResult:
    path: str
    status: str  # ingested | already | unrecognised | rejected
    format: str | None = None
    host: str | None = None
    src: str | None = None
    rows: int = 0
    skipped: int = 0
    lost: int = 0
    message: str | None = None  # why rejected / what was skipped
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def part_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(q.stat().st_size for q in path.rglob("*") if q.is_file())


# Parts read at once: a part's serial steps (hashing, metadata, the commit's fsyncs) and the
# GIL-holding parts of its readers overlap with another part's compiled decoding and Parquet
# encoding. A part bigger than BIG_PART is read alone, so peak memory stays one big part's.
PARTS_AT_ONCE = max(1, min(2, os.cpu_count() or 1))
BIG_PART = 256 << 20


def ingest(store: Store, paths: list[Path], host: str | None = None, tz: str | None = None,
           on_part: Callable[[Part, int], None] | None = None,
           on_progress: Callable[[int], None] | None = None) -> list[PartResult]:
    """Ingest every part under `paths`. `host`/`tz` override the bundle's settings.
    `on_part(part, size)` is called as each part starts, `on_progress(nbytes)` as bytes are
    read (both may be called from worker threads). Results are in the parts' order."""
    with paused_gc():  # recognising the parts imports their readers (and compiled code)
        parts = discover(paths)

    def one(part: Part, size: int) -> PartResult:
        if on_part:
            on_part(part, size)
        reported = 0

        def progress(n: int) -> None:
            nonlocal reported
            n = max(0, min(n, size - reported))
            reported += n
            if on_progress and n:
                on_progress(n)

        with paused_gc():  # no GC scans in the decode loop; the part's cycles freed after it
            result = _ingest_part(store, part, host, tz, progress)
        progress(size - reported)
        return result

    sizes = [part_size(p.path) for p in parts]
    if PARTS_AT_ONCE == 1 or len(parts) < 2:
        return _same_content_once([one(p, n) for p, n in zip(parts, sizes)])
    futures: list[Future] = []
    with ThreadPoolExecutor(max_workers=PARTS_AT_ONCE, thread_name_prefix="ingest-part") as pool:
        try:
            for part, size in zip(parts, sizes):
                in_flight = [f for f in futures if not f.done()]
                if size > BIG_PART or len(in_flight) >= PARTS_AT_ONCE:
                    wait(in_flight, return_when=ALL_COMPLETED if size > BIG_PART else FIRST_COMPLETED)
                _raise_failed(futures)  # a full disk stops the ingest before the next part
                futures.append(pool.submit(one, part, size))
                if size > BIG_PART:
                    wait([futures[-1]])
            results = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return _same_content_once(results)


def _raise_failed(futures: list[Future]) -> None:
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is not None:
            f.result()


def _same_content_once(results: list[PartResult]) -> list[PartResult]:
    """Parts of one run with the same content (the same file given twice) are stored once,
    by whichever committed first; report the first in the list as the one ingested, as a
    one-at-a-time run would, and the others as already in the store."""
    first: dict[str, int] = {}
    for i, r in enumerate(results):
        if r.src is None or r.status not in ("ingested", "already"):
            continue
        if r.src not in first:
            first[r.src] = i
            continue
        j = first[r.src]
        if results[j].status == "already" and r.status == "ingested":
            results[j], results[i] = (PartResult(**{**r.to_dict(), "path": results[j].path}),
                                      PartResult(**{**results[j].to_dict(), "path": r.path}))
    return results


def ingest_part(store: Store, part: Part, host: str | None = None, tz: str | None = None,
                progress: Callable[[int], None] | None = None) -> PartResult:
    """Ingest one discovered part (what `ingest` does per part; a cluster worker runs it)."""
    with paused_gc():
        return _ingest_part(store, part, host, tz, progress or (lambda n: None))


def _ingest_part(store: Store, part: Part, host: str | None, tz: str | None,
                 progress: Callable[[int], None]) -> PartResult:
    path = str(part.path)
    if part.reader is None:
        return PartResult(path, "unrecognised", message="not a recognised format")
    fmt = part.reader.format
    if issubclass(part.reader, NotRead):  # a device, FIFO or link back: never opened nor hashed
        return PartResult(path, "rejected", fmt, message=part.reader.problem)
    try:
        src = part_source_id(part.path)
    except OSError as e:
        return PartResult(path, "rejected", fmt, message=f"cannot read: {e.strerror or e}")
    if store.has_source(src):
        return PartResult(path, "already", fmt, src=src, message="already in the store")
    options = ReadOptions(host=host or part.host, tz=tz or part.tz, on_progress=progress)
    reader = part.reader(part.path, options)
    writer = None
    resolved_host: str | None = None
    try:
        writer = store.writer(src)
        for table in reader.tables():
            if resolved_host is None:
                resolved_host = options.host or reader.report.host_hint or "unknown"
            consts = {"host": resolved_host, "source": fmt}
            if part.layer:
                table = table.drop_columns([c for c in ("layer",) if c in table.column_names])
                consts["layer"] = part.layer
            elif "layer" not in table.column_names:
                consts["layer"] = reader.layer
            writer.write(table, **consts)
        if resolved_host is None:
            resolved_host = options.host or reader.report.host_hint or "unknown"
        lost = reader.lost()
        if lost is not None and lost.num_rows:
            writer.write_lost(lost, host=resolved_host)
        rep = reader.report
        record = writer.commit({
            **rep.meta,
            "path": path, "format": fmt, "host": resolved_host,
            "layer": part.layer or reader.layer, "bytes": part_size(part.path),
            "skipped": rep.skipped, "bad_positions": rep.bad_positions, "notes": rep.notes,
        })
    except BaseException as e:
        if writer is not None:
            writer.abort()
        if is_disk_full(e):  # the store is as it was; the next parts would fail the same way
            raise StoreFullError(f"{path}: disk full while writing the store; "
                                 "nothing from this part was kept") from None
        if isinstance(e, SourceError):
            return PartResult(path, "rejected", fmt, message=e.problem)
        if isinstance(e, StacklensError):
            return PartResult(path, "rejected", fmt, message=str(e))
        if not isinstance(e, Exception) or isinstance(e, MemoryError) or os.environ.get("STACKLENS_DEBUG"):
            raise
        # a reader bug must not take the other parts down
        return PartResult(path, "rejected", fmt, message=f"internal error: {type(e).__name__}: {e}")
    if writer.duplicate:  # another process committed the same content meanwhile
        return PartResult(path, "already", fmt, src=src, message="already in the store")
    return PartResult(path, "ingested", fmt, resolved_host, src, rows=record["rows"],
                      skipped=rep.skipped, lost=record["lost"], message=rep.summary(reader.unit),
                      notes=list(rep.notes))
