"""Compiled decoding of CTF streams.

Each layout (packet header + context, event header, stream event context, and every event
class) is compiled once into a small program of fixed-width instructions (`OPW` int64
words each). One compiled loop (`kernels.decode_stream`) walks the packets of a stream file,
runs the programs and writes every decoded scalar into one int64 slot buffer: an event is a
record of slots at `ev_base[i]`, arrays/sequences put their elements further in the same
buffer. Nothing per event is a Python object; columns are then gathered per event class
with NumPy (`build_columns`).

Compiled code never trusts input. What comes from the metadata is checked once when a
layout is compiled (`_Compiler`): alignments are powers of two up to `MAX_ALIGN` bits,
integer sizes 1..64, floats 32/64, array and BLOB lengths at most `MAX_LENGTH`, enumeration
and selector ranges inside int64, nesting at most `MAX_DEPTH`, so that the kernel's bit
arithmetic cannot overflow. What comes from the data is checked by the kernel before use:
packet and content sizes against the file, every read against the packet's content size,
array/sequence/string lengths against the bits left in the packet (by division, never a
product that could wrap), slot space against the buffer, iterations of elements that take
no bits against a budget (`S_ZMAX`), and an event that takes no bits is an error (the stream
could not advance). Corrupt data yields an error code, never an out-of-bounds access, an
unbounded allocation or an endless loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .types import (BE, ArrayType, BlobType, CtfType, EnumType, EventClass, FloatType, IntType,
                    OptionalType, SequenceType, StreamClass, StringType, StructType,
                    TraceMetadata, VariantType)
from .compiled import kernels
from .tsdl import MetadataError, strip_underscore

from .isa import *  # noqa: F403 (the instruction set, state, status codes and limits)


# --- layout nodes (how slots map back to values) ---------------------------------------
@dataclass
class Node:
    kind: str  # int, enum, float, string, blob, struct, list, variant, optional
    slot: int = 0
    type: object = None
    children: list[tuple[str, "Node"]] = field(default_factory=list)
    elem_k: int = 0  # list: slots per element


@dataclass
class CompiledClass:
    cls: EventClass
    index: int
    entry: int
    k: int  # slots of context + payload
    context: Node | None
    payload: Node | None
    plan: object = field(default=None, repr=False, compare=False)  # streams.ColumnPlan, made at first use


@dataclass
class CompiledStream:
    """Everything `decode_stream` needs for one stream class."""

    sclass: StreamClass
    ops: np.ndarray
    vtab: np.ndarray
    entries: np.ndarray
    class_ids: np.ndarray
    class_k: np.ndarray
    nregs: int
    packet: Node  # packet header + context (slots of pkt_rec)
    packet_k: int
    header: Node | None
    stream_ctx: Node | None
    kh: int
    classes: list[CompiledClass]
    packet_fields: dict[str, tuple[int, IntType]]  # role/name -> (slot, type) in pkt_rec
    clock: str | None
    class_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # id -> class (small ids)


SCOPES = {
    ("trace", "packet", "header"): "trace.packet.header",
    ("stream", "packet", "context"): "stream.packet.context",
    ("stream", "event", "header"): "stream.event.header",
    ("stream", "event", "context"): "stream.event.context",
    ("event", "context"): "event.context",
    ("event", "fields"): "event.fields",
}


class _Compiler:
    def __init__(self, meta: TraceMetadata) -> None:
        self.meta = meta
        self.ops: list[list[int]] = []
        self.vtab: list[list[int]] = []
        self.nregs = 0
        self.symbols: dict[tuple[str, ...], tuple[int, CtfType]] = {}
        self.root = ""
        self.clock_names = set(meta.clocks)

    def emit(self, *words: int) -> int:
        w = list(words) + [0] * (OPW - len(words))
        self.ops.append(w)
        return len(self.ops) - 1

    # Resolution of a length/selector path, relative (searched outwards) or absolute.
    def resolve(self, ref: tuple[str, ...], path: list[str]) -> tuple[int, CtfType]:
        for n in (3, 2):
            if tuple(ref[:n]) in SCOPES:
                key = (SCOPES[tuple(ref[:n])], *ref[n:])
                if key in self.symbols:
                    return self.symbols[key]
                raise MetadataError(f"field {'.'.join(ref)!r} not found")
        for k in range(len(path), 0, -1):
            key = (*path[:k], *ref)
            if key in self.symbols:
                return self.symbols[key]
        raise MetadataError(f"field {'.'.join(ref)!r} not found")

    def compile(self, t: CtfType, path: list[str], alloc: list[int], flags_of=None) -> Node:
        """Emit ops for `t`; slots come from alloc[0] (a counter for the enclosing record).
        Every size, alignment and length the kernel will use is checked here (see the
        module docstring): metadata cannot make compiled code overflow."""
        if len(path) > MAX_DEPTH:
            raise MetadataError(f"metadata nesting too deep (more than {MAX_DEPTH} levels at {_where(path)})")
        if isinstance(t, (IntType, EnumType)):
            it = t.int_type if isinstance(t, EnumType) else t
            if not isinstance(it, IntType) or not isinstance(it.size, int) or not 1 <= it.size <= 64:
                raise MetadataError(f"integer {_where(path)} has size {getattr(it, 'size', None)} (1..64 bits)")
            _check_align(it.align, path)
            slot = alloc[0]
            alloc[0] += 1
            reg = self.nregs
            self.nregs += 1
            self.symbols[tuple(path)] = (reg, t)
            flags = (F_SIGNED if it.signed else 0) | (F_BE if it.byte_order == BE else 0)
            if flags_of is not None:
                flags |= flags_of(path, it)
            self.emit(OP_INT, slot, it.size, flags, it.align, reg)
            return Node("enum" if isinstance(t, EnumType) else "int", slot, t)
        if isinstance(t, FloatType):
            slot = alloc[0]
            alloc[0] += 1
            if t.size not in (32, 64):
                raise MetadataError(f"unsupported floating point size {t.size}")
            _check_align(t.align, path)
            self.emit(OP_FLOAT, slot, t.size, F_BE if t.byte_order == BE else 0, t.align)
            return Node("float", slot, t)
        if isinstance(t, StringType):
            slot = alloc[0]
            alloc[0] += 2
            self.emit(OP_STRING, slot)
            return Node("string", slot, t)
        if isinstance(t, BlobType):
            _check_length(t.length, path)
            _check_align(t.align, path)
            if t.align > 8:
                self.emit(OP_ALIGN, t.align)
            slot = alloc[0]
            alloc[0] += 1
            self.emit(OP_BLOB, slot, t.length)
            return Node("blob", slot, t)
        if isinstance(t, StructType):
            self.symbols[tuple(path)] = (-1, t)
            _check_align(t.min_align, path)
            for name, ft in t.fields:
                _check_align(ft.align, [*path, name])
            # a first member read by one instruction that aligns itself takes the struct's
            # alignment too (both are powers of two): one instruction less per record
            fold = t.align > 1 and bool(t.fields) and isinstance(t.fields[0][1], (IntType, EnumType, FloatType))
            if t.align > 1 and not fold:
                self.emit(OP_ALIGN, t.align)
            node = Node("struct", 0, t)
            for i, (name, ft) in enumerate(t.fields):
                at = len(self.ops)
                node.children.append((name, self.compile(ft, [*path, name], alloc, flags_of)))
                if i == 0 and fold:
                    assert self.ops[at][0] in (OP_INT, OP_FLOAT)
                    self.ops[at][4] = max(self.ops[at][4], t.align)
            return node
        if isinstance(t, (ArrayType, SequenceType)):
            el = t.element
            reg = -1
            if isinstance(t, SequenceType):
                reg, lt = self.resolve(t.length_ref, path[:-1])
                lit = lt.int_type if isinstance(lt, EnumType) else lt
                if reg < 0 or not isinstance(lit, IntType) or lit.signed:
                    raise MetadataError(f"sequence length {'.'.join(t.length_ref)!r} is not an unsigned integer")
            if isinstance(t, ArrayType):
                _check_length(t.length, path)
            _check_align(el.align, path)
            n = t.length if isinstance(t, ArrayType) else -1
            if isinstance(el, IntType) and el.encoding and el.size == 8 and el.align % 8 == 0:
                slot = alloc[0]
                alloc[0] += 2
                self.emit(OP_CHARS, slot, n, reg, el.align)
                return Node("string", slot, t)
            slot = alloc[0]
            alloc[0] += 2
            at = self.emit(OP_LOOP, slot, n, reg, 0, 0, 0, el.align)
            ealloc = [0]
            child = self.compile(el, [*path, "[]"], ealloc, flags_of)
            self.emit(OP_LOOP_END, at)
            self.ops[at][4] = ealloc[0]
            self.ops[at][5] = len(self.ops)
            self.ops[at][6] = _min_bits(el)
            return Node("list", slot, t, [("", child)], ealloc[0])
        if isinstance(t, VariantType):
            reg, tt = self.resolve(t.tag_ref, path[:-1])
            if reg < 0:
                raise MetadataError(f"variant selector {'.'.join(t.tag_ref)!r} is not an integer or enumeration")
            slot = alloc[0]
            alloc[0] += 1
            at = self.emit(OP_VARIANT, slot, reg, 0, 0)
            if t.option_ranges is None:
                if not isinstance(tt, EnumType):
                    raise MetadataError(f"variant selector {'.'.join(t.tag_ref)!r} is not an enumeration")
                ranges: list[tuple[int, int, int]] = []
                names = [o for o, _ in t.options]
                for label, lo, hi in tt.mappings:
                    k = _match_option(label, names)
                    if k >= 0:
                        ranges.append((lo, hi, k))
            else:
                if not isinstance(tt, (IntType, EnumType)):
                    raise MetadataError(f"variant selector {'.'.join(t.tag_ref)!r} is not an integer")
                ranges = [(lo, hi, k) for k, rs in enumerate(t.option_ranges) for lo, hi in rs]
            node = Node("variant", slot, t)
            targets = []
            jumps = []
            for name, ot in t.options:
                targets.append(len(self.ops))
                node.children.append((name, self.compile(ot, [*path, name], alloc, flags_of)))
                jumps.append(self.emit(OP_JUMP, 0))
            end = len(self.ops)
            for j in jumps:
                self.ops[j][1] = end
            t0 = len(self.vtab)
            sel_int = tt.int_type if isinstance(tt, EnumType) else tt
            for lo, hi, k in ranges:
                for a, b in _int64_ranges(lo, hi, getattr(sel_int, "signed", True)):
                    self.vtab.append([a, b, targets[k], k])
            self.ops[at][3] = t0
            self.ops[at][4] = len(self.vtab) - t0
            return node
        if isinstance(t, OptionalType):
            reg, st_ = self.resolve(t.selector_ref, path[:-1])
            if reg < 0:
                raise MetadataError(f"optional selector {'.'.join(t.selector_ref)!r} is not an integer")
            slot = alloc[0]
            alloc[0] += 1
            t0 = len(self.vtab)
            n = -1
            if t.ranges is not None:
                sel_int = st_.int_type if isinstance(st_, EnumType) else st_
                for lo, hi in t.ranges:
                    for a, b in _int64_ranges(lo, hi, getattr(sel_int, "signed", True)):
                        self.vtab.append([a, b, 0, 0])
                n = len(self.vtab) - t0
            at = self.emit(OP_OPT, slot, reg, t0, n, 0)
            child = self.compile(t.element, [*path, ""], alloc, flags_of)
            self.ops[at][5] = len(self.ops)
            return Node("optional", slot, t, [("", child)])
        raise MetadataError(f"unsupported type {type(t).__name__}")

    def thread_jumps(self) -> None:
        """A jump to the end of a program (after a variant's last member) becomes that end."""
        for w in self.ops:
            if w[0] == OP_JUMP:
                target, hops = w[1], 0
                while self.ops[target][0] == OP_JUMP and hops < len(self.ops):
                    target, hops = self.ops[target][1], hops + 1
                if self.ops[target][0] == OP_END:
                    w[:] = [OP_END] + [0] * (OPW - 1)

    def program(self, t: StructType | None, root: str, alloc: list[int], flags_of=None) -> tuple[int, Node | None]:
        entry = len(self.ops)
        node = self.compile(t, [root], alloc, flags_of) if t is not None else None
        self.emit(OP_END)
        return entry, node


def _match_option(label: str, names: list[str]) -> int:
    """Variant option selected by an enum label (CTF 1.8: an option may carry one extra
    leading underscore that protects a reserved word)."""
    if label in names:
        return names.index(label)
    for i, n in enumerate(names):
        if n.startswith("_") and n[1:] == label:
            return i
    return -1


def _where(path: list[str]) -> str:
    return repr(".".join(p for p in path if p) or "?")


def _check_align(al: object, path: list[str]) -> None:
    """An alignment the kernel can use: a power of two up to MAX_ALIGN bits."""
    if not isinstance(al, int) or al < 1 or al & (al - 1) or al > MAX_ALIGN:
        raise MetadataError(f"alignment {al} of {_where(path)} is not a power of two up to {MAX_ALIGN} bits")


def _check_length(n: object, path: list[str]) -> None:
    if not isinstance(n, int) or not 0 <= n <= MAX_LENGTH:
        raise MetadataError(f"length {n} of {_where(path)} is not in 0..{MAX_LENGTH}")


def _int64_ranges(lo: int, hi: int, signed: bool) -> list[tuple[int, int]]:
    """A selector range [lo, hi] as int64 ranges of the values the kernel compares: it reads
    unsigned 64-bit integers as their int64 bit pattern, so [2^63, 2^64) is [-2^63, 0)."""
    if not isinstance(lo, int) or not isinstance(hi, int):
        raise MetadataError(f"bad selector range {lo!r}..{hi!r}")
    if signed:
        lo, hi = max(lo, -(1 << 63)), min(hi, (1 << 63) - 1)
        return [(lo, hi)] if lo <= hi else []
    lo, hi = max(lo, 0), min(hi, (1 << 64) - 1)
    if lo > hi:
        return []
    if hi < 1 << 63:
        return [(lo, hi)]
    if lo >= 1 << 63:
        return [(lo - (1 << 64), hi - (1 << 64))]
    return [(lo, (1 << 63) - 1), (-(1 << 63), hi - (1 << 64))]


def _min_bits(t: CtfType) -> int:
    """The fewest bits an element of type `t` takes (saturated at MAX_MIN_BITS): array and
    sequence lengths are checked against what is left of the packet with it."""
    if isinstance(t, (IntType, FloatType)):
        b = t.size
    elif isinstance(t, EnumType):
        b = t.int_type.size
    elif isinstance(t, StringType):
        b = 8
    elif isinstance(t, BlobType):
        b = t.length * 8
    elif isinstance(t, StructType):
        b = sum(_min_bits(f) for _, f in t.fields)
    elif isinstance(t, ArrayType):
        b = t.length * _min_bits(t.element)
    elif isinstance(t, VariantType):
        b = min((_min_bits(o) for _, o in t.options), default=0)
    else:
        b = 0  # sequences and optionals may be empty
    return min(b, MAX_MIN_BITS)


ROLE_BY_NAME = {
    "magic": "packet-magic-number", "stream_id": "data-stream-class-id",
    "packet_size": "packet-total-length", "content_size": "packet-content-length",
    "timestamp_begin": "default-clock-timestamp", "timestamp_end": "packet-end-default-clock-timestamp",
    "events_discarded": "discarded-event-record-counter-snapshot",
}


ROLE_NAMES = set(ROLE_BY_NAME.values())


def compile_stream(meta: TraceMetadata, sclass: StreamClass) -> CompiledStream:
    # ids are compared as int64 by the kernel
    if not 0 <= sclass.id < 1 << 63:
        raise MetadataError(f"stream class id {sclass.id} is not in 0..2^63-1")
    for eid in sclass.events:
        if not 0 <= eid < 1 << 63:
            raise MetadataError(f"event class id {eid} is not in 0..2^63-1")
    c = _Compiler(meta)
    single_clock = next(iter(meta.clocks)) if len(meta.clocks) == 1 else None
    clock_name = sclass.default_clock

    def role(path: list[str], it: IntType) -> str | None:
        if it.roles:
            for r in it.roles:
                if r in ROLE_NAMES:
                    return r
            return it.roles[0]
        if len(path) == 2:
            return ROLE_BY_NAME.get(path[1])
        return None

    def pkt_flags(path: list[str], it: IntType) -> int:
        nonlocal clock_name
        r = role(path, it)
        f = 0
        if path[0] == "trace.packet.header":
            if r == "packet-magic-number":
                f |= F_MAGIC
            elif r == "data-stream-class-id":
                f |= F_SID
        else:
            if r == "packet-total-length":
                f |= F_PSIZE
            elif r == "packet-content-length":
                f |= F_CSIZE
            elif r == "discarded-event-record-counter-snapshot":
                f |= F_DISC
            elif r == "default-clock-timestamp" and (it.clock or single_clock or meta.version == 2):
                f |= F_CLOCK
                clock_name = clock_name or it.clock or single_clock
        return f

    def hdr_flags(path: list[str], it: IntType) -> int:
        nonlocal clock_name
        f = 0
        name = path[-1]
        if it.roles:
            if "event-record-class-id" in it.roles:
                f |= F_ID
            if "default-clock-timestamp" in it.roles:
                f |= F_CLOCK
        else:
            if name == "id":
                f |= F_ID
            if it.clock or (name == "timestamp" and single_clock):
                f |= F_CLOCK
                clock_name = clock_name or it.clock or single_clock
        return f

    def ctx_flags(path: list[str], it: IntType) -> int:
        return 0  # clock-mapped payload integers do not move the stream clock (as babeltrace2)

    palloc = [0]
    e_pkt = len(c.ops)
    pnode = Node("struct", 0, None)
    if meta.packet_header is not None:
        pnode.children.append(("packet.header", c.compile(meta.packet_header, ["trace.packet.header"], palloc, pkt_flags)))
    if sclass.packet_context is not None:
        pnode.children.append(("packet.context", c.compile(sclass.packet_context, ["stream.packet.context"], palloc, pkt_flags)))
    c.emit(OP_END)
    halloc = [0]
    e_hdr, hnode = c.program(sclass.event_header, "stream.event.header", halloc, hdr_flags)
    e_sec, snode = c.program(sclass.event_context, "stream.event.context", halloc, ctx_flags)
    kh = halloc[0]
    classes: list[CompiledClass] = []
    entries = [e_pkt, e_hdr, e_sec]
    ks = [kh]
    saved = dict(c.symbols)
    ids = sorted(sclass.events)
    for i, eid in enumerate(ids):
        ev = sclass.events[eid]
        c.symbols = dict(saved)  # event scopes are private to each class
        alloc = [0]
        entry = len(c.ops)
        cnode = c.compile(ev.context, ["event.context"], alloc, ctx_flags) if ev.context else None
        pl = c.compile(ev.fields, ["event.fields"], alloc, ctx_flags) if ev.fields else None
        c.emit(OP_END)
        classes.append(CompiledClass(ev, i, entry, alloc[0], cnode, pl))
        entries.append(entry)
        ks.append(alloc[0])
    ks.append(max(palloc[0], 1))  # last: slots of the packet record
    c.thread_jumps()
    # slots of well-known packet fields, for packets/lost-event reporting
    pf: dict[str, tuple[int, IntType]] = {}
    for scope_name, n in pnode.children:
        for name, child in n.children:
            if child.kind in ("int", "enum"):
                it = child.type.int_type if isinstance(child.type, EnumType) else child.type
                key = (it.roles[0] if it.roles else ROLE_BY_NAME.get(name, name))
                pf.setdefault(key, (child.slot, it))
                pf.setdefault(name, (child.slot, it))
    if clock_name is None and meta.clocks:
        clock_name = single_clock
    return CompiledStream(sclass, np.array(c.ops, dtype=np.int64).reshape(-1, OPW),
                          np.array(c.vtab, dtype=np.int64).reshape(-1, 4), np.array(entries, dtype=np.int64),
                          np.array(ids, dtype=np.int64), np.array(ks, dtype=np.int64), max(c.nregs, 1),
                          pnode, max(palloc[0], 1), hnode, snode, kh, classes, pf, clock_name,
                          _class_index(ids))


def _class_index(ids: list[int]) -> np.ndarray:
    """id -> class position for ids below CLASS_TABLE (a lookup instead of a binary search
    per event); empty when an id is negative or larger."""
    if not ids or ids[0] < 0 or ids[-1] >= CLASS_TABLE:
        return np.zeros(0, np.int32)
    table = np.full(ids[-1] + 1, -1, np.int32)
    table[np.array(ids, dtype=np.int64)] = np.arange(len(ids), dtype=np.int32)
    return table


# --- from slots back to Arrow ------------------------------------------------------------
def member_names(names: list[str]) -> list[str]:
    """Names of structure members or variant options as shown: one leading underscore
    removed (CTF 1.8 §4) unless two would then be equal (those keep the name as written),
    and unique whatever the metadata (Arrow structures need unique names)."""
    shown = [strip_underscore(n) for n in names]
    if len(set(shown)) != len(shown):
        clash = {x for x in shown if shown.count(x) > 1}
        shown = [n if x in clash else x for n, x in zip(names, shown)]
        seen: dict[str, int] = {}
        for i, x in enumerate(shown):
            if x in seen:
                seen[x] += 1
                shown[i] = f"{x}.{seen[x]}"
            else:
                seen[x] = 0
    return shown


def _ints(buf: np.ndarray, idx: np.ndarray, t: IntType) -> pa.Array:
    v = buf[idx]
    if t.size == 64 and not t.signed:
        return pa.array(v.view(np.uint64))
    return pa.array(v)


def build(node: Node, buf: np.ndarray, idx: np.ndarray, data: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Arrow array of `node`'s values for the records whose slot base is `idx`."""
    k = node.kind
    mask = None if valid is None else ~valid
    if k in ("int", "enum"):
        it = node.type.int_type if isinstance(node.type, EnumType) else node.type
        v = buf[idx + node.slot]
        if it.size == 64 and not it.signed:
            return pa.array(v.view(np.uint64), mask=mask)
        return pa.array(v, mask=mask)
    if k == "float":
        v = buf[idx + node.slot]
        if node.type.size == 32:
            return pa.array(v.astype(np.uint32).view(np.float32), mask=mask)
        return pa.array(v.view(np.float64), mask=mask)
    if k == "string":
        starts = buf[idx + node.slot]
        lens = buf[idx + node.slot + 1]
        if valid is not None:
            lens = np.where(valid, lens, 0)
        return _strings(data, starts, lens, mask)
    if k == "blob":
        n = node.type.length
        starts = buf[idx + node.slot]
        if len(starts) == 0:
            return pa.array([], pa.string())
        gather = starts[:, None] + np.arange(n)[None, :]
        raw = data[np.clip(gather, 0, len(data) - 1)]
        hexs = [bytes(r).hex() for r in raw]
        return pa.array(hexs, mask=mask)
    if k == "struct":
        if not node.children:
            return pa.array([{}] * len(idx), pa.struct([]))  # rare: empty struct
        arrays = [build(c, buf, idx, data, valid) for _, c in node.children]
        names = member_names([n for n, _ in node.children])
        return pa.StructArray.from_arrays(arrays, names=names, mask=pa.array(mask) if mask is not None else None)
    if k == "list":
        starts = buf[idx + node.slot]
        counts = buf[idx + node.slot + 1]
        if valid is not None:
            counts = np.where(valid, counts, 0)
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        if total:
            # element i of row r lives at starts[r] + i * elem_k
            within = np.arange(total) - np.repeat(offsets[:-1], counts)
            cidx = np.repeat(starts, counts) + within * node.elem_k
        else:
            cidx = np.zeros(0, dtype=np.int64)
        child = build(node.children[0][1], buf, cidx, data)
        return pa.LargeListArray.from_arrays(pa.array(offsets), child, mask=pa.array(mask) if mask is not None else None)
    if k == "variant":
        sel = buf[idx + node.slot]
        arrays = []
        names = member_names([n for n, _ in node.children])
        for i, (n, c) in enumerate(node.children):
            ok = sel == i if valid is None else (sel == i) & valid
            arrays.append(build(c, buf, idx, data, ok))
        return pa.StructArray.from_arrays(arrays, names=names, mask=pa.array(mask) if mask is not None else None)
    if k == "optional":
        present = buf[idx + node.slot] != 0
        if valid is not None:
            present &= valid
        return build(node.children[0][1], buf, idx, data, present)
    raise ValueError(k)


def _strings(data: np.ndarray, starts: np.ndarray, lens: np.ndarray, mask: np.ndarray | None) -> pa.Array:
    n = len(starts)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    if total:
        chars = np.empty(total, dtype=np.uint8)
        if kernels().gather_strings(data, starts.astype(np.int64, copy=False), offsets, chars) >= 0:
            raise IndexError("a string slot points outside its stream's data")
    else:
        chars = np.zeros(0, dtype=np.uint8)
    validity = None
    if mask is not None and mask.any():
        validity = pa.array(~mask).buffers()[1]
        nulls = int(mask.sum())
    else:
        nulls = 0
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars),
                                           validity, nulls)
    # invalid UTF-8 bytes would make later consumers fail: replace them
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        py = [None if (mask is not None and mask[i]) else bytes(chars[offsets[i]:offsets[i + 1]]).decode("utf-8", "replace")
              for i in range(n)]
        arr = pa.array(py, pa.large_string())
    return arr
