"""The internal type model shared by CTF 1.8 (TSDL) and CTF 2 (JSON) metadata.

Both metadata kinds are translated into these plain dataclasses; the decoder compiler
(`decode.py`) only ever sees this model.  Field-location references (sequence lengths,
variant selectors) are kept as paths and resolved by the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

LE, BE = "le", "be"


@dataclass
class IntType:
    size: int  # bits, 1..64
    signed: bool = False
    align: int = 8  # bits
    byte_order: str = LE
    base: int = 10
    encoding: str | None = None  # "UTF8"/"ASCII" for character integers
    clock: str | None = None  # name of the clock this integer maps to (timestamps)
    roles: tuple[str, ...] = ()  # CTF 2 roles (packet-total-size, event-record-class-id, …)


@dataclass
class EnumType:
    int_type: IntType
    # (label, low, high) ranges, in declaration order
    mappings: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def align(self) -> int:
        return self.int_type.align

    def labels_for(self, value: int) -> list[str]:
        return [lab for lab, lo, hi in self.mappings if lo <= value <= hi]


@dataclass
class FloatType:
    exp_dig: int
    mant_dig: int
    align: int = 8
    byte_order: str = LE

    @property
    def size(self) -> int:
        return self.exp_dig + self.mant_dig


@dataclass
class StringType:
    encoding: str = "UTF8"
    align: int = 8


@dataclass
class BlobType:
    """CTF 2 static-length blob (bytes), e.g. a UUID."""

    length: int  # bytes
    align: int = 8


@dataclass
class ArrayType:
    element: "CtfType"
    length: int

    @property
    def align(self) -> int:
        return self.element.align


@dataclass
class SequenceType:
    element: "CtfType"
    length_ref: tuple[str, ...]  # path of the length field (relative or absolute)

    @property
    def align(self) -> int:
        return self.element.align


@dataclass
class StructType:
    fields: list[tuple[str, "CtfType"]] = field(default_factory=list)
    min_align: int = 1

    @property
    def align(self) -> int:
        a = self.min_align
        for _, t in self.fields:
            a = max(a, t.align)
        return a

    def get(self, name: str) -> "CtfType | None":
        for n, t in self.fields:
            if n == name:
                return t
        return None


@dataclass
class VariantType:
    tag_ref: tuple[str, ...]
    options: list[tuple[str, "CtfType"]] = field(default_factory=list)
    # CTF 2: explicit selector ranges per option (None: by enum label, CTF 1.8)
    option_ranges: list[list[tuple[int, int]]] | None = None

    @property
    def align(self) -> int:
        return 1  # a variant has no alignment of its own; its selected option has


@dataclass
class OptionalType:
    """CTF 2 optional: present when its selector (bool/int) says so."""

    element: "CtfType"
    selector_ref: tuple[str, ...]
    ranges: list[tuple[int, int]] | None = None  # None: boolean selector

    @property
    def align(self) -> int:
        return 1


CtfType = Union[IntType, EnumType, FloatType, StringType, BlobType, ArrayType, SequenceType,
                StructType, VariantType, OptionalType]


@dataclass
class Clock:
    name: str
    freq: int = 1_000_000_000
    offset_s: int = 0
    offset: int = 0  # cycles
    uuid: str | None = None
    description: str | None = None
    absolute: bool = False


@dataclass
class EventClass:
    id: int
    name: str
    stream_id: int
    context: StructType | None = None
    fields: StructType | None = None
    loglevel: int | None = None


@dataclass
class StreamClass:
    id: int
    packet_context: StructType | None = None
    event_header: StructType | None = None
    event_context: StructType | None = None
    events: dict[int, EventClass] = field(default_factory=dict)
    default_clock: str | None = None


@dataclass
class TraceMetadata:
    major: int = 1
    minor: int = 8
    uuid: str | None = None
    byte_order: str = LE
    packet_header: StructType | None = None
    env: dict[str, object] = field(default_factory=dict)
    clocks: dict[str, Clock] = field(default_factory=dict)
    streams: dict[int, StreamClass] = field(default_factory=dict)
    version: int = 1  # 1: CTF 1.8 TSDL, 2: CTF 2 JSON
    layout: str = ""  # hash of what decoding depends on: traces with the same layout share decoders
