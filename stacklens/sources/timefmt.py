"""Text timestamps to int64 ns since the Unix epoch, column-wise."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import StacklensError

_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{1,2}):?(\d{2})?$")


def tz_offset_seconds(tz: str) -> int | None:
    """Fixed offset of `tz` in seconds east of UTC, or None if `tz` is a zone name."""
    if tz.upper() in ("UTC", "GMT", "Z"):
        return 0
    m = _OFFSET.match(tz)
    if not m:
        return None
    sign = -1 if m.group(1) == "-" else 1
    return sign * (int(m.group(2)) * 3600 + int(m.group(3) or 0) * 60)


def local_to_epoch_ns(date: pa.Array, time_: pa.Array, tz: str = "UTC") -> pa.Array:
    """`date` "YYYY-MM-DD" and `time_` "HH:MM:SS[.frac]" (local time in `tz`) → int64 ns UTC."""
    whole = pc.binary_join_element_wise(date, pc.utf8_slice_codeunits(time_, 0, 8), " ")
    seconds = pc.strptime(whole, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    offset = tz_offset_seconds(tz)
    if offset is None:
        try:
            seconds = pc.assume_timezone(seconds, timezone=tz, ambiguous="earliest",
                                         nonexistent="earliest")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise StacklensError(f"unknown time zone {tz!r}: {e}") from None
        offset = 0
    ns = pc.multiply(pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.int64()), 1_000_000_000)
    frac = pc.utf8_slice_codeunits(time_, 9, 18)
    frac = pc.if_else(pc.equal(frac, ""), "0", frac)
    frac_ns = pc.cast(pc.utf8_rpad(frac, 9, "0"), pa.int64())
    out = pc.add(ns, frac_ns)
    if offset:
        out = pc.subtract(out, offset * 1_000_000_000)
    return out
