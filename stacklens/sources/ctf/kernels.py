"""The CTF path's compiled kernels (numba): the stream decoder that runs the layout programs
(`decode.py` compiles them), the JSON writer of the event rows' `fields` (`rowjson.py` makes
its programs) and the string gather. Callers reach them through `compiled.kernels()`, which
gives these, or the same functions built ahead of time (`aot.py`) so that an ingest neither
imports numba nor compiles: see `compiled.py`.

Compiled code never trusts input: see `decode.py`'s docstring for what is checked where.
"""

from __future__ import annotations

import numba
import numpy as np

from stacklens.sources.swar import NO_REFCOUNT, load_u64, store_u64
from stacklens.sources.textscan import put_json_string

from .isa import *  # noqa: F403 (the instruction sets, as compile-time constants)


# --- the decoder ----------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _read_bits(data, byte0, shift, size, be):
    nbytes = (shift + size + 7) >> 3
    v = np.uint64(0)
    if be == 0:
        if shift == 0:
            for i in range(nbytes):
                v |= np.uint64(data[byte0 + i]) << np.uint64(8 * i)
        else:
            for i in range(nbytes):
                b = np.uint64(data[byte0 + i])
                s = 8 * i - shift
                if s >= 0:
                    v |= b << np.uint64(s)
                else:
                    v |= b >> np.uint64(-s)
    else:
        if nbytes == 1:
            v = np.uint64(data[byte0]) >> np.uint64(8 - shift - size)
        else:
            v = np.uint64(data[byte0]) & np.uint64(0xFF >> shift)
            for i in range(1, nbytes - 1):
                v = (v << np.uint64(8)) | np.uint64(data[byte0 + i])
            tail = nbytes * 8 - shift - size
            v = (v << np.uint64(8 - tail)) | (np.uint64(data[byte0 + nbytes - 1]) >> np.uint64(tail))
    if size < 64:
        v &= (np.uint64(1) << np.uint64(size)) - np.uint64(1)
    return v


@numba.njit(cache=True, inline="always")
def _aligned(bit, al):
    """`bit` rounded up to a multiple of `al` (a power of two; 0 or 1: unaligned)."""
    return (bit + al - 1) & ~(al - 1) if al > 1 else bit


