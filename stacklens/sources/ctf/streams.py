"""A CTF trace on disk: its stream files, their packets, decoding by chunks, the merge of
all streams by timestamp, and lost-event (discarded) records.

A stream file is memory-mapped and decoded by `kernels.decode_stream` a bounded number of
events at a time; each call gives a `Chunk` (timestamps, class index, packet index and the
slot buffer), from which typed Arrow columns are gathered per event class.
"""

from __future__ import annotations

import mmap
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from . import decode as D
from .compiled import kernels
from .decode import CompiledStream, build, compile_stream
from .tsdl import LAYOUT_LOCK, MetadataError, clock_offset_ns, read_metadata_file, strip_underscore
from .types import BE, Clock, EnumType, IntType, TraceMetadata

CHUNK_EVENTS = 131072  # events per decode call and stream: bounds memory per stream
INDEX_MAGIC = 0xC1F1DCC1


class TraceError(Exception):
    """A trace that cannot be read as a whole: the file at fault and a one-line problem."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Packet:
    offset: int
    size_bits: int
    content_bits: int
    ts_begin: int | None  # clock cycles
    ts_end: int | None
    discarded: int | None  # counter snapshot
    cpu: int | None
    seq: int | None


@dataclass
class StreamFile:
    path: Path
    name: str
    data: np.ndarray
    cs: CompiledStream
    packets: list[Packet] = field(default_factory=list)
    error: str | None = None  # the first decoding problem met, if any
    skipped_packets: int = 0
    dropped_events: int = 0  # events of packets whose times are out of line
    bad_times: set[int] = field(default_factory=set)  # offsets of packets with a time out of line
    mm: object = None  # the memory map of the file (for finding the next packet)


@dataclass
class Chunk:
    """Events decoded from one stream by one call, in stream order."""

    stream: StreamFile
    ts: np.ndarray  # int64 ns since the clock origin (Unix epoch for LTTng)
    cls: np.ndarray  # int32 index into stream.cs.classes
    pkt: np.ndarray  # int64 index into stream.packets
    base: np.ndarray  # slot base in buf
    buf: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def by_class(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, bounds): the rows sorted by class, each class's rows in stream order, and
        where each class's run starts in `order` (with len(order) last)."""
        # class indices are small: as uint8/int16 NumPy's stable sort is a radix sort (5-8x
        # faster than on int32 here)
        top, low = int(self.cls.max()), int(self.cls.min())
        keys = self.cls if low < 0 else self.cls.astype(np.uint8) if top < 256 else \
            self.cls.astype(np.int16) if top < 32768 else self.cls
        order = np.argsort(keys, kind="stable")
        cuts = np.flatnonzero(np.diff(self.cls[order])) + 1
        return order, np.concatenate(([0], cuts, [len(order)]))

    def groups(self) -> Iterator[tuple[int, np.ndarray]]:
        """(class index, row positions) for each class present, rows in stream order."""
        if len(self.cls) == 0:
            return
        order, bounds = self.by_class()
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            yield int(self.cls[order[a]]), order[a:b]

    def columns(self, ci: int, rows: np.ndarray) -> tuple[list[str], list[pa.Array], list[str]]:
        """Typed columns of class `ci` for `rows`: names, arrays, and which ones are context.
        The integer columns (most of a kernel trace's) come from one gather of their slots;
        a chunk's classes have a few hundred rows each, so per-column calls would dominate.
        `names` and `ctx` are the class's plan's own lists: read them, do not change them."""
        cs = self.stream.cs
        cc = cs.classes[ci]
        plan = cc.plan if cc.plan is not None else ColumnPlan.of(cs, cc)
        base = self.base[rows]
        arrays: list[pa.Array] = [None] * len(plan.names)  # type: ignore[list-item]
        if len(plan.int_slots):
            # a copy, one row per column, made one Arrow array: the columns are slices of it
            n = len(base)
            gathered = pa.array(self.buf[plan.int_slots[:, None] + base[None, :]].reshape(-1))
            for j, (pos, unsigned64) in enumerate(zip(plan.int_pos, plan.int_u64)):
                col = gathered.slice(j * n, n)
                arrays[pos] = col.view(pa.uint64()) if unsigned64 else col
        for pos, node, off in plan.others:
            arrays[pos] = build(node, self.buf, base + off, self.stream.data)
        return plan.names, arrays, plan.ctx


