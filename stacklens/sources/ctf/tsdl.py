"""CTF 1.8 TSDL metadata: a Lark grammar, and the translation of its tree to `types.py`.

The grammar covers what tracers really write (LTTng, barectf, the babeltrace test corpus):
typealias/typedef, integer/floating_point/string/enum/struct/variant type specifiers,
arrays and sequences, and the trace/env/clock/stream/event/callsite blocks. Multi-word type
names such as `unsigned long` are parsed as a run of identifiers whose last word is the
declarator (field name), which keeps the grammar LALR.
"""

from __future__ import annotations

import re
import struct
import threading
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedInput

from .types import (BE, LE, ArrayType, Clock, CtfType, EnumType, EventClass, FloatType,
                    IntType, SequenceType, StreamClass, StringType, StructType,
                    TraceMetadata, VariantType)

GRAMMAR = r"""
start: top*

?top: block ";"
    | typealias ";"
    | typedef ";"
    | type_spec ";"            -> bare_type

block: block_kw "{" entry* "}"
!block_kw: "trace" | "env" | "clock" | "stream" | "event" | "callsite"

?entry: assign ";"
      | type_assign ";"
      | typealias ";"
      | typedef ";"
      | type_spec ";"         -> bare_type

assign: key "=" value
type_assign: key ":=" type_spec
key: ident ("." ident)*

?value: signed_int | STRING | key | ESCAPED_CHAR
signed_int: SIGN? INTEGER
SIGN: "-" | "+"

typealias: "typealias" type_ref abstract_suffix* ":=" NAME+ abstract_suffix*
typedef: "typedef" type_ref NAME+ abstract_suffix*

?type_ref: type_spec | words
words: NAME+

?type_spec: integer | floating | string | enum | struct | variant

integer: "integer" "{" attr_list "}"
floating: "floating_point" "{" attr_list "}"
string: "string" ("{" attr_list "}")?
attr_list: (assign ";")*

enum: "enum" NAME? (":" type_ref)? "{" enumerator ("," enumerator)* ","? "}"
    | "enum" NAME                                        -> enum_ref
enumerator: (NAME | STRING | kw_ident) ("=" signed_int ("..." signed_int)?)?

struct: "struct" NAME? "{" field* "}" align?
      | "struct" NAME align?                             -> struct_ref
align: "align" "(" INTEGER ")"

variant: "variant" NAME? tag? "{" field* "}"
       | "variant" NAME tag                              -> variant_ref
tag: "<" key ">"

field: type_spec declarator ";"                         -> field_spec
     | NAME NAME+ abstract_suffix* ";"                   -> field_words
     | typealias ";"                                     -> field_ignore
     | typedef ";"                                       -> field_typedef

declarator: (NAME | kw_ident) abstract_suffix*
abstract_suffix: "[" (INTEGER | key) "]"

?ident: NAME | kw_ident
!kw_ident: "trace" | "env" | "clock" | "stream" | "event" | "callsite" | "string" | "integer" | "enum" | "struct" | "variant" | "align"
        | "floating_point" | "typealias" | "typedef"

NAME: /[A-Za-z_][A-Za-z0-9_]*/
INTEGER: /0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*/i
STRING: /"(\\.|[^"\\])*"/
ESCAPED_CHAR: /'(\\.|[^'\\])'/

COMMENT: /\/\*(.|\n)*?\*\//
LINE_COMMENT: /\/\/[^\n]*/
%import common.WS
%ignore WS
%ignore COMMENT
%ignore LINE_COMMENT
"""

_parser: Lark | None = None


_parser_lock = threading.Lock()


def parser() -> Lark:
    global _parser
    if _parser is None:
        with _parser_lock:  # built once (~14 ms), not by each of the threads opening traces
            if _parser is None:
                _parser = Lark(GRAMMAR, parser="lalr", lexer="contextual", maybe_placeholders=False, cache=True)
    return _parser


class MetadataError(Exception):
    """Metadata that cannot be understood; the message is one line for the user."""


PACKET_MAGIC = 0x75D11D57
_PKT_HDR = struct.Struct("<I16sIIIBBBBB")  # packetized-metadata packet header (37 bytes)


