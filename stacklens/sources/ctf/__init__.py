"""Our own CTF reader (CTF 1.8 TSDL and CTF 2 JSON metadata): LTTng kernel and UST traces.

`CtfReader` turns one CTF trace directory into rows of the common event table;
`open_trace` gives the lower-level API (metadata, env, clocks, typed per-class batches).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import SourceError
from stacklens.sources.base import Reader, ReadOptions

from . import rowjson
from .jsonify import json_column
from .streams import SLOT_BUFFERS, Chunk, CtfTrace, TraceError, merge, merged_order, prefetched

__all__ = ["CtfReader", "CtfTrace", "open_trace", "find_traces", "is_ctf_metadata"]

MAX_ROWS = 1 << 20


def open_trace(path: Path | str) -> CtfTrace:
    """Open a CTF trace directory; raises SourceError (one line) if it cannot be read."""
    try:
        return CtfTrace.open(Path(path))
    except TraceError as e:
        # named from the trace directory (ingest shows that one), with the file at fault
        where = Path(e.path)
        name = where.relative_to(path) if where != Path(path) and where.is_relative_to(path) else None
        raise SourceError(path, f"{name}: {e.problem}" if name else e.problem) from None
    except OSError as e:
        raise SourceError(path, f"cannot read ({e.strerror or e})") from None


def is_ctf_metadata(head: bytes) -> bool:
    """True for the start of a CTF metadata file: packetized (magic, either byte order),
    CTF 2 (JSON text sequence, RS byte) or TSDL text."""
    if head[:4] in (b"\x57\x1d\xd1\x75", b"\x75\xd1\x1d\x57"):
        return True
    if head[:1] == b"\x1e":
        return True
    text = head[:4096].decode("utf-8", errors="replace")
    return "/* CTF" in text or any(k in text for k in ("trace {", "typealias ", "trace{"))


def find_traces(root: Path | str) -> list[Path]:
    """Every CTF trace directory under `root` (itself included), sorted."""
    root = Path(root)
    out = [p.parent for p in root.rglob("metadata") if p.is_file()]
    return sorted(set(out))


class CtfReader(Reader):
    format = "ctf"
    layer = "kernel"
    unit = "event"
    is_directory = True

    def __init__(self, path: Path, options: ReadOptions | None = None) -> None:
        super().__init__(Path(path), options or ReadOptions())
        self._trace: CtfTrace | None = None

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        m = Path(path) / "metadata"
        if not m.is_file():
            return False
        try:
            with open(m, "rb") as f:
                return is_ctf_metadata(f.read(4096))
        except OSError:
            return False

    def trace(self) -> CtfTrace:
        if self._trace is None:
            self._trace = open_trace(self.path)
            host = self._trace.env.get("hostname")
            if isinstance(host, str) and host:
                self.report.host_hint = host
            # Sync picks as reference the host whose trace clock uuid sorts first.
            meta = self._trace.metadata
            clock_uuids = sorted(c.uuid for c in meta.clocks.values() if c.uuid)
            if clock_uuids:
                self.report.meta["clock_uuid"] = clock_uuids[0]
            if meta.uuid:
                self.report.meta["trace_uuid"] = meta.uuid
            self.report.notes.extend(self._trace.notes)
            if self._trace.unreadable:
                self.report.skip(0, len(self._trace.unreadable))
        return self._trace

    def tables(self) -> Iterator[pa.Table]:
        trace = self.trace()
        kernel = str(trace.env.get("domain", "")) == "kernel" or \
            str(trace.env.get("tracer_name", "")) == "lttng-modules"
        per_stream = max(8192, min(1 << 17, MAX_ROWS // max(1, len(trace.streams))))
        # each stream's next chunk is decoded and turned into rows by a worker thread (the
        # compiled kernels release the GIL) while the merge consumes the current ones
        pool = PoolShare(decode_pool())
        # and the merge (concatenation, reordering) of the next rows runs in its own thread
        # while the caller writes the current table
        merger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctf-merge")
        iters = [prefetched(pool, self._with_rows(trace, trace.chunks(sf, per_stream, self.options.progress), kernel))
                 for sf in trace.streams]
        try:
            yield from prefetched(merger, self._merged(trace, iters))
        finally:
            merger.shutdown(wait=True, cancel_futures=True)
            pool.close()

    def _merged(self, trace: CtfTrace, iters: list[Iterator[Chunk]]) -> Iterator[pa.Table]:
        pos = 0
        for parts in merge(iters):
            t = pa.concat_tables([p.chunk.rows.slice(p.first, p.end - p.first) for p in parts])  # type: ignore[attr-defined]
            if len(parts) > 1:
                t = _take(t, pa.array(merged_order(parts)))
            n = t.num_rows
            t = t.append_column("pos", pa.array(np.arange(pos, pos + n, dtype=np.int64)))
            pos += n
            self.report.rows += n
            for off in range(0, n, MAX_ROWS):
                yield t.slice(off, MAX_ROWS)
        broken = [sf for sf in trace.streams if sf.error]
        if pos == 0 and broken:
            # nothing good to keep: the trace is rejected as a whole, on one line
            first = broken[0]
            problem = first.error.removeprefix(f"{first.path}: ")  # type: ignore[union-attr]
            more = f" (and {len(broken) - 1} other stream files)" if len(broken) > 1 else ""
            raise SourceError(self.path, f"no event could be read: {first.name}: {problem}{more}")
        # what was skipped: one per decoding problem (a bad event and the rest of its packet,
        # or a bad packet), and every event of a packet whose time is out of line
        for sf in trace.streams:
            if sf.skipped_packets:
                self.report.skip(pos, sf.skipped_packets)
            if sf.dropped_events:
                self.report.skip(pos, sf.dropped_events)
        self.report.notes.extend(trace.problems[:10])
        if len(trace.problems) > 10:
            self.report.notes.append(f"… and {len(trace.problems) - 10} other decoding problems")
        self.report.notes.extend(trace.time_notes)

    def _with_rows(self, trace: CtfTrace, chunks: Iterator[Chunk], kernel: bool) -> Iterator[Chunk]:
        for ch in chunks:
            ch.rows = rowjson.chunk_rows(ch, kernel, chunk_rows)  # type: ignore[attr-defined]
            SLOT_BUFFERS.give(ch.buf)  # the rows copied what they need: the next chunk decodes into it
            ch.buf = _EMPTY
            yield ch

    def lost(self) -> pa.Table | None:
        trace = self.trace()
        rows = trace.lost()
        return pa.table({
            "stream": pa.array([r[0] for r in rows], pa.string()),
            "cpu": pa.array([r[1] for r in rows], pa.int32()),
            "ts_begin": pa.array([r[2] for r in rows], pa.int64()),
            "ts_end": pa.array([r[3] for r in rows], pa.int64()),
            "count": pa.array([r[4] for r in rows], pa.int64()),
        })


_EMPTY = np.zeros(0, dtype=np.int64)


def _take(t: pa.Table, order: pa.Array) -> pa.Table:
    """t.take(order), columns with no value left as they are (a kernel trace's pid, tid and
    procname: a third of the merge's copying was of nulls)."""
    return pa.table({name: col if col.null_count == len(col) else col.take(order)
                     for name, col in zip(t.column_names, t.columns)})


WORKERS = max(1, min(4, os.cpu_count() or 1))

# One pool of decode workers for the process, shared by every trace read at once (ingest
# reads two parts at a time): a pool per trace put twice as many decoding threads as cores
# on the CPUs, and left the last trace with half of them while the others had finished.
_DECODE_POOL: ThreadPoolExecutor | None = None
_DECODE_POOL_LOCK = threading.Lock()


def decode_pool() -> ThreadPoolExecutor:
    global _DECODE_POOL
    with _DECODE_POOL_LOCK:
        if _DECODE_POOL is None:
            _DECODE_POOL = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ctf")
        return _DECODE_POOL


class PoolShare:
    """A reader's tasks on a shared pool: `close` drops those not started and waits for the
    running ones, as shutting down a pool of its own did (a reader stopped early)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.futures: set[Future] = set()

    def submit(self, fn, *args) -> Future:  # noqa: ANN001
        f = self.pool.submit(fn, *args)
        self.futures.add(f)
        f.add_done_callback(self.futures.discard)
        return f

    def close(self) -> None:
        pending = list(self.futures)
        for f in pending:
            f.cancel()
        wait(pending)


def layer_of(names: pa.Array, kernel: bool) -> pa.Array:
    if kernel:
        virt = pc.starts_with(names, "addons_lttng_ovs_")
    else:
        virt = pc.or_(pc.starts_with(names, "qemu:"), pc.starts_with(names, "ovs"))
    return pc.if_else(virt, "virt", "kernel" if kernel else "app")


ROW_COLUMNS = ["ts", "name", "layer", "cpu", "pid", "tid", "procname", "fields"]


def chunk_rows(ch: Chunk, kernel: bool, subset: np.ndarray | None = None) -> pa.Table:
    """The event-table rows of a chunk (stream order), built per event class with Arrow
    kernels: ts, name, layer, cpu, pid, tid, procname, fields (JSON of contexts + payload).
    `rowjson.chunk_rows` (compiled JSON) is the fast path; this one is its fallback, for all
    rows or for the `subset` of rows (sorted positions) it leaves."""
    sf = ch.stream
    cs = sf.cs
    if subset is not None:
        ch = Chunk(sf, ch.ts[subset], ch.cls[subset], ch.pkt[subset], ch.base[subset], ch.buf)
    n = len(ch)
    cols: dict[str, list] = {k: [] for k in ("name", "pid", "tid", "procname", "fields")}
    order = []
    for ci, rows in ch.groups():
        names, arrays, ctx = ch.columns(ci, rows)
        m = len(rows)
        order.append(rows)
        cols["name"].append(pa.array(np.zeros(m, dtype=np.int32)).dictionary_encode()
                            if False else pa.repeat(pa.scalar(cs.classes[ci].cls.name), m))
        ctx_map = {nm: arr for nm, arr in zip(names[:len(ctx)], arrays[:len(ctx)])}
        cols["pid"].append(_first_int(ctx_map, ("vpid", "pid"), m))
        cols["tid"].append(_first_int(ctx_map, ("vtid", "tid"), m))
        proc = ctx_map.get("procname")
        cols["procname"].append(proc.cast(pa.string()) if proc is not None and pa.types.is_large_string(proc.type)
                                else pa.nulls(m, pa.string()))
        # JSON keys: contexts then payload; a context name also used by the payload is
        # kept as "context.<name>"
        payload_names = set(names[len(ctx):])
        keys = [(f"context.{nm}" if nm in payload_names else nm) for nm in names[:len(ctx)]] + names[len(ctx):]
        cols["fields"].append(json_column(keys, arrays, m))
    if not order:
        return pa.table({c: pa.array([], t) for c, t in zip(ROW_COLUMNS, ROW_TYPES)})
    perm = np.concatenate(order)
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    take = pa.array(inv)
    out = {"ts": pa.array(ch.ts)}
    name = pa.concat_arrays(cols["name"]).take(take)
    out["name"] = name.dictionary_encode()  # the same types as the fast path's rows
    out["layer"] = layer_of(name, kernel).dictionary_encode()
    out["cpu"] = _cpu(sf, ch.pkt)
    for k in ("pid", "tid", "procname", "fields"):
        out[k] = pa.concat_arrays(cols[k]).take(take)
    return pa.table(out)


ROW_TYPES = [pa.int64(), pa.dictionary(pa.int32(), pa.string()), pa.dictionary(pa.int32(), pa.string()), pa.int32(), pa.int64(), pa.int64(), pa.string(), pa.string()]


def _first_int(ctx: dict[str, pa.Array], keys: tuple[str, ...], m: int) -> pa.Array:
    for k in keys:
        a = ctx.get(k)
        if a is not None and pa.types.is_integer(a.type):
            return a.cast(pa.int64(), safe=False)
    return pa.nulls(m, pa.int64())


def _cpu(sf, pkt: np.ndarray) -> pa.Array:
    vals = np.array([p.cpu if p.cpu is not None else -1 for p in sf.packets], dtype=np.int64)
    if len(vals) == 0 or (vals < 0).all():
        return pa.nulls(len(pkt), pa.int32())
    v = vals[pkt]
    return pa.array(v.astype(np.int32), mask=v < 0)
