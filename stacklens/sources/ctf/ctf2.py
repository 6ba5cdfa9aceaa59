"""CTF 2 metadata (JSON text sequence, LTTng >= 2.14) into the same type model as TSDL.

Each fragment starts with the RS byte (0x1E) and is one JSON object: preamble, trace-class,
clock-class, data-stream-class, event-record-class, field-class-alias. Field locations
(sequence lengths, variant/optional selectors) become absolute paths in the TSDL scope
naming so that the decoder compiler resolves both kinds the same way.
"""

from __future__ import annotations

import json

from .tsdl import MetadataError, check_clock
from .types import (BE, LE, ArrayType, BlobType, Clock, CtfType, EnumType, EventClass,
                    FloatType, IntType, OptionalType, SequenceType, StreamClass, StringType,
                    StructType, TraceMetadata, VariantType)

ORIGINS = {
    "packet-header": ("trace", "packet", "header"),
    "packet-context": ("stream", "packet", "context"),
    "event-record-header": ("stream", "event", "header"),
    "event-record-common-context": ("stream", "event", "context"),
    "event-record-specific-context": ("event", "context"),
    "event-record-payload": ("event", "fields"),
}


def _fragments(raw: bytes) -> list[dict]:
    out = []
    for i, part in enumerate(raw.split(b"\x1e")):
        if not part.strip():
            continue
        try:
            obj = json.loads(part.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MetadataError(f"CTF 2 fragment {i}: invalid JSON ({e})") from None
        except RecursionError:
            raise MetadataError(f"CTF 2 fragment {i}: JSON nesting too deep") from None
        if not isinstance(obj, dict) or "type" not in obj:
            raise MetadataError(f"CTF 2 fragment {i}: not an object with a type")
        out.append(obj)
    return out


class _Ctf2:
    def __init__(self) -> None:
        self.aliases: dict[str, dict] = {}
        self.depth = 0

    def location(self, loc: object) -> tuple[str, ...]:
        if isinstance(loc, list):  # CTF 2 draft (LTTng 2.14 era): [origin, member, ...]
            items = [str(p) for p in loc if p is not None]
            if items and items[0] in ORIGINS:
                return ORIGINS[items[0]] + tuple(items[1:])
            return tuple(items)
        if not isinstance(loc, dict) or not isinstance(loc.get("path"), list):
            raise MetadataError(f"bad field location {loc!r}")
        path = tuple(str(p) for p in loc["path"] if p is not None)
        origin = loc.get("origin")
        if origin is None:
            return path  # relative: resolved outwards by the compiler
        if origin not in ORIGINS:
            raise MetadataError(f"unknown field location origin {origin!r}")
        return ORIGINS[origin] + path

    def fc(self, d: object) -> CtfType:
        if isinstance(d, str):
            if d not in self.aliases:
                raise MetadataError(f"unknown field class alias {d!r}")
            d = self.aliases[d]
        if not isinstance(d, dict):
            raise MetadataError(f"bad field class {d!r}")
        self.depth += 1
        if self.depth > 64:
            raise MetadataError("field classes nested too deep")
        try:
            return self._fc(d)
        finally:
            self.depth -= 1

    def _fc(self, d: dict) -> CtfType:
        t = d.get("type")
        bo = BE if d.get("byte-order") == "big-endian" else LE
        align = int(d.get("alignment", 1))
        roles = d.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise MetadataError(f"roles of a {str(t)[:40]} field class are not a list of strings")
        roles = tuple(roles)
        if t in ("fixed-length-unsigned-integer", "fixed-length-signed-integer", "fixed-length-bit-array",
                 "fixed-length-boolean", "fixed-length-unsigned-enumeration", "fixed-length-signed-enumeration"):
            n = int(d.get("length", 0))
            if not 1 <= n <= 64:
                raise MetadataError(f"integer length {n} not in 1..64")
            it = IntType(n, t.endswith("signed-integer") and "unsigned" not in t or t == "fixed-length-signed-enumeration",
                         align, bo, int(d.get("preferred-display-base", 10)), None, None, roles)
            if t.endswith("enumeration"):
                maps = []
                for label, ranges in (d.get("mappings") or {}).items():
                    for lo, hi in ranges:
                        maps.append((label, int(lo), int(hi)))
                return EnumType(it, maps)
            return it
        if t == "fixed-length-floating-point-number":
            n = int(d.get("length", 0))
            if n == 32:
                return FloatType(8, 24, align, bo)
            if n == 64:
                return FloatType(11, 53, align, bo)
            raise MetadataError(f"unsupported floating point length {n}")
        if t == "null-terminated-string":
            return StringType()
        if t == "static-length-string":
            return ArrayType(IntType(8, False, 8, LE, 10, "UTF8"), int(d["length"]))
        if t == "dynamic-length-string":
            return SequenceType(IntType(8, False, 8, LE, 10, "UTF8"), self.location(d.get("length-field-location")))
        if t == "static-length-blob":
            return BlobType(int(d["length"]))
        if t == "dynamic-length-blob":
            return SequenceType(IntType(8, False, 8, LE, 16), self.location(d.get("length-field-location")))
        if t == "structure":
            fields = [(str(m["name"]), self.fc(m["field-class"])) for m in d.get("member-classes", [])]
            if len({n for n, _ in fields}) != len(fields):
                raise MetadataError("structure field class with duplicate member names")
            return StructType(fields, int(d.get("minimum-alignment", 1)))
        if t == "static-length-array":
            return ArrayType(self.fc(d["element-field-class"]), int(d["length"]))
        if t == "dynamic-length-array":
            return SequenceType(self.fc(d["element-field-class"]), self.location(d.get("length-field-location")))
        if t == "optional":
            ranges = d.get("selector-field-ranges")
            return OptionalType(self.fc(d["field-class"]), self.location(d.get("selector-field-location")),
                                [(int(lo), int(hi)) for lo, hi in ranges] if ranges is not None else None)
        if t == "variant":
            opts = d.get("options", [])
            return VariantType(self.location(d.get("selector-field-location")),
                               [(str(o.get("name", f"option{i}")), self.fc(o["field-class"])) for i, o in enumerate(opts)],
                               [[(int(lo), int(hi)) for lo, hi in o.get("selector-field-ranges", [])] for o in opts])
        if t in ("variable-length-unsigned-integer", "variable-length-signed-integer",
                 "variable-length-unsigned-enumeration", "variable-length-signed-enumeration"):
            raise MetadataError(f"unsupported CTF 2 field class {t!r}")
        raise MetadataError(f"unknown CTF 2 field class {t!r}")

    def struct(self, d: object, what: str) -> StructType | None:
        if d is None:
            return None
        t = self.fc(d)
        if not isinstance(t, StructType):
            raise MetadataError(f"{what} is not a structure")
        return t


def _kind(f: object) -> str:
    return str(f.get("type"))[:40] if isinstance(f, dict) else "?"


def parse_ctf2(raw: bytes) -> TraceMetadata:
    """Parse a CTF 2 metadata stream into the type model."""
    frags = _fragments(raw)
    if not frags or frags[0].get("type") != "preamble":
        raise MetadataError("CTF 2 metadata does not start with a preamble")
    if frags[0].get("version") != 2:
        raise MetadataError(f"unsupported CTF 2 version {frags[0].get('version')!r}")
    m = TraceMetadata(major=2, minor=0, version=2)
    c = _Ctf2()
    clock_ids: dict[str, str] = {}
    events: list[EventClass] = []
    try:
        for f in frags[1:]:
            t = f["type"]
            if t == "field-class-alias":
                c.aliases[str(f["name"])] = f["field-class"]
            elif t == "trace-class":
                m.packet_header = c.struct(f.get("packet-header-field-class"), "packet header")
                m.env.update(f.get("environment") or {})
                uuid = f.get("uuid")
                if isinstance(uuid, list):
                    if len(uuid) != 16 or not all(isinstance(b, int) and 0 <= b <= 255 for b in uuid):
                        raise MetadataError("trace class uuid is not 16 bytes")
                    m.uuid = bytes(uuid).hex()
            elif t == "clock-class":
                name = str(f.get("name", f.get("id", "default")))
                off = f.get("offset-from-origin") or f.get("offset") or {}
                clk = Clock(name, int(f.get("frequency", 1_000_000_000)), int(off.get("seconds", 0)),
                            int(off.get("cycles", 0)), description=f.get("description"),
                            absolute=f.get("origin") is not None)
                check_clock(clk)
                m.clocks[name] = clk
                clock_ids[str(f.get("id", name))] = name
            elif t == "data-stream-class":
                sid = int(f.get("id", 0))
                if sid in m.streams:
                    raise MetadataError(f"duplicate data stream class {sid}")
                clk = f.get("default-clock-class-name") or f.get("default-clock-class-id")
                if clk is not None and not isinstance(clk, str):
                    raise MetadataError(f"data stream class {sid}: default clock class is not a name")
                m.streams[sid] = StreamClass(sid, c.struct(f.get("packet-context-field-class"), "packet context"),
                                             c.struct(f.get("event-record-header-field-class"), "event header"),
                                             c.struct(f.get("event-record-common-context-field-class"), "event context"),
                                             default_clock=clock_ids.get(str(clk), clk) if clk else None)
            elif t == "event-record-class":
                events.append(EventClass(int(f.get("id", 0)), str(f.get("name", "")),
                                         int(f.get("data-stream-class-id", 0)),
                                         c.struct(f.get("specific-context-field-class"), "event context"),
                                         c.struct(f.get("payload-field-class"), "payload")))
            elif t == "preamble":
                raise MetadataError("second CTF 2 preamble")
    except KeyError as e:
        raise MetadataError(f"CTF 2 {_kind(f)} fragment lacks member {e}") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as e:
        raise MetadataError(f"bad value in a CTF 2 {_kind(f)} fragment ({e})") from None
    for ev in events:
        sc = m.streams.get(ev.stream_id)
        if sc is None:
            raise MetadataError(f"event record class {ev.name!r} refers to unknown stream class {ev.stream_id}")
        if ev.id in sc.events:
            raise MetadataError(f"duplicate event record class id {ev.id}")
        sc.events[ev.id] = ev
    return m
