"""Event-table rows of a decoded chunk, with the `fields` JSON written by compiled code.

Each event class of a compiled stream gets a small JSON program (`JsonPlan`): literal bytes
(keys, braces, commas) and value instructions that read the decoder's slot buffer directly
(integers, strings escaped as JSON, sequences/arrays, structures, variants, optionals). One
numba call writes the JSON of every event of a chunk, whatever its class, so there is no
per-class Python work on the hot path. The JSON shape is the one of the per-class Arrow path
(`jsonify.json_column`): contexts then payload, a context also named in the payload keyed
`context.<name>`, a variant an object with its selected option set and the others null, an
absent top-level optional left out. Classes the kernel does not encode (floating point, BLOBs,
empty structures, duplicate keys) and chunks with invalid UTF-8 strings go through that path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .compiled import kernels
from .decode import CompiledStream, Node, _strings
from .isa import J_END, J_IFOPT, J_IFSEL, J_INT, J_KEY, J_LIST, J_LIST_END, J_LIT, J_STR, J_TOPOPT, J_U64
from .tsdl import LAYOUT_LOCK, strip_underscore



class Unsupported(Exception):
    """A class whose values the kernel does not encode (the Arrow path does)."""


@dataclass
class JsonPlan:
    ops: np.ndarray  # (n, 4) int64
    lits: np.ndarray  # uint8: literal bytes
    entry: np.ndarray  # int64 per class: first op, -1 if the class is not supported
    names: pa.Array  # string per class
    virt: np.ndarray  # bool per class (layer virt)
    pid_slot: np.ndarray  # int64 per class: slot in the event record, -1 if none
    tid_slot: np.ndarray
    proc_slot: np.ndarray  # string slot (start, length), -1 if none
    # kernel trace or not → (layers, each class's index in them): a dictionary of distinct
    # values, as Parquet keeps a dictionary with repeated values only by writing plain strings
    layers: dict = field(default_factory=dict)


class _PlanBuilder:
    def __init__(self) -> None:
        self.ops: list[list[int]] = []
        self.lits = bytearray()

    def emit(self, op: int, a: int = 0, b: int = 0, c: int = 0) -> int:
        self.ops.append([op, a, b, c])
        return len(self.ops) - 1

    def lit(self, text: str) -> None:
        raw = text.encode()
        if self.ops and self.ops[-1][0] == J_LIT and self.ops[-1][1] + self.ops[-1][2] == len(self.lits):
            self.ops[-1][2] += len(raw)  # extend the previous literal
        else:
            self.emit(J_LIT, len(self.lits), len(raw))
        self.lits += raw

    def value(self, node: Node, off: int) -> None:
        """Ops writing the JSON of `node`, its slots at base + off (off: 0 inside lists)."""
        k = node.kind
        if k in ("int", "enum"):
            it = node.type.int_type if k == "enum" else node.type
            self.emit(J_U64 if (it.size == 64 and not it.signed) else J_INT, node.slot + off)
        elif k == "string":
            self.emit(J_STR, node.slot + off)
        elif k == "struct":
            if not node.children:
                raise Unsupported("empty structure")
            self._object([(strip_underscore(n), c) for n, c in node.children], off)
        elif k == "variant":
            names = [strip_underscore(n) for n, _ in node.children]
            if len(set(names)) != len(names):
                raise Unsupported("duplicate option names")
            for i, (name, child) in enumerate(zip(names, node.children)):
                self.lit(("{" if i == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":")
                at = self.emit(J_IFSEL, node.slot + off, i, 0)
                self.value(child[1], off)
                self.ops[at][3] = len(self.ops)
            self.lit("}" if node.children else "{}")
        elif k == "optional":
            at = self.emit(J_IFOPT, node.slot + off, 0, 0)
            self.value(node.children[0][1], off)
            self.ops[at][3] = len(self.ops)
        elif k == "list":
            at = self.emit(J_LIST, node.slot + off, node.elem_k, 0)
            self.value(node.children[0][1], 0)
            self.emit(J_LIST_END, at)
            self.ops[at][3] = len(self.ops)
        else:
            raise Unsupported(k)  # float, blob

    def _object(self, members: list[tuple[str, Node]], off: int) -> None:
        if len(set(n for n, _ in members)) != len(members):
            raise Unsupported("duplicate member names")
        for i, (name, child) in enumerate(members):
            self.lit(("{" if i == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":")
            self.value(child, off)
        self.lit("}")

    def top(self, members: list[tuple[str, Node, int]]) -> int:
        """The program of one class: the top-level object (null members left out)."""
        if len(set(n for n, _, _ in members)) != len(members):
            raise Unsupported("duplicate keys")
        entry = len(self.ops)
        for name, node, off in members:
            skip = self.emit(J_TOPOPT, node.slot + off, 0, 0) if node.kind == "optional" else -1
            raw = json.dumps(name, ensure_ascii=False) + ":"
            self.emit(J_KEY, len(self.lits), len(raw.encode()))
            self.lits += raw.encode()
            self.value(node.children[0][1] if skip >= 0 else node, off)
            if skip >= 0:
                self.ops[skip][3] = len(self.ops)
        self.emit(J_END)
        return entry


_PLANS: dict[int, tuple[CompiledStream, JsonPlan]] = {}


def plan_of(cs: CompiledStream) -> JsonPlan:
    """The JSON plan of a compiled stream (memoised: compiled streams are shared; one thread
    builds it, the others wait for it)."""
    hit = _PLANS.get(id(cs))
    if hit is not None and hit[0] is cs:
        return hit[1]
    with LAYOUT_LOCK:
        hit = _PLANS.get(id(cs))
        if hit is not None and hit[0] is cs:
            return hit[1]
        return _build_plan(cs)


def _build_plan(cs: CompiledStream) -> JsonPlan:
    b = _PlanBuilder()
    ncls = len(cs.classes)
    entry = np.full(ncls, -1, np.int64)
    pid = np.full(ncls, -1, np.int64)
    tid = np.full(ncls, -1, np.int64)
    proc = np.full(ncls, -1, np.int64)
    stream_ctx = [(strip_underscore(n), c, 0) for n, c in (cs.stream_ctx.children if cs.stream_ctx else [])]
    for ci, cc in enumerate(cs.classes):
        ctx = stream_ctx + [(strip_underscore(n), c, cs.kh) for n, c in (cc.context.children if cc.context else [])]
        payload = [(strip_underscore(n), c, cs.kh) for n, c in (cc.payload.children if cc.payload else [])]
        # pid/tid/procname: the last context of that name (event context over stream context)
        by_name = {n: (c, off) for n, c, off in ctx}
        for slots, keys in ((pid, ("vpid", "pid")), (tid, ("vtid", "tid"))):
            for key in keys:
                hit_ = by_name.get(key)
                if hit_ is not None and hit_[0].kind in ("int", "enum"):
                    slots[ci] = hit_[0].slot + hit_[1]
                    break
        pn = by_name.get("procname")
        if pn is not None and pn[0].kind == "string":
            proc[ci] = pn[0].slot + pn[1]
        payload_names = {n for n, _, _ in payload}
        members = [(f"context.{n}" if n in payload_names else n, c, off) for n, c, off in ctx] + payload
        mark = (len(b.ops), len(b.lits))
        try:
            entry[ci] = b.top(members)
        except Unsupported:
            del b.ops[mark[0]:]
            del b.lits[mark[1]:]
    b.emit(J_END)
    names = pa.array([cc.cls.name for cc in cs.classes], pa.string())
    plan = JsonPlan(np.array(b.ops, np.int64).reshape(-1, 4), np.frombuffer(bytes(b.lits) or b"\0", np.uint8),
                    entry, names, np.zeros(ncls, bool), pid, tid, proc)
    if len(_PLANS) >= 64:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[id(cs)] = (cs, plan)
    return plan


def _pool_array(n: int, dtype) -> np.ndarray:  # noqa: ANN001
    """An uninitialised array in Arrow's memory pool: the rows hand it to Arrow as it is, and
    the pool keeps freed memory for the next chunk where a fresh NumPy array was paid again
    in page faults."""
    return np.frombuffer(pa.allocate_buffer(n * np.dtype(dtype).itemsize), dtype=dtype)


def json_events(ops, lits, entry, ev_class, ev_base, buf, data):  # noqa: ANN001, ANN201
    """JSON object bytes of each event (classes with entry < 0 get an empty string).
    Returns (offsets, bytes). The compiled writer never reallocates its output (a buffer
    rebound inside its loop cost two atomic reference-count updates per field): when an
    event does not fit it stops there, and the buffer is doubled here."""
    n = ev_class.shape[0]
    offsets = _pool_array(n + 1, np.int64)
    offsets[0] = 0
    out = _pool_array(max(1024, n * 96), np.uint8)
    stack = np.empty(3 * 64, np.int64)
    e = 0
    while True:
        e = kernels().write_events(ops, lits, entry, ev_class, ev_base, buf, data, out, offsets, stack, e)
        if e == n:
            return offsets, out[:offsets[n]]
        bigger = _pool_array(2 * len(out), np.uint8)
        bigger[:offsets[e]] = out[:offsets[e]]
        out = bigger


# --- rows ---------------------------------------------------------------------------------
ROW_COLUMNS = ["ts", "name", "layer", "cpu", "pid", "tid", "procname", "fields"]


def fields_json(plan: JsonPlan, ch) -> tuple[pa.Array, np.ndarray]:
    """The `fields` JSON of a chunk's events (stream order), and a mask of the events whose
    class the kernel left to the Arrow path (their JSON is empty here)."""
    offsets, raw = json_events(plan.ops, plan.lits, plan.entry, ch.cls, ch.base, ch.buf, ch.stream.data)
    arr = pa.Array.from_buffers(pa.large_string(), len(ch), [None, pa.py_buffer(offsets), pa.py_buffer(raw)],
                                null_count=0)
    todo = plan.entry[ch.cls] < 0
    return arr, todo


def _slot_ints(buf: np.ndarray, base: np.ndarray, slot: np.ndarray) -> pa.Array:
    has = slot >= 0
    if not has.any():
        return pa.nulls(len(base), pa.int64())
    v = buf[base + np.where(has, slot, 0)]
    return pa.array(v, mask=~has if not has.all() else None)


def chunk_rows(ch, kernel: bool, fallback) -> pa.Table:
    """Event-table rows of a chunk (stream order): ts, name, layer, cpu, pid, tid, procname,
    fields. `fallback(ch, kernel)` is the Arrow path, used for what the kernel leaves."""
    cs = ch.stream.cs
    plan = plan_of(cs)
    n = len(ch)
    fields, todo = fields_json(plan, ch)
    try:
        fields.validate(full=True)  # strings are raw trace bytes: UTF-8 is not guaranteed
    except pa.ArrowInvalid:
        return fallback(ch, kernel)
    if todo.any():
        rows = np.flatnonzero(todo)
        sub = fallback(ch, kernel, rows).column("fields").combine_chunks().cast(pa.large_string())
        fields = pc.replace_with_mask(fields, pa.array(todo), sub)
    cls = ch.cls
    # name and layer as dictionaries over the stream's classes: no string per event is built,
    # compared or copied by the merge, and Parquet writes the dictionary as it is
    indices = pa.array(cls.astype(np.int32, copy=False))
    layers = plan.layers.get(kernel)
    if layers is None:
        from . import layer_of  # noqa: PLC0415 (package init defines it)
        per_class = layer_of(plan.names, kernel)
        distinct = pc.unique(per_class)
        layers = plan.layers[kernel] = (distinct, pc.index_in(per_class, distinct).to_numpy().astype(np.int32))
    out = {"ts": pa.array(ch.ts), "name": pa.DictionaryArray.from_arrays(indices, plan.names),
           "layer": pa.DictionaryArray.from_arrays(pa.array(layers[1][cls]), layers[0]), "cpu": _cpu(ch)}
    out["pid"] = _slot_ints(ch.buf, ch.base, plan.pid_slot[cls])
    out["tid"] = _slot_ints(ch.buf, ch.base, plan.tid_slot[cls])
    ps = plan.proc_slot[cls]
    has = ps >= 0
    if has.any():
        idx = ch.base + np.where(has, ps, 0)
        starts = ch.buf[idx]
        lens = np.where(has, ch.buf[idx + 1], 0)
        out["procname"] = _strings(ch.stream.data, starts, lens, ~has if not has.all() else None).cast(pa.string())
    else:
        out["procname"] = pa.nulls(n, pa.string())
    out["fields"] = fields.cast(pa.string())
    return pa.table(out)


def _cpu(ch) -> pa.Array:
    sf = ch.stream
    vals = getattr(sf, "_cpu_cache", None)
    if vals is None or len(vals) != len(sf.packets):
        vals = np.array([p.cpu if p.cpu is not None else -1 for p in sf.packets], dtype=np.int64)
        sf._cpu_cache = vals
    if len(vals) == 0 or (vals < 0).all():
        return pa.nulls(len(ch.pkt), pa.int32())
    v = vals[ch.pkt]
    return pa.array(v.astype(np.int32), mask=v < 0 if (v < 0).any() else None)
