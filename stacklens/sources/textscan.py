"""Compiled kernels for text sources: line bounds, string columns and JSON objects built from
byte slices of the input buffer.

A text reader finds, per line, the (start, end) byte offsets of each field in one compiled
pass; these helpers then make Arrow string columns and the `fields` JSON column from those
offsets without a Python object per line. A start of -1 means null.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import pyarrow as pa

from stacklens.sources.swar import NO_REFCOUNT, load_u64, store_u64


@nb.njit(**NO_REFCOUNT)
def parse_digits(buf: np.ndarray, s: int, n: int) -> int:
    """The decimal number in buf[s:s+n], or -1 if a byte is not a digit."""
    v = 0
    for j in range(s, s + n):
        c = buf[j]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


@nb.njit(**NO_REFCOUNT)
def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    y -= 1 if m <= 2 else 0
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_DAYS_IN_MONTH = np.array([31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


@nb.njit(**NO_REFCOUNT)
def valid_date(y: int, m: int, d: int) -> bool:
    """A real calendar date (month lengths, leap years); y < 0 means unparsed."""
    if y < 0 or m < 1 or m > 12 or d < 1 or d > _DAYS_IN_MONTH[m - 1]:
        return False
    return not (m == 2 and d == 29 and not (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)))


# int64 ns since the epoch spans 1677-09-21T00:12:43.145224192Z … 2262-04-11T23:47:16.854775807Z:
# the whole seconds at each end and the nanoseconds allowed in them.
NS_MAX_SECONDS, NS_MAX_FRAC = 9_223_372_036, 854_775_807
NS_MIN_SECONDS, NS_MIN_FRAC = -9_223_372_037, 145_224_192


@nb.njit(**NO_REFCOUNT)
def fits_ns(seconds: int, frac: int) -> bool:
    """Does `seconds` since the epoch plus `frac` ns (0 <= frac < 10^9) fit int64 ns?
    (A timestamp outside is skipped and reported by its reader, never wrapped.)"""
    if NS_MIN_SECONDS < seconds < NS_MAX_SECONDS:
        return True
    if seconds == NS_MAX_SECONDS:
        return frac <= NS_MAX_FRAC
    if seconds == NS_MIN_SECONDS:
        return frac >= NS_MIN_FRAC
    return False


@nb.njit(**NO_REFCOUNT)
def parse_fraction(buf: np.ndarray, q: int, e: int) -> tuple[int, int, int]:
    """The decimal digits at buf[q:e] as a fraction of a second: (ns, end offset, digits
    read). Digits past the ninth are read but do not count toward the value."""
    frac = 0
    nd = 0
    while q < e and 48 <= buf[q] <= 57:
        if nd < 9:
            frac = frac * 10 + (buf[q] - 48)
        nd += 1
        q += 1
    for _ in range(9 - min(nd, 9)):
        frac *= 10
    return frac, q, nd


@nb.njit(cache=True, nogil=True)
def line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without "\\n" or "\\r\\n") of every line of `buf`."""
    n = len(buf)
    count = 0
    for i in range(n):
        if buf[i] == 10:
            count += 1
    if n and buf[n - 1] != 10:
        count += 1
    starts = np.empty(count, np.int64)
    ends = np.empty(count, np.int64)
    k = 0
    s = 0
    for i in range(n):
        if buf[i] == 10:
            e = i
            if e > s and buf[e - 1] == 13:
                e -= 1
            starts[k] = s
            ends[k] = e
            k += 1
            s = i + 1
    if s < n:
        e = n
        if buf[e - 1] == 13:
            e -= 1
        starts[k] = s
        ends[k] = e
    return starts, ends


@nb.njit(cache=True, nogil=True)
def find_byte(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, byte: int) -> np.ndarray:
    """Per slice, the offset of the first `byte` in buf[start:end] (end if none; -1 if null)."""
    out = np.empty(len(starts), np.int64)
    for i in range(len(starts)):
        s = starts[i]
        if s < 0:
            out[i] = -1
            continue
        e = ends[i]
        j = s
        while j < e and buf[j] != byte:
            j += 1
        out[i] = j
    return out