@numba.njit(inline="always", **NO_REFCOUNT)  # allocates nothing: no atomic reference counts per call
def _exec(ops, vtab, pc, base, data, P, st, buf, regs, stack):
    """Run the program at `pc` writing slots from buf[base]. Returns a status code."""
    sp = 0
    while True:
        op = ops[pc, 0]
        if op == OP_END:
            return OK
        elif op == OP_INT:
            bit = _aligned(st[S_BIT], ops[pc, 4])
            size = ops[pc, 2]
            if bit + size > st[S_END]:
                return E_TRUNC
            flags = ops[pc, 3]
            b0 = P + (bit >> 3)
            shift = bit & 7
            if LITTLE_ENDIAN_HOST and (flags & F_BE) == 0 and shift + size <= 64 and b0 + 8 <= data.shape[0]:
                # little-endian and within one 8-byte word that lies inside the file (the
                # content check above bounds the field, not the word): one unaligned load
                u = load_u64(data, b0) >> np.uint64(shift)
                if size < 64:
                    u &= (np.uint64(1) << np.uint64(size)) - np.uint64(1)
            else:
                u = _read_bits(data, b0, shift, size, flags & F_BE)
            v = np.int64(u)
            if flags & F_SIGNED and size < 64:
                if (u >> np.uint64(size - 1)) & np.uint64(1):
                    v = v - (np.int64(1) << size)
            st[S_BIT] = bit + size
            slot = ops[pc, 1]
            if slot >= 0:
                buf[base + slot] = v
            r = ops[pc, 5]
            if r >= 0:
                regs[r] = v
            if flags > F_BE:
                if flags & F_CLOCK:
                    if size >= 64:
                        st[S_CLOCK] = v
                    else:
                        mask = (np.int64(1) << size) - 1
                        clk = st[S_CLOCK]
                        if v < (clk & mask):
                            clk += np.int64(1) << size
                        st[S_CLOCK] = (clk & ~mask) | v
                if flags & F_ID:
                    st[S_ID] = v
                if flags & F_PSIZE:
                    st[S_PSIZE] = v
                    st[S_HAVE] |= HAVE_PSIZE
                if flags & F_CSIZE:
                    st[S_CSIZE] = v
                    st[S_HAVE] |= HAVE_CSIZE
                if flags & F_MAGIC:
                    if v != CTF_MAGIC:
                        st[S_ERRV] = v
                        return E_MAGIC
                if flags & F_SID:
                    st[S_SID] = v
                if flags & F_DISC:
                    st[S_DISC] = v
            pc += 1
        elif op == OP_ALIGN:
            st[S_BIT] = _aligned(st[S_BIT], ops[pc, 1])
            if st[S_BIT] > st[S_END]:
                return E_TRUNC
            pc += 1
        elif op == OP_STRING:
            bit = (st[S_BIT] + 7) & ~7
            start = P + (bit >> 3)
            end = P + (st[S_END] >> 3)
            i = start
            while i < end and data[i] != 0:
                i += 1
            if i >= end:
                return E_STRING
            slot = ops[pc, 1]
            buf[base + slot] = start
            buf[base + slot + 1] = i - start
            st[S_BIT] = (i + 1 - P) << 3
            pc += 1
        elif op == OP_CHARS:
            bit = _aligned(st[S_BIT], ops[pc, 4])
            n = ops[pc, 2]
            if n < 0:
                n = regs[ops[pc, 3]]
            if n < 0 or n > (st[S_END] - bit) >> 3:  # by division: n * 8 could wrap
                st[S_ERRV] = n
                return E_LEN
            start = P + (bit >> 3)
            i = start
            while i < start + n and data[i] != 0:
                i += 1
            slot = ops[pc, 1]
            buf[base + slot] = start
            buf[base + slot + 1] = i - start
            st[S_BIT] = bit + n * 8
            pc += 1
        elif op == OP_FLOAT:
            bit = _aligned(st[S_BIT], ops[pc, 4])
            size = ops[pc, 2]
            if bit + size > st[S_END]:
                return E_TRUNC
            u = _read_bits(data, P + (bit >> 3), bit & 7, size, ops[pc, 3] & F_BE)
            buf[base + ops[pc, 1]] = np.int64(u)
            st[S_BIT] = bit + size
            pc += 1
        elif op == OP_LOOP:
            st[S_BIT] = _aligned(st[S_BIT], ops[pc, 7])
            if st[S_BIT] > st[S_END]:
                return E_TRUNC
            n = ops[pc, 2]
            if n < 0:
                n = regs[ops[pc, 3]]
            minbits = ops[pc, 6]
            left = st[S_END] - st[S_BIT]
            # compared by division: n * minbits or n * k could wrap around int64
            if n < 0 or (minbits > 0 and n > left // minbits) or (minbits == 0 and n > ZERO_BIT_ELEMENTS):
                st[S_ERRV] = n
                return E_LEN
            if minbits == 0:
                # elements that may take no bits: bounded work per stream, whatever the data
                st[S_ZWORK] += n
                if st[S_ZWORK] > st[S_ZMAX]:
                    st[S_ERRV] = n
                    return E_ZWORK
            k = ops[pc, 4]
            atop = st[S_ATOP]
            if k > 0 and n > (st[S_CAP] - atop) // k:
                st[S_ERRV] = n
                return FULL
            slot = ops[pc, 1]
            buf[base + slot] = atop
            buf[base + slot + 1] = n
            if n == 0:
                pc = ops[pc, 5]
            else:
                if sp + 3 > stack.shape[0]:
                    return E_DEPTH
                stack[sp] = pc
                stack[sp + 1] = n
                stack[sp + 2] = base
                sp += 3
                base = atop
                st[S_ATOP] = atop + n * k
                pc += 1
        elif op == OP_LOOP_END:
            if sp < 3:
                return E_DEPTH  # unreachable for compiled programs; a guard all the same
            begin = stack[sp - 3]
            stack[sp - 2] -= 1
            if stack[sp - 2] > 0:
                base += ops[begin, 4]
                pc = begin + 1
            else:
                base = stack[sp - 1]
                sp -= 3
                pc += 1
        elif op == OP_VARIANT:
            tag = regs[ops[pc, 2]]
            t0 = ops[pc, 3]
            target = -1
            opt = -1
            for j in range(t0, t0 + ops[pc, 4]):
                if vtab[j, 0] <= tag <= vtab[j, 1]:
                    target = vtab[j, 2]
                    opt = vtab[j, 3]
                    break
            if target < 0:
                st[S_ERRV] = tag
                return E_VARIANT
            buf[base + ops[pc, 1]] = opt
            pc = target
        elif op == OP_JUMP:
            pc = ops[pc, 1]
        elif op == OP_OPT:
            sel = regs[ops[pc, 2]]
            n = ops[pc, 4]
            present = False
            if n < 0:
                present = sel != 0
            else:
                t0 = ops[pc, 3]
                for j in range(t0, t0 + n):
                    if vtab[j, 0] <= sel <= vtab[j, 1]:
                        present = True
                        break
            buf[base + ops[pc, 1]] = 1 if present else 0
            pc = pc + 1 if present else ops[pc, 5]
        elif op == OP_BLOB:
            bit = (st[S_BIT] + 7) & ~7
            n = ops[pc, 2]
            if bit > st[S_END] or n > (st[S_END] - bit) >> 3:
                return E_TRUNC
            buf[base + ops[pc, 1]] = P + (bit >> 3)
            st[S_BIT] = bit + n * 8
            pc += 1
        else:
            return E_DEPTH


@numba.njit(inline="always", **NO_REFCOUNT)
def _packet_begin(data, P, st):
    """The state before the packet header and context at byte P are decoded."""
    st[S_BIT] = 0
    st[S_END] = (data.shape[0] - P) * 8
    st[S_HAVE] = 0
    st[S_PSIZE] = 0
    st[S_CSIZE] = 0
    st[S_DISC] = 0
    st[S_SID] = -1


@numba.njit(inline="always", **NO_REFCOUNT)
def _packet_sizes(data, P, st):
    """Check the sizes the packet header and context at byte P gave: on OK, st[S_PSIZE] and
    st[S_CSIZE] are the packet and content sizes in bits (at least the header, content <=
    packet <= the rest of the file), st[S_END] the end of the content and st[S_PKTEND] the
    byte where the next packet starts."""
    left = (data.shape[0] - P) * 8
    # a size field of 64 bits may hold any bit pattern: negative here means >= 2^63
    psize = st[S_PSIZE] if st[S_HAVE] & HAVE_PSIZE else left
    csize = st[S_CSIZE] if st[S_HAVE] & HAVE_CSIZE else psize
    if psize <= 0 or psize % 8 != 0:
        st[S_ERRV] = psize
        return E_PSIZE
    if csize < st[S_BIT] or csize > psize:
        st[S_ERRV] = csize
        return E_CSIZE
    if psize > left:
        # a truncated stream or a damaged size (the conformance corpus has such a trace
        # among those to reject): not read
        st[S_ERRV] = psize
        return E_PEND
    st[S_PKTEND] = P + psize // 8
    st[S_END] = csize
    st[S_PSIZE] = psize
    st[S_CSIZE] = csize
    if st[S_WANTSID] >= 0 and st[S_SID] >= 0 and st[S_SID] != st[S_WANTSID]:
        st[S_ERRV] = st[S_SID]
        return E_SID  # its size is known (S_PKTEND): the caller may skip it
    return OK


@numba.njit(**NO_REFCOUNT)
def run_program(ops, vtab, pc, base, data, P, st, buf, regs, stack):
    """One program run on its own (from Python): `_exec`, compiled apart."""
    return _exec(ops, vtab, pc, base, data, P, st, buf, regs, stack)


# what decode_stream's one call of _exec runs next
RUN_PACKET, RUN_HEADER, RUN_SCTX, RUN_CLASS = range(4)


@numba.njit(**NO_REFCOUNT)
def decode_stream(data, ops, vtab, entries, class_ids, class_index, class_k, st, buf, regs, stack,
                  ev_class, ev_ts, ev_base, ev_pkt, pkt_base, pkt_off, pkt_size, pkt_csize):
    """Decode events of one stream file from the state in `st` until it ends or a buffer is
    full. entries = [packet program, header program, stream-event-context program,
    class programs...]; class_index[id] = the class of a small id (or -1), empty when ids are
    not small (then a binary search over class_ids); class_k = [slots of header + stream
    event context, slots of each class]. Packet records go to buf too (their base in
    pkt_base). Returns (status, events, packets) decoded in this call; on FULL the caller
    flushes and calls again.

    Every program (packet, event header, stream event context, event class) runs from one
    call site, a state machine around it: `_exec` is inlined there once. As a call it passed
    about 70 words of array descriptors, three times per event; inlined, decoding takes
    ~40 % less time, and one copy keeps the compilation short."""
    nev = 0
    npk = 0
    n = data.shape[0]
    kh = class_k[0]
    kp = class_k[class_k.shape[0] - 1]  # last entry: slots of the packet record
    maxev = ev_class.shape[0]
    maxpk = pkt_off.shape[0]
    if st[S_ZMAX] == 0:
        st[S_ZMAX] = ZERO_BIT_ELEMENTS + 16 * n
    ci = 0
    has_sctx = ops[entries[2], 0] != OP_END
    run = -1  # nothing under way: a packet or an event starts
    P = st[S_P]
    pc = 0
    at = 0
    base = 0
    bit0 = 0
    clk0 = 0
    while True:
        if run < 0:
            P = st[S_P]
            if st[S_PHASE] == 0:
                # start of a packet
                if P >= n:
                    return DONE, nev, npk
                if npk >= maxpk:
                    return FULL, nev, npk
                base = st[S_ATOP]
                if base + kp > st[S_CAP]:
                    return FULL, nev, npk
                st[S_ATOP] = base + kp
                _packet_begin(data, P, st)
                run, pc, at = RUN_PACKET, entries[0], base
            else:
                # an event of the current packet
                if st[S_BIT] >= st[S_END] or st[S_SKIPEV]:
                    st[S_P] = st[S_PKTEND]
                    st[S_PHASE] = 0
                    continue
                if nev >= maxev:
                    return FULL, nev, npk
                bit0 = st[S_BIT]
                clk0 = st[S_CLOCK]
                base = st[S_ATOP]
                if base + kh > st[S_CAP]:
                    return FULL, nev, npk
                st[S_ATOP] = base + kh
                st[S_ID] = 0
                run, pc, at = RUN_HEADER, entries[1], base
        status = _exec(ops, vtab, pc, at, data, P, st, buf, regs, stack)
        if run == RUN_PACKET:
            if status == OK:
                status = _packet_sizes(data, P, st)
            if status != OK:
                if status == FULL:
                    st[S_ATOP] = base
                return status, nev, npk
            pkt_off[npk] = P
            pkt_size[npk] = st[S_PSIZE]
            pkt_csize[npk] = st[S_CSIZE]
            pkt_base[npk] = base
            st[S_NPKT] += 1
            npk += 1
            st[S_PHASE] = 1
            run = -1
            continue
        if status == OK and run == RUN_HEADER:
            eid = st[S_ID]
            if class_index.shape[0] > 0:
                # ids of the stream class are small: a table gives the class
                lo = class_index[eid] if 0 <= eid < class_index.shape[0] else -1
                if lo < 0:
                    lo = class_ids.shape[0]
            else:
                # binary search over the sorted ids
                lo = 0
                hi = class_ids.shape[0]
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if class_ids[mid] < eid:
                        lo = mid + 1
                    else:
                        hi = mid
            if lo >= class_ids.shape[0] or class_ids[lo] != eid:
                st[S_ERRV] = eid
                status = E_EVID
            elif base + kh + class_k[lo + 1] > st[S_CAP]:
                status = FULL
            else:
                ci = lo
                st[S_ATOP] = base + kh + class_k[ci + 1]
                if has_sctx:
                    run, pc, at = RUN_SCTX, entries[2], base
                else:
                    run, pc, at = RUN_CLASS, entries[3 + ci], base + kh
                continue
        elif status == OK and run == RUN_SCTX:
            run, pc, at = RUN_CLASS, entries[3 + ci], base + kh
            continue
        if status == OK and st[S_BIT] == bit0:
            status = E_EMPTY  # would decode the same event forever
        if status != OK:
            # roll back to the event start: after a flush (FULL) the next call resumes here
            st[S_BIT] = bit0
            st[S_CLOCK] = clk0
            st[S_ATOP] = base
            return status, nev, npk
        ev_class[nev] = ci
        ev_ts[nev] = st[S_CLOCK]
        ev_base[nev] = base
        ev_pkt[nev] = st[S_NPKT] - 1
        nev += 1
        run = -1


@numba.njit(**NO_REFCOUNT)
def _gather_strings(data, starts, offsets, out):  # noqa: ANN001, ANN201
    """out[offsets[i]:offsets[i + 1]] = data[starts[i]:...], one copy loop per string. Returns
    the first string outside `data` (nothing of it copied), or -1. Empty strings are not looked
    at (a null's start slot may hold anything)."""
    size = data.shape[0]
    for i in range(starts.shape[0]):
        s, o = starts[i], offsets[i]
        n = offsets[i + 1] - o
        if n == 0:
            continue
        if n < 0 or s < 0 or s > size - n or o + n > out.shape[0]:
            return i
        for j in range(n):
            out[o + j] = data[s + j]
    return -1



# --- the JSON writer ------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _put_null(out, o):
    """`null` written at out[o:] (room made by the caller): the new offset."""
    out[o] = 110
    out[o + 1] = 117
    out[o + 2] = 108
    out[o + 3] = 108
    return o + 4


# "00" .. "99": integers are written two digits per division
_PAIRS = np.frombuffer(b"".join(b"%02d" % i for i in range(100)), np.uint8).copy()
_POW10 = np.array([10 ** i for i in range(20)], np.uint64)


@numba.njit(cache=True, inline="always")
def _put_u64(out, o, u):
    """The decimal digits of u at out[o:] (no scratch array: one per call was a heap
    allocation per integer field): the new offset. The length comes from comparisons, then
    the digits from the end, two per division by 100 (half the divisions of one per digit,
    and none to count them)."""
    n = 1
    while n < 20 and u >= _POW10[n]:
        n += 1
    p = o + n
    while u >= np.uint64(100):
        q = u // np.uint64(100)
        r = np.int64(u - q * np.uint64(100)) * 2
        p -= 2
        out[p] = _PAIRS[r]
        out[p + 1] = _PAIRS[r + 1]
        u = q
    if u >= np.uint64(10):
        r = np.int64(u) * 2
        out[p - 2] = _PAIRS[r]
        out[p - 1] = _PAIRS[r + 1]
    else:
        out[p - 1] = 48 + np.uint8(u)
    return o + n


@numba.njit(inline="always", **NO_REFCOUNT)
def _put_lit(lits, s, m, out, o):
    """out[o:o + m] = lits[s:s + m], eight bytes at a time where both arrays have room for
    the last word's overshoot (bytes past o + m are written over next, or are past the end
    of the chunk's JSON), else byte by byte."""
    if o + m + 8 <= out.shape[0] and s + m + 8 <= lits.shape[0]:
        for j in range(0, m, 8):
            store_u64(out, o + j, load_u64(lits, s + j))
    else:
        for j in range(m):
            out[o + j] = lits[s + j]


@numba.njit(**NO_REFCOUNT)
def _write_events(ops, lits, entry, ev_class, ev_base, buf, data, out, offsets, stack, e0):
    """Write the JSON of events e0.. at out[offsets[e0]:], offsets[e + 1] after each; the
    first event that does not fit is left unwritten and returned (n when all are done)."""
    n = ev_class.shape[0]
    o = offsets[e0]
    for e in range(e0, n):
        pc = entry[ev_class[e]]
        if pc < 0:
            offsets[e + 1] = o
            continue
        base = ev_base[e]
        if o + 1 > out.shape[0]:
            return e
        out[o] = 123  # {
        o += 1
        members = 0
        sp = 0
        while True:
            op = ops[pc, 0]
            if op == J_END:
                break
            elif op == J_LIT:
                m = ops[pc, 2]
                if o + m > out.shape[0]:
                    return e
                _put_lit(lits, ops[pc, 1], m, out, o)
                o += m
                pc += 1
            elif op == J_KEY:
                m = ops[pc, 2]
                if o + (m + 1) > out.shape[0]:
                    return e
                if members:
                    out[o] = 44  # ,
                    o += 1
                members += 1
                _put_lit(lits, ops[pc, 1], m, out, o)
                o += m
                pc += 1
            elif op == J_INT:
                if o + 21 > out.shape[0]:
                    return e
                v = buf[base + ops[pc, 1]]
                if v < 0:
                    out[o] = 45  # -
                    o += 1
                    o = _put_u64(out, o, np.uint64(0) - np.uint64(v))
                else:
                    o = _put_u64(out, o, np.uint64(v))
                pc += 1
            elif op == J_U64:
                if o + 21 > out.shape[0]:
                    return e
                o = _put_u64(out, o, np.uint64(buf[base + ops[pc, 1]]))
                pc += 1
            elif op == J_STR:
                s = buf[base + ops[pc, 1]]
                m = buf[base + ops[pc, 1] + 1]
                if o + (6 * m + 2) > out.shape[0]:
                    return e
                out[o] = 34
                o += 1
                o = put_json_string(data, s, s + m, out, o)
                out[o] = 34
                o += 1
                pc += 1
            elif op == J_LIST:
                start = buf[base + ops[pc, 1]]
                count = buf[base + ops[pc, 1] + 1]
                if o + 2 > out.shape[0]:
                    return e
                out[o] = 91  # [
                o += 1
                if count <= 0:
                    out[o] = 93  # ]
                    o += 1
                    pc = ops[pc, 3]
                else:
                    stack[sp] = pc
                    stack[sp + 1] = count
                    stack[sp + 2] = base
                    sp += 3
                    base = start
                    pc += 1
            elif op == J_LIST_END:
                begin = stack[sp - 3]
                stack[sp - 2] -= 1
                if o + 1 > out.shape[0]:
                    return e
                if stack[sp - 2] > 0:
                    out[o] = 44
                    o += 1
                    base += ops[begin, 2]
                    pc = begin + 1
                else:
                    out[o] = 93
                    o += 1
                    base = stack[sp - 1]
                    sp -= 3
                    pc += 1
            elif op == J_IFSEL:
                if buf[base + ops[pc, 1]] != ops[pc, 2]:
                    if o + 4 > out.shape[0]:
                        return e
                    o = _put_null(out, o)
                    pc = ops[pc, 3]
                else:
                    pc += 1
            elif op == J_IFOPT:
                if buf[base + ops[pc, 1]] == 0:
                    if o + 4 > out.shape[0]:
                        return e
                    o = _put_null(out, o)
                    pc = ops[pc, 3]
                else:
                    pc += 1
            elif op == J_TOPOPT:
                if buf[base + ops[pc, 1]] == 0:
                    pc = ops[pc, 3]
                else:
                    pc += 1
            else:
                break
        if o + 1 > out.shape[0]:
            return e
        out[o] = 125  # }
        o += 1
        offsets[e + 1] = o
    return n
