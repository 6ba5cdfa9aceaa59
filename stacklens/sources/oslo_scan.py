"""The compiled header scanner of oslo.log text lines (see oslo_log.py for the format).

One pass over every line fills, per line, the byte offsets of each header field, the
timestamp (ns, as written: local time) and the pid. Offsets are -1 where a field is absent.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from stacklens.sources.textscan import days_from_civil, fits_ns, parse_digits, parse_fraction, uuid_chars, valid_date

# Field slots in the offsets matrix.
PREFIX, LEVEL, LOGGER, CTX, REQ, GREQ, USER, PROJECT, MSG, INSTANCE = range(10)
NSLOTS = 10

_LEVELS = [b"TRACE", b"DEBUG", b"INFO", b"AUDIT", b"WARNING", b"WARN", b"ERROR", b"CRITICAL", b"FATAL"]
LEVEL_BYTES = np.zeros((len(_LEVELS), 8), np.uint8)
LEVEL_LENS = np.array([len(x) for x in _LEVELS], np.int64)
for _i, _l in enumerate(_LEVELS):
    LEVEL_BYTES[_i, : len(_l)] = np.frombuffer(_l, np.uint8)

@nb.njit(cache=True, nogil=True)
def _is_req_id(buf, s, e):
    # req-<uuid>: 40 bytes
    return (e - s == 40 and buf[s] == 114 and buf[s + 1] == 101 and buf[s + 2] == 113
            and buf[s + 3] == 45)


@nb.njit(cache=True, nogil=True)
def _is_placeholder(buf, s, e):
    # "-" or "None"
    if e - s == 1 and buf[s] == 45:
        return True
    return (e - s == 4 and buf[s] == 78 and buf[s + 1] == 111 and buf[s + 2] == 110
            and buf[s + 3] == 101)


@nb.njit(cache=True, nogil=True)
def scan_headers(buf, starts, ends, level_bytes, level_lens):
    """Per line: valid header?, ts (ns, local), pid, level index, offsets[NSLOTS, 2], and
    whether ts fits int64 ns (where it does not, ts holds the seconds, for folding only)."""
    n = len(starts)
    valid = np.zeros(n, np.bool_)
    ts_ok = np.ones(n, np.bool_)
    ts = np.zeros(n, np.int64)
    pid = np.zeros(n, np.int64)
    level = np.full(n, -1, np.int64)
    off = np.full((10, 2, n), -1, np.int64)
    tok_s = np.empty(4, np.int64)
    tok_e = np.empty(4, np.int64)
    for i in range(n):
        p = starts[i]
        e = ends[i]
        if p >= e:
            continue
        c = buf[p]
        if c < 48 or c > 57:  # optional file-name prefix: a token not starting with a digit
            if c == 32 or c == 9:
                continue
            q = p
            while q < e and buf[q] != 32:
                q += 1
            if q >= e:
                continue
            off[0, 0, i] = p
            off[0, 1, i] = q
            p = q + 1
        # date YYYY-MM-DD and a space
        if p + 11 > e or buf[p + 4] != 45 or buf[p + 7] != 45 or buf[p + 10] != 32:
            continue
        y = parse_digits(buf, p, 4)
        mo = parse_digits(buf, p + 5, 2)
        d = parse_digits(buf, p + 8, 2)
        if not valid_date(y, mo, d):
            continue
        p += 11
        # time HH:MM:SS[.fff]
        if p + 8 > e or buf[p + 2] != 58 or buf[p + 5] != 58:
            continue
        hh = parse_digits(buf, p, 2)
        mi = parse_digits(buf, p + 3, 2)
        ss = parse_digits(buf, p + 6, 2)
        if hh < 0 or hh > 23 or mi < 0 or mi > 59 or ss < 0 or ss > 60:
            continue
        p += 8
        frac = 0
        if p < e and (buf[p] == 46 or buf[p] == 44):
            frac, p, nd = parse_fraction(buf, p + 1, e)
            if nd == 0:
                continue
        if p >= e or buf[p] != 32:
            continue
        p += 1
        # pid
        q = p
        v = 0
        while q < e and 48 <= buf[q] <= 57:
            v = v * 10 + (buf[q] - 48)
            q += 1
        if q == p or q >= e or buf[q] != 32:
            continue
        pid[i] = v
        p = q + 1
        # level
        q = p
        while q < e and buf[q] != 32:
            q += 1
        lv = -1
        for k in range(len(level_lens)):
            if level_lens[k] == q - p:
                same = True
                for j in range(q - p):
                    if buf[p + j] != level_bytes[k, j]:
                        same = False
                        break
                if same:
                    lv = k
                    break
        if lv < 0 or q >= e:
            continue
        level[i] = lv
        off[1, 0, i] = p
        off[1, 1, i] = q
        p = q + 1
        # logger
        q = p
        while q < e and buf[q] != 32:
            q += 1
        if q == p:
            continue
        off[2, 0, i] = p
        off[2, 1, i] = q
        p = q + 1 if q < e else e
        secs = ((days_from_civil(y, mo, d) * 24 + hh) * 60 + mi) * 60 + ss
        if fits_ns(secs, frac):
            ts[i] = secs * 1_000_000_000 + frac
        else:  # years before 1678 or after 2261: no int64 ns (the reader skips the record)
            ts[i] = secs
            ts_ok[i] = False
        valid[i] = True
        # context bracket, unless the message starts with oslo's "[instance: …]"
        msg = p
        if p < e and buf[p] == 91 and not (p + 10 < e and buf[p + 1] == 105 and buf[p + 9] == 58):
            q = p + 1
            while q < e and buf[q] != 93:
                q += 1
            if q < e:
                off[3, 0, i] = p + 1
                off[3, 1, i] = q
                msg = q + 1
                if msg < e and buf[msg] == 32:
                    msg += 1
                # up to 4 space-separated tokens: [global] request user project
                nt = 0
                a = p + 1
                while a < q and nt < 4:
                    b = a
                    while b < q and buf[b] != 32:
                        b += 1
                    tok_s[nt] = a
                    tok_e[nt] = b
                    nt += 1
                    a = b + 1
                r0 = nt > 0 and _is_req_id(buf, tok_s[0], tok_e[0])
                r1 = nt > 1 and _is_req_id(buf, tok_s[1], tok_e[1])
                p0 = nt > 0 and _is_placeholder(buf, tok_s[0], tok_e[0])
                first = -1
                if r1 and (r0 or p0):
                    first = 1
                    if r0:
                        off[5, 0, i] = tok_s[0]
                        off[5, 1, i] = tok_e[0]
                elif r0:
                    first = 0
                if first >= 0:
                    off[4, 0, i] = tok_s[first]
                    off[4, 1, i] = tok_e[first]
                    for slot, t in ((6, first + 1), (7, first + 2)):
                        if t < nt and not (tok_e[t] - tok_s[t] == 1 and buf[tok_s[t]] == 45):
                            off[slot, 0, i] = tok_s[t]
                            off[slot, 1, i] = tok_e[t]
        off[8, 0, i] = msg
        off[8, 1, i] = e
        # [instance: <36 chars>]
        if msg + 48 <= e and buf[msg] == 91 and buf[msg + 1] == 105 and buf[msg + 9] == 58 \
                and buf[msg + 10] == 32 and buf[msg + 47] == 93:
            if uuid_chars(buf, msg + 11, msg + 47):
                off[9, 0, i] = msg + 11
                off[9, 1, i] = msg + 47
    return valid, ts, pid, level, off, ts_ok


@nb.njit(cache=True, nogil=True)
def same_record_as_previous(buf, hdr_idx, ts, pid, off):
    """For consecutive header lines: True where a line is oslo.log's exception-prefix
    continuation of the header before it (same ts, pid and logger, no context bracket)."""
    m = len(hdr_idx)
    out = np.zeros(m, np.bool_)
    for k in range(1, m):
        i = hdr_idx[k]
        j = hdr_idx[k - 1]
        if off[3, 0, i] >= 0 or ts[i] != ts[j] or pid[i] != pid[j]:
            continue
        a, b = off[2, 0, i], off[2, 1, i]
        c, d = off[2, 0, j], off[2, 1, j]
        if b - a != d - c:
            continue
        same = True
        for t in range(b - a):
            if buf[a + t] != buf[c + t]:
                same = False
                break
        out[k] = same
    return out
