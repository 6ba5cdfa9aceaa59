"""Text timestamps to int64 ns since the Unix epoch, column-wise."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import StacklensError

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# What a record whose timestamp does not fit int64 ns is told (the report's note).
NS_RANGE_TEXT = "outside the int64-ns range (1677-09-21 … 2262-04-11)"
# The most a named time zone moves a local time (UTC-12 … UTC+14, with margin).
MAX_ZONE_OFFSET_NS = 26 * 3600 * 1_000_000_000


def fits_int64(ns: int) -> bool:
    """Is the (unbounded Python) integer `ns` a valid int64 ns timestamp?"""
    return INT64_MIN <= ns <= INT64_MAX


def seconds_fit_ns(seconds: np.ndarray, frac_ns: np.ndarray | int = 0) -> np.ndarray:
    """Column-wise: do `seconds` (int64) plus `frac_ns` (0 <= frac < 10^9) fit int64 ns?"""
    from stacklens.sources.textscan import NS_MAX_FRAC, NS_MAX_SECONDS, NS_MIN_FRAC, NS_MIN_SECONDS
    seconds = np.asarray(seconds, np.int64)
    frac_ns = np.asarray(frac_ns, np.int64)
    return (((seconds > NS_MIN_SECONDS) & (seconds < NS_MAX_SECONDS))
            | ((seconds == NS_MAX_SECONDS) & (frac_ns <= NS_MAX_FRAC))
            | ((seconds == NS_MIN_SECONDS) & (frac_ns >= NS_MIN_FRAC)))


def shift_fits(local_ns: np.ndarray, offset_ns: int) -> np.ndarray:
    """Column-wise: does `local_ns - offset_ns` stay inside int64?"""
    lo = max(INT64_MIN, INT64_MIN + offset_ns)
    hi = min(INT64_MAX, INT64_MAX + offset_ns)
    return (local_ns >= lo) & (local_ns <= hi)


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
    """`date` "YYYY-MM-DD" and `time_` "HH:MM:SS[.frac]" (local time in `tz`) → int64 ns UTC;
    null where the text is not a time or the time does not fit int64 ns (never wrapped)."""
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
    secs = pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.int64())
    frac = pc.utf8_slice_codeunits(time_, 9, 18)
    frac = pc.if_else(pc.equal(frac, ""), "0", frac)
    frac_ns = pc.cast(pc.utf8_rpad(frac, 9, "0"), pa.int64())
    # the range check on the whole seconds (and on the shift to UTC) before any product
    s = secs.to_numpy(zero_copy_only=False)
    s = np.where(np.isnan(s), 0, s).astype(np.int64) if s.dtype.kind == "f" else s
    f = frac_ns.to_numpy(zero_copy_only=False)
    f = np.where(np.isnan(f), 0, f).astype(np.int64) if f.dtype.kind == "f" else f
    ok = seconds_fit_ns(s, f)
    out = np.where(ok, s, 0) * 1_000_000_000 + np.where(ok, f, 0)
    if offset:
        ok &= shift_fits(out, offset * 1_000_000_000)
        out = np.where(ok, out, 0) - offset * 1_000_000_000
    valid = ok & secs.is_valid().to_numpy(zero_copy_only=False)
    return pa.array(out, pa.int64(), mask=~valid)