@dataclass
class ColumnPlan:
    """How one event class's columns are gathered from its slots (made once per class)."""

    names: list[str]
    ctx: list[str]
    unique_names: list[str]  # `names` with repeats numbered (_dedupe)
    int_slots: np.ndarray  # slot of each plain integer / enumeration column, from the event's base
    int_pos: list[int]  # its position among the columns
    int_u64: list[bool]  # unsigned 64-bit: Arrow uint64
    others: list[tuple[int, object, int]]  # (position, layout node, slot offset) built one by one

    @staticmethod
    def of(cs: CompiledStream, cc) -> "ColumnPlan":
        names: list[str] = []
        ctx: list[str] = []
        slots: list[int] = []
        plan = ColumnPlan(names, ctx, [], np.zeros(0, np.int64), [], [], [])
        members = [(node, off, node is not cc.payload) for node, off in
                   ((cs.stream_ctx, 0), (cc.context, cs.kh), (cc.payload, cs.kh)) if node is not None]
        for node, off, is_ctx in members:
            for n, child in node.children:
                pos = len(names)
                names.append(strip_underscore(n))
                if is_ctx:
                    ctx.append(strip_underscore(n))
                if child.kind in ("int", "enum"):
                    it = child.type.int_type if isinstance(child.type, EnumType) else child.type
                    slots.append(off + child.slot)
                    plan.int_pos.append(pos)
                    plan.int_u64.append(it.size == 64 and not it.signed)
                else:
                    plan.others.append((pos, child, off))
        plan.int_slots = np.array(slots, dtype=np.int64)
        plan.unique_names = _dedupe(names)
        cc.plan = plan
        return plan


def clock_ns(cycles: np.ndarray, clock: Clock | None) -> np.ndarray:
    """Clock cycles (uint64 bit patterns in int64) to ns from the clock origin, computed as
    babeltrace2 does: whole seconds exactly, the sub-second remainder through a double."""
    u = cycles.view(np.uint64) if cycles.dtype == np.int64 else cycles.astype(np.uint64)
    if clock is None:
        return u.astype(np.int64)
    freq = clock.freq
    base_ns = clock_offset_ns(clock) or 0  # an offset beyond int64 ns is not used (noted)
    if freq == 1_000_000_000:
        return u.astype(np.int64) + np.int64(base_ns)
    sec = (u // np.uint64(freq)).astype(np.int64)
    rem = (u % np.uint64(freq)).astype(np.float64)
    return sec * 1_000_000_000 + (1e9 * rem / freq).astype(np.int64) + np.int64(base_ns)


class SlotBuffers:
    """Decode slot buffers handed back once a chunk's rows are built (its columns copy what they
    take), for the next chunk of any stream. A fresh buffer of a few MB is paid in page faults
    (zero-filled pages, huge pages where NumPy asks for them) as it is first written: on 5 M
    events that was a quarter of the ingest command's CPU in the kernel. At most KEEP are kept."""

    KEEP = 8

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, cap: int) -> np.ndarray:
        with self._lock:
            for i, b in enumerate(self._free):
                if len(b) == cap:
                    return self._free.pop(i)
        return np.empty(cap, dtype=np.int64)

    def give(self, buf: np.ndarray) -> None:
        """Hand back `buf`; the caller holds no view of it any more."""
        if buf.base is not None or len(buf) < (1 << 16):  # a view, or not one of ours
            return
        with self._lock:
            if len(self._free) < self.KEEP:
                self._free.append(buf)


SLOT_BUFFERS = SlotBuffers()
_NO_SLOTS = np.zeros(0, dtype=np.int64)

_COMPILED: dict[tuple[str | int, int], tuple[TraceMetadata, CompiledStream]] = {}


def _is_data_file(p: Path) -> bool:
    return p.is_file() and p.name != "metadata" and not p.name.startswith(".")