def metadata_text(raw: bytes) -> str:
    """The TSDL text of a metadata file, plain or packetized (either byte order)."""
    if len(raw) >= 4 and raw[:4] in (b"\x57\x1d\xd1\x75", b"\x75\xd1\x1d\x57"):
        bo = "<" if raw[:4] == b"\x57\x1d\xd1\x75" else ">"
        hdr = struct.Struct(bo + "I16sIIIBBBBB")
        out, pos = [], 0
        while pos < len(raw):
            if len(raw) - pos < hdr.size:
                raise MetadataError(f"truncated metadata packet header at byte {pos}")
            magic, _uuid, _ck, content, size, comp, enc, cks, _maj, _min = hdr.unpack_from(raw, pos)
            if magic != PACKET_MAGIC:
                raise MetadataError(f"bad metadata packet magic 0x{magic:08x} at byte {pos}")
            if comp or enc or cks:
                raise MetadataError("compressed/encrypted/checksummed metadata packets are not supported")
            if size % 8 or content % 8 or content > size or content < hdr.size * 8 \
                    or pos + size // 8 > len(raw):
                raise MetadataError(f"bad metadata packet sizes (content {content}, packet {size} bits)"
                                    f" at byte {pos}")
            out.append(raw[pos + hdr.size: pos + content // 8])
            pos += size // 8
        data = b"".join(out)
    else:
        data = raw
    text = data.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\x00", "")


NS_RANGE_S = (1 << 63) // 1_000_000_000  # seconds from the origin an int64 of ns can hold


def check_clock(c: Clock) -> None:
    """A clock the decoder can use: frequency 1 Hz..2^63-1 Hz. (An offset outside the
    int64-ns range is not used, and noted: see `clock_offset_ns`.)"""
    if not 0 < c.freq < 1 << 63:
        raise MetadataError(f"clock {c.name!r} has frequency {c.freq} (1..2^63-1 Hz)")


def clock_offset_ns(c: Clock) -> int | None:
    """The clock's offset from its origin in ns, None if it does not fit int64 ns (years
    1678..2262 from the Unix epoch: the Trace Compass funky_trace has 1.35e18 s)."""
    off_s = c.offset_s + c.offset // c.freq
    off_c = c.offset % c.freq
    if not -NS_RANGE_S < off_s < NS_RANGE_S:
        return None
    ns = off_s * 1_000_000_000 + (off_c if c.freq == 1_000_000_000 else int(1e9 * off_c / c.freq))
    return ns if -(1 << 63) <= ns < 1 << 63 else None


def _num(v: object, what: str) -> int:
    """An attribute value that must be an integer (a value, not a string or a name)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    try:
        return _int(str(v))
    except ValueError:
        raise MetadataError(f"{what} is not an integer: {str(v)[:40]!r}") from None


def _int(tok: str) -> int:
    s = tok.strip()
    neg = s.startswith("-")
    s = s.lstrip("+-").rstrip("uUlL")
    if len(s) > 64:
        raise MetadataError(f"integer literal of {len(s)} digits")
    if s.lower().startswith("0x"):
        v = int(s, 16)
    elif len(s) > 1 and s.startswith("0"):
        v = int(s, 8)
    else:
        v = int(s)
    return -v if neg else v


def _unquote(s: str) -> str:
    body = s[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def strip_underscore(name: str) -> str:
    """CTF 1.8 §4: readers remove one leading underscore of field names."""
    return name[1:] if name.startswith("_") else name


class _Scope:
    """A declaration scope: typealias/typedef names and named struct/variant/enum types."""

    def __init__(self, parent: "_Scope | None" = None) -> None:
        self.parent = parent
        self.aliases: dict[str, CtfType] = {}
        self.structs: dict[str, StructType] = {}
        self.variants: dict[str, VariantType] = {}
        self.enums: dict[str, EnumType] = {}

    def lookup(self, kind: str, name: str) -> object:
        s: _Scope | None = self
        while s is not None:
            table = getattr(s, kind)
            if name in table:
                return table[name]
            s = s.parent
        raise MetadataError(f"unknown type {name!r}")


class _Builder:
    """Walks the Lark tree and builds a TraceMetadata."""

    def __init__(self) -> None:
        self.meta = TraceMetadata()
        self.byte_order_set = False
        self.native_pending: list[IntType | FloatType] = []  # types declared `native` before trace{}
        self.pending_events: list[EventClass] = []

    # --- values --------------------------------------------------------------
    def value(self, node: object) -> object:
        if isinstance(node, Token):
            if node.type == "STRING":
                return _unquote(str(node))
            if node.type == "ESCAPED_CHAR":
                return _unquote(str(node))
            return str(node)
        if isinstance(node, Tree):
            if node.data == "signed_int":
                return _int("".join(str(c) for c in node.children))
            if node.data == "key":
                return ".".join(self.ident(c) for c in node.children)
        raise MetadataError(f"unexpected value {node}")

    def ident(self, node: object) -> str:
        if isinstance(node, Tree) and node.data == "kw_ident":
            return str(node.children[0]) if node.children else ""
        return str(node)

    def key(self, node: Tree) -> str:
        return ".".join(self.ident(c) for c in node.children)

    def attrs(self, node: Tree | None) -> dict[str, object]:
        out: dict[str, object] = {}
        if node is None:
            return out
        for a in node.children:
            out[self.key(a.children[0])] = self.value(a.children[1])
        return out

    # --- types ---------------------------------------------------------------
    def byte_order(self, v: object) -> str | None:
        v = str(v).lower()
        if v in ("le", "little"):
            return LE
        if v in ("be", "big", "network"):
            return BE
        if v == "native":
            return None
        raise MetadataError(f"bad byte_order {v!r}")

    def type_ref(self, node: object, scope: _Scope) -> CtfType:
        if isinstance(node, Tree) and node.data == "words":
            name = " ".join(str(t) for t in node.children)
            return scope.lookup("aliases", name)  # type: ignore[return-value]
        return self.type_spec(node, scope)

    def type_spec(self, node: Tree, scope: _Scope) -> CtfType:
        kind = node.data
        if kind == "integer":
            return self.integer(self.attrs(node.children[0]))
        if kind == "floating":
            a = self.attrs(node.children[0])
            if "exp_dig" not in a or "mant_dig" not in a:
                raise MetadataError("floating_point without exp_dig/mant_dig")
            exp, mant = _num(a["exp_dig"], "exp_dig"), _num(a["mant_dig"], "mant_dig")
            if (exp, mant) not in ((8, 24), (11, 53)):
                raise MetadataError(f"unsupported floating_point exp_dig={exp} mant_dig={mant}")
            bo = self.byte_order(a.get("byte_order", "native"))
            t = FloatType(exp, mant, _num(a.get("align", 8), "floating_point align"), bo or self.meta.byte_order)
            if bo is None and not self.byte_order_set:
                self.native_pending.append(t)
            return t
        if kind == "string":
            a = self.attrs(node.children[0]) if node.children else {}
            return StringType(str(a.get("encoding", "UTF8")))
        if kind == "enum":
            return self.enum(node, scope)
        if kind == "enum_ref":
            return scope.lookup("enums", str(node.children[0]))  # type: ignore[return-value]
        if kind == "struct":
            return self.struct(node, scope)
        if kind == "struct_ref":
            st = scope.lookup("structs", str(node.children[0]))
            al = [c for c in node.children if isinstance(c, Tree) and c.data == "align"]
            if al:
                st = StructType(list(st.fields), max(st.min_align, _int(al[0].children[0])))  # type: ignore[attr-defined]
            return st  # type: ignore[return-value]
        if kind == "variant":
            return self.variant(node, scope)
        if kind == "variant_ref":
            v = scope.lookup("variants", str(node.children[0]))
            tag = self.tag(node.children[1])
            return VariantType(tag, list(v.options))  # type: ignore[attr-defined]
        raise MetadataError(f"unexpected type {kind}")

    def integer(self, a: dict[str, object]) -> IntType:
        if "size" not in a:
            raise MetadataError("integer without size")
        size = _num(a["size"], "integer size")
        if not 1 <= size <= 64:
            raise MetadataError(f"integer size {size} not in 1..64")
        signed = str(a.get("signed", "false")).lower() in ("true", "1")
        align = _num(a.get("align", 8 if size % 8 == 0 else 1), "integer align")
        if align <= 0 or align & (align - 1):
            raise MetadataError(f"integer alignment {align} is not a power of two")
        bo = self.byte_order(a.get("byte_order", "native"))
        base_v = str(a.get("base", 10)).lower()
        base = {"decimal": 10, "dec": 10, "d": 10, "i": 10, "u": 10, "10": 10, "hexadecimal": 16,
                "hex": 16, "x": 16, "16": 16, "p": 16, "octal": 8, "oct": 8, "o": 8, "8": 8,
                "binary": 2, "b": 2, "2": 2}.get(base_v, 10)
        enc = str(a.get("encoding", "none"))
        enc = None if enc.lower() == "none" else enc.upper()
        clock = None
        m = a.get("map")
        if isinstance(m, str) and m.startswith("clock."):
            parts = m.split(".")
            if len(parts) >= 2:
                clock = parts[1]
        t = IntType(size, signed, align, bo or self.meta.byte_order, base, enc, clock)
        if bo is None and not self.byte_order_set:
            self.native_pending.append(t)
        return t

    def enum(self, node: Tree, scope: _Scope) -> EnumType:
        ch = list(node.children)
        name = None
        if ch and isinstance(ch[0], Token) and ch[0].type == "NAME":
            name = str(ch.pop(0))
        container: CtfType | None = None
        if ch and isinstance(ch[0], Tree) and ch[0].data != "enumerator":
            container = self.type_ref(ch.pop(0), scope)
        if container is None:
            container = scope.lookup("aliases", "int")  # type: ignore[assignment]
        if isinstance(container, EnumType):
            container = container.int_type
        if not isinstance(container, IntType):
            raise MetadataError("enum container is not an integer")
        mappings: list[tuple[str, int, int]] = []
        nxt = 0
        for e in ch:
            label_node = e.children[0]
            label = _unquote(str(label_node)) if isinstance(label_node, Token) and label_node.type == "STRING" \
                else self.ident(label_node)
            vals = [self.value(v) for v in e.children[1:]]
            if not vals:
                lo = hi = nxt
            elif len(vals) == 1:
                lo = hi = _num(vals[0], f"enumerator {label!r} value")
            else:
                lo, hi = _num(vals[0], f"enumerator {label!r} value"), _num(vals[1], f"enumerator {label!r} value")
            mappings.append((label, lo, hi))
            nxt = hi + 1
        t = EnumType(container, mappings)
        if name:
            scope.enums[name] = t
        return t

    def fields(self, children: list, scope: _Scope) -> list[tuple[str, CtfType]]:
        out: list[tuple[str, CtfType]] = []
        for f in children:
            if not isinstance(f, Tree):
                continue
            if f.data == "field_spec":
                t = self.type_spec(f.children[0], scope)
                decl = f.children[1]
                name = self.ident(decl.children[0])
                out.append((name, self.suffixes(t, decl.children[1:])))
            elif f.data == "field_words":
                names = [c for c in f.children if isinstance(c, Token)]
                suff = [c for c in f.children if isinstance(c, Tree)]
                t = scope.lookup("aliases", " ".join(str(n) for n in names[:-1]))
                out.append((str(names[-1]), self.suffixes(t, suff)))  # type: ignore[arg-type]
            elif f.data == "field_ignore":
                self.typealias(f.children[0], scope)
            elif f.data == "field_typedef":
                self.typedef(f.children[0], scope)
        seen = set()
        for n, _ in out:
            if n in seen:
                raise MetadataError(f"duplicate field name {n!r}")
            seen.add(n)
        return out

    def suffixes(self, t: CtfType, suff: list) -> CtfType:
        # `x[2][3]` is an array of 2 arrays of 3: apply the innermost (last) suffix first.
        for s in reversed(suff):
            arg = s.children[0]
            if isinstance(arg, Token) and arg.type == "INTEGER":
                n = _int(arg)
                if n < 0:
                    raise MetadataError("negative array length")
                t = ArrayType(t, n)
            else:
                t = SequenceType(t, tuple(self.key(arg).split(".")))
        return t

    def struct(self, node: Tree, scope: _Scope) -> StructType:
        ch = list(node.children)
        name = None
        if ch and isinstance(ch[0], Token) and ch[0].type == "NAME":
            name = str(ch.pop(0))
        align = 1
        if ch and isinstance(ch[-1], Tree) and ch[-1].data == "align":
            align = _int(ch.pop().children[0])
        inner = _Scope(scope)
        t = StructType(self.fields(ch, inner), align)
        if name:
            scope.structs[name] = t
        return t

    def tag(self, node: Tree) -> tuple[str, ...]:
        return tuple(self.key(node.children[0]).split("."))

    def variant(self, node: Tree, scope: _Scope) -> VariantType:
        ch = list(node.children)
        name = None
        if ch and isinstance(ch[0], Token) and ch[0].type == "NAME":
            name = str(ch.pop(0))
        tag: tuple[str, ...] = ()
        if ch and isinstance(ch[0], Tree) and ch[0].data == "tag":
            tag = self.tag(ch.pop(0))
        t = VariantType(tag, self.fields(ch, _Scope(scope)))
        if name:
            scope.variants[name] = t
        return t

    def typealias(self, node: Tree, scope: _Scope) -> None:
        ch = list(node.children)
        t = self.type_ref(ch[0], scope)
        rest = ch[1:]
        # abstract suffixes before := apply to the aliased type
        pre = []
        while rest and isinstance(rest[0], Tree):
            pre.append(rest.pop(0))
        names = [c for c in rest if isinstance(c, Token)]
        post = [c for c in rest if isinstance(c, Tree)]
        t = self.suffixes(t, pre + post)
        scope.aliases[" ".join(str(n) for n in names)] = t

    def typedef(self, node: Tree, scope: _Scope) -> None:
        ch = list(node.children)
        t = self.type_ref(ch[0], scope)
        names = [c for c in ch[1:] if isinstance(c, Token)]
        suff = [c for c in ch[1:] if isinstance(c, Tree)]
        # `typedef unsigned long mytype;`: the last word is the new name
        if isinstance(ch[0], Tree) and ch[0].data == "words":
            pass
        if len(names) > 1:
            t = scope.lookup("aliases", " ".join(str(n) for n in [*ch[0].children, *names[:-1]])) \
                if isinstance(ch[0], Tree) and ch[0].data == "words" else t  # type: ignore[assignment]
        scope.aliases[str(names[-1])] = self.suffixes(t, suff)

    # --- blocks --------------------------------------------------------------
    def build(self, tree: Tree) -> TraceMetadata:
        root = _Scope()
        # The trace block fixes the native byte order; handle it first so that
        # `native` types declared anywhere get it.
        for top in tree.children:
            if top.data == "block" and self.ident(top.children[0].children[0]) == "trace":
                for e in top.children[1:]:
                    if e.data == "assign" and self.key(e.children[0]) == "byte_order":
                        bo = self.byte_order(self.value(e.children[1]))
                        if bo is None:
                            raise MetadataError("trace byte_order cannot be native")
                        self.meta.byte_order = bo
                        self.byte_order_set = True
        for top in tree.children:
            if top.data == "typealias":
                self.typealias(top, root)
            elif top.data == "typedef":
                self.typedef(top, root)
            elif top.data == "bare_type":
                self.type_spec(top.children[0], root)
            elif top.data == "block":
                self.block(str(top.children[0].children[0]), top.children[1:], root)
        for t in self.native_pending:
            t.byte_order = self.meta.byte_order
        for ev in self.pending_events:
            sid = ev.stream_id
            if sid not in self.meta.streams:
                if not self.meta.streams and sid == 0:
                    self.meta.streams[0] = StreamClass(0)
                else:
                    raise MetadataError(f"event {ev.name!r} refers to unknown stream {sid}")
            sc = self.meta.streams[sid]
            if ev.id in sc.events:
                raise MetadataError(f"duplicate event id {ev.id} in stream {sid}")
            sc.events[ev.id] = ev
        return self.meta

    def block(self, kind: str, entries: list, parent: _Scope) -> None:
        scope = _Scope(parent)
        attrs: dict[str, object] = {}
        types: dict[str, CtfType] = {}
        for e in entries:
            if e.data == "assign":
                attrs[self.key(e.children[0])] = self.value(e.children[1])
            elif e.data == "type_assign":
                types[self.key(e.children[0])] = self.type_spec(e.children[1], scope) \
                    if e.children[1].data != "words" else self.type_ref(e.children[1], scope)
            elif e.data == "typealias":
                self.typealias(e, scope)
            elif e.data == "typedef":
                self.typedef(e, scope)
            elif e.data == "bare_type":
                self.type_spec(e.children[0], scope)

        def struct_of(k: str) -> StructType | None:
            t = types.get(k)
            if t is None:
                return None
            if not isinstance(t, StructType):
                raise MetadataError(f"{kind} {k} is not a structure")
            return t

        m = self.meta
        if kind == "trace":
            m.major = _num(attrs.get("major", 1), "trace major")
            m.minor = _num(attrs.get("minor", 8), "trace minor")
            if m.major != 1:
                raise MetadataError(f"unsupported CTF version {m.major}.{m.minor}")
            m.uuid = attrs.get("uuid")  # type: ignore[assignment]
            m.packet_header = struct_of("packet.header")
        elif kind == "env":
            m.env.update(attrs)
        elif kind == "clock":
            name = str(attrs.get("name", "default"))
            c = Clock(name, _num(attrs.get("freq", 1_000_000_000), f"clock {name!r} freq"),
                      _num(attrs.get("offset_s", 0), f"clock {name!r} offset_s"),
                      _num(attrs.get("offset", 0), f"clock {name!r} offset"), attrs.get("uuid"),  # type: ignore[arg-type]
                      attrs.get("description"), str(attrs.get("absolute", "false")).lower() in ("true", "1"))  # type: ignore[arg-type]
            check_clock(c)
            m.clocks[name] = c
        elif kind == "stream":
            sid = _num(attrs.get("id", 0), "stream id")
            if sid in m.streams:
                raise MetadataError(f"duplicate stream id {sid}")
            m.streams[sid] = StreamClass(sid, struct_of("packet.context"), struct_of("event.header"),
                                         struct_of("event.context"))
        elif kind == "event":
            if "name" not in attrs:
                raise MetadataError("event without a name")
            what = f"event {str(attrs['name'])[:40]!r}"
            ev = EventClass(_num(attrs.get("id", 0), f"{what} id"), str(attrs["name"]),
                            _num(attrs.get("stream_id", 0), f"{what} stream_id"),
                            struct_of("context"), struct_of("fields"),
                            _num(attrs["loglevel"], f"{what} loglevel") if "loglevel" in attrs else None)
            self.pending_events.append(ev)


def parse_tsdl(text: str) -> TraceMetadata:
    """Parse TSDL text into the type model; raises MetadataError with a one-line message."""
    try:
        tree = parser().parse(text)
    except UnexpectedInput as e:
        line = text.splitlines()[e.line - 1].strip() if 0 < getattr(e, "line", 0) <= len(text.splitlines()) else ""
        raise MetadataError(f"metadata syntax error at line {e.line}, column {e.column}: {line[:60]!r}") from None
    except LarkError as e:
        raise MetadataError(f"metadata syntax error: {str(e).splitlines()[0]}") from None
    try:
        return _Builder().build(tree)
    except RecursionError:
        raise MetadataError("metadata nesting too deep") from None


_CACHE: dict[bytes, TraceMetadata] = {}

# What differs between traces of one tracer and kernel: the trace UUID, the env block
# (hostname, session, …) and the clock blocks (UUID, offset). The rest (types, stream and
# event classes: the layout) is the same, so it is parsed and compiled once per layout.
# one pattern per keyword: a pattern that starts with a literal is searched for as a string,
# an alternation tries every 'e' and 'c' of the text (1.5 -> 0.3 ms on a kernel's 300 KB)
_BLOCK_STARTS = (re.compile(r"env\s*\{"), re.compile(r"clock\s*\{"))
_TRACE_UUID = re.compile(r'(^[ \t]*trace\s*\{[^{}]*?\buuid\s*=\s*)"([0-9a-fA-F-]{32,36})"', re.M | re.S)


def _per_trace_blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of every top-level `env { … };` and `clock { … };` block. A plain scan:
    a multi-line regex over a kernel's 300 KB of TSDL costs more than the parse it saves."""
    out = []
    starts = sorted((m for p in _BLOCK_STARTS for m in p.finditer(text)), key=lambda m: m.start())
    for m in starts:
        j = m.start() - 1
        while j >= 0 and text[j] in " \t\r\n":
            j -= 1
        if j >= 0 and text[j] not in ";}":
            continue  # part of a longer name, or not at the top level
        i, quoted = m.end(), False
        while i < len(text):
            c = text[i]
            if quoted:
                if c == "\\":
                    i += 1
                elif c == '"':
                    quoted = False
            elif c == '"':
                quoted = True
            elif c == "}":
                break
            elif c == "{":
                i = len(text)  # nested braces: not an env/clock block
            i += 1
        k = i + 1
        while k < len(text) and text[k] in " \t\r\n":
            k += 1
        if k < len(text) and text[k] == ";":
            out.append((m.start(), k + 1))
    return out


def layout_split(text: str) -> tuple[bytes, str | None, str]:
    """(layout key, trace uuid, TSDL of the env and clock blocks) of a TSDL text. The key
    hashes the text without these per-trace parts: traces with the same key decode alike."""
    import hashlib
    uuid = None
    m = _TRACE_UUID.search(text)
    if m:
        uuid = m.group(2)
        text = text[:m.start(2)] + '""' + text[m.end(2):]
    h = hashlib.sha1()
    own, pos = [], 0
    for a, b in _per_trace_blocks(text):
        h.update(text[pos:a].encode("utf-8", "surrogatepass"))
        own.append(text[a:b])
        pos = b
    h.update(text[pos:].encode("utf-8", "surrogatepass"))
    return h.digest(), uuid, "\n".join(own)


def read_metadata_file(path: Path) -> TraceMetadata:
    """The metadata of a trace (TSDL plain/packetized or CTF 2). Parsed models are kept by
    layout (TSDL: the text without trace UUID, env and clocks; CTF 2: the bytes): a session's
    many traces (per-CPU/per-UID, rotations, hosts with the same kernel) parse once and
    share their compiled decoders (`TraceMetadata.layout`). A cached model is never modified;
    each trace gets a shallow copy with its own uuid, env and clocks."""
    import dataclasses
    import hashlib
    raw = path.read_bytes()
    if raw[:1] == b"\x1e":
        key = hashlib.sha1(raw).digest()
        meta = _cached(key, lambda: _parse_ctf2(raw))
        return meta
    text = metadata_text(raw)
    key, uuid, own = layout_split(text)
    try:
        own_meta = parse_tsdl(own) if own else TraceMetadata()  # tiny: well under a millisecond
    except MetadataError:  # blocks cut oddly (a "};" inside a string): no sharing, full parse
        return parse_tsdl(text)
    key = hashlib.sha1(key + repr(list(own_meta.clocks)).encode()).digest()
    template = _cached(key, lambda: parse_tsdl(text))
    changes: dict = {"layout": key.hex()}
    if uuid is not None:
        changes["uuid"] = uuid
    if own:
        changes["env"] = own_meta.env
        changes["clocks"] = own_meta.clocks
    return dataclasses.replace(template, **changes)


def _parse_ctf2(raw: bytes) -> TraceMetadata:
    from .ctf2 import parse_ctf2
    return parse_ctf2(raw)


# Traces read at once (ingest reads two parts at a time) mostly share a layout: the first
# to need it loads or parses it while the others wait for that model, where each thread did
# the same work under the GIL (the first two parts of an ingest: ~70 ms more before either
# decoded an event). Shared by the compiled-stream and JSON-plan caches.
LAYOUT_LOCK = threading.RLock()


def _cached(key: bytes, parse) -> TraceMetadata:
    """The model of layout `key`: from memory, else from the disk cache, else `parse()`."""
    meta = _CACHE.get(key)
    if meta is not None:
        return meta
    with LAYOUT_LOCK:
        return _cached_locked(key, parse)


def _cached_locked(key: bytes, parse) -> TraceMetadata:
    meta = _CACHE.get(key)
    if meta is not None:
        return meta
    meta = _disk_cache_load(key)
    if meta is None:
        meta = parse()
        meta.layout = key.hex()
        _disk_cache_store(key, meta)
    if len(_CACHE) >= 64:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = meta
    return meta


# Parsed metadata is also kept on disk: a kernel trace's TSDL is ~300 KB and takes about a
# second to parse, while the same kernel writes the same metadata in every session. The key
# covers the metadata bytes and the source of the model code, so a code change invalidates it.
def _cache_dir() -> Path | None:
    from stacklens.cachedir import cache_dir
    return cache_dir("ctf-metadata")


def _code_version() -> str:
    import hashlib
    h = hashlib.sha1()
    here = Path(__file__).parent
    for name in ("tsdl.py", "ctf2.py", "types.py"):
        try:
            h.update((here / name).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:12]


_CODE_VERSION = _code_version()


def _disk_cache_load(key: bytes) -> "TraceMetadata | None":
    import pickle
    d = _cache_dir()
    if d is None:
        return None
    try:
        with open(d / f"{_CODE_VERSION}-{key.hex()}.pickle", "rb") as f:
            return pickle.load(f)
    except Exception:  # absent, stale or unreadable: parse again
        return None


def _disk_cache_store(key: bytes, meta: "TraceMetadata") -> None:
    import os
    import pickle
    d = _cache_dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{os.getpid()}-{key.hex()}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(meta, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(d / f"{_CODE_VERSION}-{key.hex()}.pickle")
    except Exception:  # a cache that cannot be written is only slower
        pass