@nb.njit(cache=True, nogil=True)
def _gather(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(starts)
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    total = 0
    for i in range(n):
        if starts[i] >= 0:
            total += ends[i] - starts[i]
        offsets[i + 1] = total
    data = np.empty(total, np.uint8)
    for i in range(n):
        s = starts[i]
        if s >= 0:
            o = offsets[i]
            for j in range(ends[i] - s):
                data[o + j] = buf[s + j]
    return offsets, data


def string_column(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """An Arrow string column of the slices buf[start:end] (null where start < 0)."""
    offsets, data = _gather(buf, starts, ends)
    valid = starts >= 0
    n = len(starts)
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    arr = pa.Array.from_buffers(pa.large_string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)],
                                null_count=int(n - valid.sum()))
    return arr.cast(pa.string())


_HEX = np.array([48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 97, 98, 99, 100, 101, 102], np.uint8)
# JSON's two-character escapes, indexed by the byte: 0 where the byte needs \u00XX
_SHORT = np.zeros(128, np.uint8)
for _c, _e in ((8, 98), (9, 116), (10, 110), (12, 102), (13, 114), (34, 34), (92, 92)):
    _SHORT[_c] = _e


@nb.njit(**NO_REFCOUNT)
def json_string_len(src: np.ndarray, s: int, e: int) -> int:
    """Length of src[s:e] once escaped as JSON string content (without the quotes)."""
    n = 0
    for j in range(s, e):
        c = src[j]
        if c == 34 or c == 92:
            n += 2
        elif c < 32:
            n += 2 if _SHORT[c] else 6
        else:
            n += 1
    return n


_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_BELOW_SPACE = np.uint64(0x2020202020202020)
_QUOTES = np.uint64(0x2222222222222222)
_BACKSLASHES = np.uint64(0x5C5C5C5C5C5C5C5C)


@nb.njit(inline="always", **NO_REFCOUNT)
def _word_needs_escape(w):  # noqa: ANN001, ANN202
    """Does any byte of w need a JSON escape: below 0x20, '"' or '\\'? (Bitwise: a byte
    below n makes (w - n per byte) & ~w set that byte's high bit, exactly for n <= 0x80;
    an equal byte is a zero byte of the XOR.)"""
    below = (w - _BELOW_SPACE) & ~w
    q = w ^ _QUOTES
    b = w ^ _BACKSLASHES
    return ((below | ((q - _ONES) & ~q) | ((b - _ONES) & ~b)) & _HIGH) != np.uint64(0)


@nb.njit(**NO_REFCOUNT)
def put_json_string(src: np.ndarray, s: int, e: int, out: np.ndarray, o: int) -> int:
    """Write src[s:e] escaped as JSON string content at out[o:]; returns the new offset.
    UTF-8 bytes are copied as they are (the input is valid UTF-8). Eight bytes at a time
    while none of them needs an escape (the caller made room for the escaped string, which
    is at least as long), then byte by byte."""
    while s + 8 <= e and o + 8 <= out.shape[0]:
        w = load_u64(src, s)
        if _word_needs_escape(w):
            break
        store_u64(out, o, w)
        s += 8
        o += 8
    for j in range(s, e):
        c = src[j]
        if c == 34 or c == 92:
            out[o] = 92
            out[o + 1] = c
            o += 2
        elif c < 32:
            out[o] = 92
            if _SHORT[c]:
                out[o + 1] = _SHORT[c]
                o += 2
            else:
                out[o + 1] = 117  # \u00XX
                out[o + 2] = 48
                out[o + 3] = 48
                out[o + 4] = _HEX[c >> 4]
                out[o + 5] = _HEX[c & 15]
                o += 6
        else:
            out[o] = c
            o += 1
    return o


@nb.njit(cache=True, nogil=True, inline="always")
def uuid_chars(buf, s, e):  # noqa: ANN001, ANN201
    """Are buf[s:e] all hex digits or '-' (the 36 characters of a bracketed instance uuid)?"""
    for j in range(s, e):
        c = buf[j]
        if not (48 <= c <= 57 or 97 <= c <= 102 or 65 <= c <= 70 or c == 45):
            return False
    return True