class CtfTrace:
    """One CTF trace directory (a `metadata` file and its stream files)."""

    def __init__(self, path: Path, metadata: TraceMetadata) -> None:
        self.path = path
        self.metadata = metadata
        self.env = metadata.env
        self.clocks = metadata.clocks
        self.compiled: dict[int, CompiledStream] = {}
        self.streams: list[StreamFile] = []
        self.notes: list[str] = []
        self.problems: list[str] = []  # decoding errors met (data skipped)
        self.time_notes: list[str] = []  # packets whose times are out of line (events left out)
        self.unreadable: list[str] = []  # stream files skipped whole (first packet header unreadable)
        self._maps: list[mmap.mmap] = []

    # --- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path) -> "CtfTrace":
        path = Path(path)
        mpath = path / "metadata"
        if not mpath.is_file():
            raise TraceError(path, f"no CTF metadata file")
        try:
            meta = read_metadata_file(mpath)
        except MetadataError as e:
            raise TraceError(mpath, f"{e}") from None
        except RecursionError:
            raise TraceError(mpath, f"metadata nesting too deep") from None
        t = cls(path, meta)
        for c in meta.clocks.values():
            if clock_offset_ns(c) is None:
                t.notes.append(f"{mpath}: clock {c.name!r} offset ({c.offset_s} s + {c.offset} cycles) is beyond "
                               f"the int64-nanosecond range: not used")
        for sid in meta.streams:  # compile every layout now: bad metadata fails here
            t._compiled(sid)
        t._open_streams()
        return t

    def _compiled(self, sid: int) -> CompiledStream:
        if sid not in self.compiled:
            sc = self.metadata.streams.get(sid)
            if sc is None:
                raise TraceError(self.path, f"packet of unknown stream class {sid}")
            try:
                # compiled decoders are shared by traces with the same layout (each trace's
                # metadata differs only in uuid, env and clocks, which decoding does not read)
                key = (self.metadata.layout or id(self.metadata), sid)
                with LAYOUT_LOCK:  # one thread compiles a layout, the others take it
                    if key not in _COMPILED or not (self.metadata.layout or _COMPILED[key][0] is self.metadata):
                        if len(_COMPILED) >= 64:
                            _COMPILED.pop(next(iter(_COMPILED)))
                        _COMPILED[key] = (self.metadata, compile_stream(self.metadata, sc))
                    self.compiled[sid] = _COMPILED[key][1]
            except MetadataError as e:
                raise TraceError(self.path / 'metadata', f"{e}") from None
            except RecursionError:
                raise TraceError(self.path / 'metadata', f"metadata nesting too deep") from None
        return self.compiled[sid]

    def _open_streams(self) -> None:
        if not self.metadata.streams:
            raise TraceError(self.path / 'metadata', f"no stream class")
        files = sorted((p for p in self.path.iterdir() if _is_data_file(p)), key=lambda p: p.name)
        unreadable: list[TraceError] = []
        for p in files:
            size = p.stat().st_size
            if size == 0:
                continue
            with open(p, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps.append(mm)
            data = np.frombuffer(mm, dtype=np.uint8)
            try:
                sid = self._first_stream_id(p, data)
                cs = self._compiled(sid)
            except TraceError as e:
                # one stream file that cannot be read does not take the others down
                unreadable.append(TraceError(p, e.problem))
                continue
            self.streams.append(StreamFile(p, p.name, data, cs, mm=mm))
        if unreadable and not self.streams:
            first = unreadable[0]
            more = f" (and {len(unreadable) - 1} other stream files)" if len(unreadable) > 1 else ""
            raise TraceError(first.path, f"{first.problem}{more}")
        self.unreadable = [e.path for e in unreadable]
        for e in unreadable:
            self.notes.append(f"{e.path}: stream file skipped: {e.problem}")
        self._check_indexes()

    def _first_stream_id(self, p: Path, data: np.ndarray) -> int:
        """Stream class of a stream file, from its first packet header."""
        if len(self.metadata.streams) == 1:
            return next(iter(self.metadata.streams))
        # decode only the packet header with a throw-away compiled stream
        any_cs = self._compiled(next(iter(self.metadata.streams)))
        st = np.zeros(D.NST, dtype=np.int64)
        st[D.S_END] = len(data) * 8
        cap = (1 << 16) + any_cs.packet_k
        st[D.S_CAP] = cap
        st[D.S_ATOP] = any_cs.packet_k  # element slots after the record's own slots
        st[D.S_SID] = -1
        st[D.S_ZMAX] = D.ZERO_BIT_ELEMENTS
        buf = np.zeros(cap, dtype=np.int64)
        regs = np.zeros(any_cs.nregs, dtype=np.int64)
        stack = np.zeros(3 * (D.MAX_DEPTH + 8), dtype=np.int64)
        # the packet program starts with the trace packet header: run it until the context
        hdr_only = _header_only_ops(any_cs)
        status = kernels().run_program(hdr_only, any_cs.vtab, 0, 0, data, 0, st, buf, regs, stack)
        if status != D.OK:
            what = "header too large" if status == D.FULL else D.ERRORS.get(status, f"error {status}")
            raise TraceError(p, f"cannot read the first packet header ({what})")
        return int(st[D.S_SID]) if st[D.S_SID] >= 0 else 0

    def _check_indexes(self) -> None:
        """LTTng index files are optional: when present they are compared with the packets
        found in the stream (a mismatch is noted, the stream itself is authoritative)."""
        idir = self.path / "index"
        if not idir.is_dir():
            return
        for sf in self.streams:
            ip = idir / (sf.name + ".idx")
            if not ip.is_file():
                continue
            try:
                entries = read_index(ip)
            except ValueError as e:
                self.notes.append(f"{ip}: ignored ({e})")
                continue
            total = sum(e[1] for e in entries) // 8
            if total > len(sf.data):
                self.notes.append(f"{ip}: index describes {total} bytes, stream has {len(sf.data)}")

    def close(self) -> None:
        for s in self.streams:
            s.data = np.zeros(0, dtype=np.uint8)
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # arrays still refer to it; the GC closes it
        self._maps.clear()

    # --- decoding ------------------------------------------------------------------
    def clock_of(self, sf: StreamFile) -> Clock | None:
        name = sf.cs.clock
        return self.clocks.get(name) if name else None

    def chunks(self, sf: StreamFile, max_events: int = CHUNK_EVENTS,
               progress: Callable[[int], None] | None = None) -> Iterator[Chunk]:
        """Decode one stream file by chunks of at most `max_events` events. When packet times
        of the stream are out of line (`_time_windows`), events whose time lies outside what
        the in-line packet times around them allow are left out, counted in
        `sf.dropped_events` and described in `self.time_notes`."""
        windows = self._time_windows(sf)
        sf.dropped_events = 0
        dropped_at: dict[int, int] = {}
        for ch in self._decode(sf, max_events, progress, events=True):
            if windows:
                lo = np.array([windows.get(p.offset, _NO_WINDOW)[0] for p in sf.packets], dtype=np.int64)
                hi = np.array([windows.get(p.offset, _NO_WINDOW)[1] for p in sf.packets], dtype=np.int64)
                keep = (ch.ts >= lo[ch.pkt]) & (ch.ts <= hi[ch.pkt])
                if not keep.all():
                    out = ch.pkt[~keep]
                    for k, c in zip(*np.unique(out, return_counts=True)):
                        off = sf.packets[int(k)].offset
                        dropped_at[off] = dropped_at.get(off, 0) + int(c)
                    sf.dropped_events += int(out.size)
                    if not keep.any():
                        continue
                    ch = Chunk(sf, ch.ts[keep], ch.cls[keep], ch.pkt[keep], ch.base[keep], ch.buf)
            yield ch
        if dropped_at:
            where = ", ".join(f"{n} at byte {o}" for o, n in sorted(dropped_at.items())[:5])
            self.time_notes.append(
                f"{sf.path}: {sf.dropped_events} events left out, their times out of line with the packets "
                f"around them (a damaged packet timestamp): {where}{' …' if len(dropped_at) > 5 else ''}")

    def _decode(self, sf: StreamFile, max_events: int, progress: Callable[[int], None] | None,
                events: bool) -> Iterator[Chunk]:
        """The decoding loop of a stream file: chunks of events (events=True), or only its
        packets' headers and contexts into sf.packets (events=False: no chunk, no report)."""
        cs = sf.cs
        st = np.zeros(D.NST, dtype=np.int64)
        st[D.S_WANTSID] = cs.sclass.id if len(self.metadata.streams) > 1 else -1
        st[D.S_SKIPEV] = 0 if events else 1
        regs = np.zeros(cs.nregs, dtype=np.int64)
        stack = np.zeros(3 * (D.MAX_DEPTH + 8), dtype=np.int64)
        cap = max(1 << 16, max_events * 24)
        maxev = max_events
        maxpk = 4096
        clock = self.clock_of(sf)
        sf.packets = []
        last_p = 0
        n = len(sf.data)
        magic = _magic_bytes(self.metadata) if events else None
        while True:
            buf = SLOT_BUFFERS.take(cap) if events else np.empty(cap, dtype=np.int64)
            ev_class = np.empty(maxev, dtype=np.int32)
            ev_ts = np.empty(maxev, dtype=np.int64)
            ev_base = np.empty(maxev, dtype=np.int64)
            ev_pkt = np.empty(maxev, dtype=np.int64)
            pkt_base = np.empty(maxpk, dtype=np.int64)
            pkt_off = np.empty(maxpk, dtype=np.int64)
            pkt_size = np.empty(maxpk, dtype=np.int64)
            pkt_csize = np.empty(maxpk, dtype=np.int64)
            st[D.S_ATOP] = 0
            st[D.S_CAP] = cap
            status, nev, npk = kernels().decode_stream(sf.data, cs.ops, cs.vtab, cs.entries, cs.class_ids, cs.class_index,
                                               cs.class_k, st, buf, regs, stack, ev_class, ev_ts,
                                               ev_base, ev_pkt, pkt_base, pkt_off, pkt_size, pkt_csize)
            self._packets(sf, buf, pkt_base[:npk], pkt_off[:npk], pkt_size[:npk], pkt_csize[:npk])
            if not events:
                if status == D.FULL:
                    if npk == 0:
                        cap *= 4  # a packet record larger than the buffer
                        if cap > (n * 8 + (1 << 20)) * 4:
                            return
                    continue
                if status == D.DONE or st[D.S_PHASE] != 0:
                    return
                if status == D.E_SID:
                    st[D.S_P] = st[D.S_PKTEND]
                    continue
                # a packet whose header or sizes are bad: on to the next one, if it can be found
                nxt = _next_packet(sf, int(st[D.S_P]), _magic_bytes(self.metadata))
                if nxt is None:
                    return
                st[D.S_P] = nxt
                continue
            if progress is not None:
                now = int(st[D.S_P]) if status != D.DONE else n
                progress(max(0, now - last_p))
                last_p = now
            if nev:
                yield Chunk(sf, clock_ns(ev_ts[:nev], clock), ev_class[:nev], ev_pkt[:nev],
                            ev_base[:nev], buf)
            if status == D.DONE:
                return
            if status == D.FULL:
                if nev == 0 and npk == 0:
                    # one event (or packet record) larger than the buffer: grow it, up to what
                    # one packet can need (a slot takes a bit, or is bounded by the zero-bit
                    # element budget)
                    bound = (4 * int(st[D.S_PSIZE]) if st[D.S_PHASE] == 1 else cs.packet_k) \
                        + 4 * D.ZERO_BIT_ELEMENTS + (1 << 20)
                    if cap >= bound:
                        sf.skipped_packets += 1
                        self._problem(sf, st, D.E_LEN, "rest of the packet skipped")
                        if st[D.S_PHASE] != 1:
                            return
                        st[D.S_P] = st[D.S_PKTEND]
                        st[D.S_PHASE] = 0
                        continue
                    cap = min(cap * 4, bound)
                continue
            # a decoding error
            sf.skipped_packets += 1
            if st[D.S_PHASE] == 1:
                # the packet's size is known: skip the rest of it, go on with the next
                self._problem(sf, st, status, "rest of the packet skipped")
                st[D.S_P] = st[D.S_PKTEND]
                st[D.S_PHASE] = 0
                continue
            if status == D.E_SID:
                self._problem(sf, st, status, "packet skipped")
                st[D.S_P] = st[D.S_PKTEND]  # its sizes were read: skip the whole packet
                continue
            # the packet's header or sizes are bad: resume at the next packet if it can be found
            bad_p = int(st[D.S_P])
            nxt = _next_packet(sf, bad_p, magic)
            if nxt is None:
                self._problem(sf, st, status, "rest of the stream skipped")
                return
            self._problem(sf, st, status, f"bytes {bad_p}..{nxt - 1} skipped, resumed at the next packet")
            st[D.S_P] = nxt

    def _time_windows(self, sf: StreamFile) -> dict[int, tuple[int, int]]:
        """When some packet begin/end times of a stream are out of line with their
        neighbours' (`time_outliers`: a flipped bit in timestamp_begin or timestamp_end),
        the times (ns) each packet's events may have: from the in-line packet time at or
        before its begin to the one at or after its end, with `OUT_OF_LINE_S` of slack.
        Empty when every packet time is in line (then no event is checked).

        Out-of-line times are noted and not used (lost-event records). The events they moved
        (an event takes its time from timestamp_begin until a full timestamp comes) are left
        out rather than clamped: a clamped time would put all of them at one made-up instant,
        wrong for every latency and ordering built on them; left out, they are counted and
        reported, and the store's time range stays the one of the good data. Events with
        their own full timestamps (most kernel events) keep their place. Read from a pass over
        the packet headers only (per packet, not per event)."""
        pf = sf.cs.packet_fields
        sf.bad_times = set()
        if "default-clock-timestamp" not in pf:
            return {}
        list(self._decode(sf, 1, None, events=False))
        packets = list(sf.packets)
        if len(packets) < 2:
            return {}
        clock = self.clock_of(sf)
        freq = clock.freq if clock else 1_000_000_000
        points: list[int] = []
        where: list[tuple[int, bool]] = []  # (packet index, is begin)
        for i, p in enumerate(packets):
            for v, is_begin in ((p.ts_begin, True), (p.ts_end, False)):
                if v:  # absent or 0 (never written, e.g. a packet not closed): no time
                    points.append(v)
                    where.append((i, is_begin))
        bad = set(time_outliers(points, OUT_OF_LINE_S * freq, FAR_S * freq))
        if not bad:
            return {}
        sf.bad_times = {packets[where[j][0]].offset for j in bad}
        flagged = sorted((packets[where[j][0]].offset, "begin" if where[j][1] else "end") for j in bad)
        self.time_notes.append(
            f"{sf.path}: {len(flagged)} packet time(s) out of line with the neighbouring packets, not used: "
            + ", ".join(f"{w} of the packet at byte {o}" for o, w in flagged[:5]) + (" …" if len(flagged) > 5 else ""))
        # the in-line time at or before each packet's begin, at or after its end
        # (a packet without one of its times: the in-line time before / after the packet)
        lo: list[int | None] = [None] * len(packets)
        hi: list[int | None] = [None] * len(packets)
        has_begin = {i for i, b in where if b}
        has_end = {i for i, b in where if not b}
        last = None
        for j, (i, is_begin) in enumerate(where):
            if is_begin or i not in has_begin:
                lo[i] = last if (not is_begin or j in bad) else points[j]
            if j not in bad:
                last = points[j]
        last = None
        for j in range(len(points) - 1, -1, -1):
            i, is_begin = where[j]
            if not is_begin or i not in has_end:
                hi[i] = last if (is_begin or j in bad) else points[j]
            if j not in bad:
                last = points[j]
        slack = OUT_OF_LINE_S * 1_000_000_000
        windows = {}
        for i, p in enumerate(packets):
            a = int(clock_ns(np.array([lo[i]], dtype=np.uint64), clock)[0]) - slack if lo[i] is not None else _NO_WINDOW[0]
            b = int(clock_ns(np.array([hi[i]], dtype=np.uint64), clock)[0]) + slack if hi[i] is not None else _NO_WINDOW[1]
            windows[p.offset] = (max(a, _NO_WINDOW[0]), min(b, _NO_WINDOW[1]))
        return windows

    def _problem(self, sf: StreamFile, st: np.ndarray, status: int, then: str = "rest of the stream skipped") -> None:
        what = D.ERRORS.get(status, f"decoding error {status}")
        if status in (D.E_EVID, D.E_VARIANT, D.E_LEN, D.E_MAGIC, D.E_PSIZE, D.E_CSIZE, D.E_SID, D.E_ZWORK):
            v = int(st[D.S_ERRV])
            what += f" ({v if v >= 0 or status not in (D.E_LEN, D.E_PSIZE, D.E_CSIZE) else v + (1 << 64)})"
        elif status == D.E_PEND:
            v = int(st[D.S_ERRV]) & 0xFFFFFFFFFFFFFFFF
            what += f" ({v} bits, {len(sf.data) - int(st[D.S_P])} bytes left)"
        msg = f"{sf.path}: packet at byte {int(st[D.S_P])}: {what}; {then}"
        if sf.error is None:
            sf.error = msg
        self.problems.append(msg)

    def _packets(self, sf: StreamFile, buf: np.ndarray, bases: np.ndarray, offs: np.ndarray,
                 sizes: np.ndarray, csizes: np.ndarray) -> None:
        pf = sf.cs.packet_fields

        def get(key: str, i: int, bits: bool = False) -> int | None:
            if key not in pf:
                return None
            slot, it = pf[key]
            v = int(buf[bases[i] + slot])
            # clock values and counters are bit patterns, whatever the metadata says
            return v & 0xFFFFFFFFFFFFFFFF if bits or not it.signed else v

        for i in range(len(bases)):
            cpu = get("cpu_id", i)
            sf.packets.append(Packet(int(offs[i]), int(sizes[i]), int(csizes[i]),
                                     get("default-clock-timestamp", i, True),
                                     get("packet-end-default-clock-timestamp", i, True),
                                     get("discarded-event-record-counter-snapshot", i, True),
                                     cpu if cpu is not None and 0 <= cpu < 1 << 31 else None,
                                     get("packet_seq_num", i)))

    def lost(self) -> list[tuple[str, int | None, int | None, int | None, int]]:
        """(stream, cpu, ts_begin ns, ts_end ns, count) per packet with discarded events,
        from the packets decoded so far (call after reading)."""
        out = []
        for sf in self.streams:
            clock = self.clock_of(sf)
            prev = 0
            prev_end: int | None = None
            for p in sf.packets:
                if p.discarded is None:
                    continue
                # a packet time out of line (time_outliers) is not used
                begin = p.ts_begin if p.offset not in sf.bad_times else None
                end = p.ts_end if p.offset not in sf.bad_times else None
                n = (p.discarded - prev) & 0xFFFFFFFFFFFFFFFF
                if n and n < 1 << 63:
                    b = prev_end if prev_end is not None else begin
                    tb = int(clock_ns(np.array([b], dtype=np.uint64), clock)[0]) if b is not None else None
                    te = int(clock_ns(np.array([end], dtype=np.uint64), clock)[0]) if end is not None else None
                    out.append((sf.name, p.cpu, tb, te, n))
                prev = p.discarded
                prev_end = end
        return out

    # --- typed batches (the lower-level API) -----------------------------------------
    def batches(self, max_events: int = CHUNK_EVENTS) -> Iterator[tuple[str, pa.RecordBatch]]:
        """(event class name, batch) with `ts` and the typed fields (contexts + payload) of
        that class, stream by stream, in each stream's order. Analyses that need only some
        classes read these instead of JSON."""
        # the next chunk is decoded by a worker thread (the decoder releases the GIL) while
        # the columns of the current one are gathered
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctf") as pool:
            yield from self._batches(prefetched(pool, (ch for sf in self.streams
                                                       for ch in self.chunks(sf, max_events))))

    def _batches(self, chunks: Iterator[Chunk]) -> Iterator[tuple[str, pa.RecordBatch]]:
        for ch in chunks:
            sf = ch.stream
            cpus = _packet_values(sf, "cpu")
            # each event's CPU (from its packet) once per chunk, not once per class
            cpu_of = cpus[ch.pkt].astype(np.int32) if len(cpus) and not (cpus < 0).all() else None
            unknown = cpu_of is not None and bool((cpu_of < 0).any())
            if not len(ch):
                SLOT_BUFFERS.give(ch.buf)
                continue
            # ts and cpu in class order once per chunk; each class's are slices of them
            order, bounds = ch.by_class()
            ts_all = pa.array(ch.ts[order])
            if cpu_of is None:
                cpu_all = pa.nulls(len(order), pa.int32())
            else:
                v = cpu_of[order]
                cpu_all = pa.array(v, mask=v < 0 if unknown else None)
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                rows = order[a:b]
                ci = int(ch.cls[rows[0]])
                _, arrays, _ = ch.columns(ci, rows)
                batch = pa.RecordBatch.from_arrays(
                    [ts_all.slice(a, b - a), cpu_all.slice(a, b - a), *arrays],
                    names=["ts", "cpu", *sf.cs.classes[ci].plan.unique_names])
                yield sf.cs.classes[ci].cls.name, batch
            SLOT_BUFFERS.give(ch.buf)  # every column above is a copy: the next chunk decodes into it
            ch.buf = _NO_SLOTS


def prefetched(pool: ThreadPoolExecutor, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """`chunks`, the next one computed by `pool` while the caller uses the current one (the
    first one is started now, not at the first next())."""
    first = pool.submit(next, chunks, None)

    def gen() -> Iterator[Chunk]:
        nxt = first
        while True:
            ch = nxt.result()
            if ch is None:
                return
            nxt = pool.submit(next, chunks, None)
            yield ch
    return gen()


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}.{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def _packet_values(sf: StreamFile, attr: str) -> np.ndarray:
    return np.array([getattr(p, attr) if getattr(p, attr) is not None else -1 for p in sf.packets],
                    dtype=np.int64)


def _magic_bytes(meta: TraceMetadata) -> bytes | None:
    """The packet magic number as it is written in the stream files, if the packet header
    has one: what finds the next packet after a damaged one."""
    hdr = meta.packet_header
    if hdr is None:
        return None
    for name, t in hdr.fields:
        it = t.int_type if isinstance(t, EnumType) else t
        if isinstance(it, IntType) and it.size == 32 and (name == "magic" or "packet-magic-number" in it.roles):
            return D.CTF_MAGIC.to_bytes(4, "big" if it.byte_order == BE else "little")
    return None


def _next_packet(sf: StreamFile, at: int, magic: bytes | None) -> int | None:
    """Where the packet after a damaged one at byte `at` starts: where the stream's other
    packets (all of one size, as LTTng writes them) put it if a magic is there, else the next
    magic number in the file; None when there is none (or no magic to look for)."""
    if magic is None or sf.mm is None:
        return None
    n = len(sf.data)
    sizes = {p.size_bits // 8 for p in sf.packets if p.offset < at and p.offset + p.size_bits // 8 <= n}
    if len(sizes) == 1:
        q = at + sizes.pop()
        if q + 4 <= n and sf.mm[q:q + 4] == magic:  # type: ignore[index]
            return q
    q = sf.mm.find(magic, at + 1)  # type: ignore[attr-defined]
    return q if q > at else None


_NO_WINDOW = (-(1 << 63), (1 << 63) - 1)
OUT_OF_LINE_S = 1  # a packet time this far (seconds) out of its place among its neighbours
FAR_S = 30 * 86400  # or this far from the stream's median packet time


def time_outliers(points: list[int], tol: int, far: int) -> list[int]:
    """Positions of the values out of line in a sequence that should not decrease (packet
    begin/end times of one stream, in file order): the values left out of a longest
    non-decreasing subsequence that lie more than `tol` outside the place it leaves them
    (between the kept values before and after), and any value more than `far` from the
    median (a jump by years at either end of the stream). One flipped bit in a packet
    timestamp makes exactly that value out of line. O(n log n), n = packets."""
    import bisect
    m = len(points)
    if m < 3:
        return []
    tails: list[int] = []
    tail_at: list[int] = []
    prev = [-1] * m
    for i, v in enumerate(points):
        k = bisect.bisect_right(tails, v)
        if k == len(tails):
            tails.append(v)
            tail_at.append(i)
        else:
            tails[k] = v
            tail_at[k] = i
        prev[i] = tail_at[k - 1] if k > 0 else -1
    kept = [False] * m
    i = tail_at[-1]
    while i >= 0:
        kept[i] = True
        i = prev[i]
    before = [None] * m  # nearest kept value before / after each position
    after = [None] * m
    last = None
    for i in range(m):
        before[i] = last
        if kept[i]:
            last = points[i]
    last = None
    for i in range(m - 1, -1, -1):
        after[i] = last
        if kept[i]:
            last = points[i]
    median = sorted(points)[m // 2]
    out = []
    for i, v in enumerate(points):
        if abs(v - median) > far:
            out.append(i)
        elif not kept[i] and ((before[i] is not None and v < before[i] - tol)
                              or (after[i] is not None and v > after[i] + tol)):
            out.append(i)
    return out


def _header_only_ops(cs: CompiledStream) -> np.ndarray:
    """The packet program cut after the trace packet header (to find the stream class)."""
    ops = cs.ops.copy()
    n_hdr = 0
    node = cs.packet
    if node.children and node.children[0][0] == "packet.header":
        # count the ops belonging to the header: they precede the first op of the context
        pass
    # simplest correct approach: run the whole packet program but without the packet
    # context is not possible in general; instead stop at the first op that writes a slot
    # of the context, i.e. the first op whose slot >= number of header slots.
    hdr_slots = _count_slots(node.children[0][1]) if node.children and node.children[0][0] == "packet.header" else 0
    for i in range(len(ops)):
        if ops[i, 0] == D.OP_END:
            break
        if ops[i, 0] in (D.OP_INT, D.OP_FLOAT, D.OP_STRING, D.OP_CHARS, D.OP_LOOP, D.OP_VARIANT,
                         D.OP_BLOB, D.OP_OPT) and ops[i, 1] >= hdr_slots and not _inside_loop(ops, i):
            ops[i, 0] = D.OP_END
            break
        n_hdr += 1
    return ops


def _inside_loop(ops: np.ndarray, i: int) -> bool:
    depth = 0
    for j in range(i):
        if ops[j, 0] == D.OP_LOOP:
            depth += 1
        elif ops[j, 0] == D.OP_LOOP_END:
            depth -= 1
    return depth > 0


def _count_slots(node: D.Node) -> int:
    if node.kind == "struct":
        return sum(_count_slots(c) for _, c in node.children)
    if node.kind in ("string", "list"):
        return 2
    if node.kind in ("variant", "optional"):
        return 1 + sum(_count_slots(c) for _, c in node.children)
    return 1


def read_index(path: Path) -> list[tuple[int, ...]]:
    """Entries of an LTTng index file: (offset, packet_size bits, content_size bits,
    ts_begin, ts_end, events_discarded, stream_id, …)."""
    raw = path.read_bytes()
    if len(raw) < 16:
        raise ValueError("truncated index header")
    magic, major, minor, elen = struct.unpack_from(">IIII", raw, 0)
    if magic != INDEX_MAGIC:
        raise ValueError(f"bad index magic 0x{magic:08x}")
    if elen < 56 or elen > 4096:
        raise ValueError(f"bad index entry length {elen}")
    out = []
    for pos in range(16, len(raw) - elen + 1, elen):
        out.append(struct.unpack_from(">7Q", raw, pos))
    return out


@dataclass
class Part:
    """Rows [first, end) of a chunk, with their merge keys, taken by one merge step."""

    rank: int  # stream rank: ties on the key go to the lower rank
    chunk: Chunk
    first: int
    end: int
    keys: np.ndarray


def merge(chunk_iters: list[Iterator[Chunk]]) -> Iterator[list[Part]]:
    """Merge the chunks of several streams by timestamp.

    Each step yields the parts whose rows, ordered by (key, rank) with `merged_order`, come
    next in the merged order. The merge key is the running maximum of a stream's timestamps,
    so that a stream whose timestamps go back (old LTTng traces) is still read whole, in its
    own order. At most one chunk per stream is held at a time."""
    n = len(chunk_iters)
    pend: list[tuple[Chunk, np.ndarray, int] | None] = [None] * n
    runmax = [np.iinfo(np.int64).min] * n

    def refill(i: int) -> bool:
        for ch in chunk_iters[i]:
            if len(ch) == 0:
                continue
            keys = np.maximum.accumulate(np.maximum(ch.ts, runmax[i]))
            runmax[i] = int(keys[-1])
            pend[i] = (ch, keys, 0)
            return True
        pend[i] = None
        return False

    live = [i for i in range(n) if refill(i)]
    while live:
        frontier = min(int(pend[i][1][-1]) for i in live)  # type: ignore[index]
        parts = []
        for i in live:
            ch, keys, first = pend[i]  # type: ignore[misc]
            end = first + int(np.searchsorted(keys[first:], frontier, side="right"))
            if end > first:
                parts.append(Part(i, ch, first, end, keys[first:end]))
                pend[i] = (ch, keys, end)
        yield parts
        live = [i for i in live if pend[i][2] < len(pend[i][1]) or refill(i)]  # type: ignore[index]


def merged_order(parts: list[Part]) -> np.ndarray:
    """Permutation of the concatenated parts' rows into merged order (stable): by key, ties
    to the lower rank. `merge` lists a step's parts by ascending rank, so a stable sort of the
    keys alone keeps ties in rank order (no rank array, one key to sort: NumPy's stable sort
    merges the already sorted runs)."""
    if len(parts) == 1:
        return np.arange(parts[0].end - parts[0].first)
    keys = np.concatenate([p.keys for p in parts])
    if all(a.rank < b.rank for a, b in zip(parts, parts[1:])):
        return np.argsort(keys, kind="stable")
    ranks = np.concatenate([np.full(p.end - p.first, p.rank, dtype=np.int32) for p in parts])
    return np.lexsort((ranks, keys))
