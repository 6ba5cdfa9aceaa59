"""`stacklens dump TRACE`: events as text in babeltrace2's default (pretty) style, with
times in UTC (as `babeltrace2 --clock-gmt`), to diff our decoding against babeltrace2.

Known differences from babeltrace2: times are always UTC; floating-point values use
Python's `%g` (same as C for finite values); discarded-event warnings go to stderr in a
shorter form. This is a debugging view: formatting is plain Python per event.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np

from stacklens.errors import SourceError

from . import find_traces, open_trace
from .decode import Node, build, member_names
from .streams import Chunk, CtfTrace, merge, merged_order
from .tsdl import strip_underscore
from .types import EnumType, IntType

_ESC = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
        "\\": "\\\\", "'": "\\'", '"': '\\"', "?": "\\?"}


def _string(s: str) -> str:
    return '"' + "".join(_ESC.get(c, c) for c in s) + '"'


def _int(v: int, it: IntType) -> str:
    if it.base == 16:
        return f"0x{v & ((1 << it.size) - 1) if v < 0 else v:X}"
    if it.base == 8:
        return f"0{v & ((1 << it.size) - 1) if v < 0 else v:o}"
    if it.base == 2:
        return f"0b{v & ((1 << it.size) - 1) if v < 0 else v:b}"
    return str(v)


def fmt(node: Node, v: object) -> str:
    """One value in babeltrace2's pretty style."""
    k = node.kind
    if k == "int":
        return _int(v, node.type)  # type: ignore[arg-type]
    if k == "enum":
        et: EnumType = node.type  # type: ignore[assignment]
        labels = et.labels_for(v)  # type: ignore[arg-type]
        if not labels:
            lab = "<unknown>"
        elif len(labels) == 1:
            lab = _string(labels[0])
        else:
            lab = "{ " + ", ".join(_string(x) for x in labels) + " }"
        return f"( {lab} : container = {_int(v, et.int_type)} )"  # type: ignore[arg-type]
    if k == "float":
        return "%g" % v  # type: ignore[str-format]
    if k == "string":
        return _string(v)  # type: ignore[arg-type]
    if k == "blob":
        return str(v)
    if k == "struct":
        return _struct(node, v)  # type: ignore[arg-type]
    if k == "list":
        child = node.children[0][1]
        if not v:
            return "[ ]"
        return "[ " + ", ".join(f"[{i}] = {fmt(child, x)}" for i, x in enumerate(v)) + " ]"  # type: ignore[arg-type]
    if k == "variant":
        for key, (name, child) in zip(member_names([n for n, _ in node.children]), node.children):
            x = v.get(key) if isinstance(v, dict) else None  # type: ignore[union-attr]
            if x is not None:
                return "{ " + fmt(child, x) + " }"
        return "{ }"
    if k == "optional":
        return fmt(node.children[0][1], v) if v is not None else "<none>"
    return str(v)


def _struct(node: Node, v: dict) -> str:
    if not node.children:
        return "{ }"
    parts = []
    for n, (name, child) in zip(member_names([n for n, _ in node.children]), node.children):
        parts.append(f"{n} = {fmt(child, v[n])}")
    return "{ " + ", ".join(parts) + " }"


def trace_label(trace: CtfTrace) -> str:
    """What babeltrace2 prints before the event name: the host name, and for LTTng per-PID
    UST traces the process too (`host:procname:(vpid)`)."""
    env = trace.env
    host = env.get("hostname")
    parts = [str(host)] if isinstance(host, str) and host else []
    if "vpid" in env and "procname" in env:
        parts += [str(env["procname"]), f"({env['vpid']})"]
    return ":".join(parts)


def chunk_lines(trace: CtfTrace, ch: Chunk) -> list[str]:
    """Text of each event of a chunk after the time stamp: host, name, contexts, payload."""
    sf = ch.stream
    cs = sf.cs
    host_s = f"{trace_label(trace)} " if trace_label(trace) else ""
    cpus = [p.cpu for p in sf.packets]
    has_cpu = "cpu_id" in cs.packet_fields
    out: list[str] = [""] * len(ch)
    for ci, rows in ch.groups():
        cc = cs.classes[ci]
        base = ch.base[rows]
        blocks: list[tuple[Node, list]] = []
        for node, off in ((cs.stream_ctx, 0), (cc.context, cs.kh), (cc.payload, cs.kh)):
            if node is not None:
                cols = [build(c, ch.buf, base + off, sf.data).to_pylist() for _, c in node.children]
                blocks.append((node, cols))
        head = f"{host_s}{cc.cls.name}: "
        for j, r in enumerate(rows):
            parts = []
            if has_cpu:
                parts.append(f"{{ cpu_id = {cpus[ch.pkt[r]]} }}")
            for node, cols in blocks:
                if not node.children:
                    parts.append("{ }")
                    continue
                parts.append("{ " + ", ".join(f"{strip_underscore(n)} = {fmt(c, col[j])}"
                                              for (n, c), col in zip(node.children, cols)) + " }")
            out[r] = head + ", ".join(parts)
    return out


def _clock_text(ns: int) -> str:
    s, frac = divmod(ns, 1_000_000_000)
    s %= 86400
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{frac:09d}"


def dump(root: Path | str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print every event of the trace(s) under `root` merged by time. Returns the exit
    status: 0, or 1 after printing the events read when a trace has a problem."""
    out = out or sys.stdout
    err = err or sys.stderr
    paths = find_traces(root)
    if not paths:
        print(f"{root}: no CTF trace found", file=err)
        return 1
    traces: list[CtfTrace] = []
    try:
        for p in paths:
            traces.append(open_trace(p))
    except SourceError as e:
        print(str(e), file=err)
        return 1

    def lines_of(t: CtfTrace, it: Iterator[Chunk]) -> Iterator[Chunk]:
        for ch in it:
            ch.lines = chunk_lines(t, ch)  # type: ignore[attr-defined]
            yield ch

    iters = []
    clocked = []
    for t in traces:
        for sf in t.streams:
            iters.append(lines_of(t, t.chunks(sf)))
            clocked.append(sf.cs.clock is not None)
    prev: int | None = None
    for parts in merge(iters):
        order = merged_order(parts)
        ts = np.concatenate([p.chunk.ts[p.first:p.end] for p in parts])
        lines = [ln for p in parts for ln in p.chunk.lines[p.first:p.end]]  # type: ignore[attr-defined]
        has = [clocked[p.rank] for p in parts for _ in range(p.end - p.first)]
        buf = []
        for i in order:
            if has[i]:
                t_ns = int(ts[i])
                delta = "+?.?????????" if prev is None else \
                    f"+{(t_ns - prev) // 1_000_000_000}.{(t_ns - prev) % 1_000_000_000:09d}"
                prev = t_ns
                buf.append(f"[{_clock_text(t_ns)}] ({delta}) {lines[i]}\n")
            else:
                buf.append(lines[i] + "\n")
        out.write("".join(buf))
    status = 0
    for t in traces:
        for sf in t.streams:
            if sf.error:
                print(f"error: {sf.error}", file=err)
                status = 1
        for msg in t.time_notes:
            print(f"warning: {msg}", file=err)
        for stream, cpu, tb, te, n in t.lost():
            print(f"WARNING: tracer discarded {n} events in stream {stream!r}"
                  + (f" (cpu {cpu})" if cpu is not None else ""), file=err)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m stacklens.sources.ctf.dump TRACE", file=sys.stderr)
        return 2
    try:
        return dump(argv[0])
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
