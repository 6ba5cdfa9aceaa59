"""Compiled scanning of JSON documents (one per line) for the paths a reader needs.

One validating pass per document (RFC 8259 grammar: strings, escapes, numbers, literals,
nesting; UTF-8 is checked per block by the caller) records, for each wanted path, its value
(copied to a compact values buffer, with its span there) and what kind of value it is. The
compiled scanning code allocates nothing (its callers do, with NumPy) and runs without
numba's reference counting (swar.NO_REFCOUNT). The pass has two stages
per 64-byte block, after simdjson (Langdale & Lemire): vector compares (swar.py) classify the
block's bytes into masks, and 64-bit arithmetic on the masks finds escapes, the inside of
strings and the block's tokens; the grammar walks the tokens only. No Python object is
made per document: string columns and the `fields` JSON are then built from the spans
(string values are usually copied as they are written: their escaped text is already valid
JSON string content). A document that is not valid JSON is marked bad, as json.loads would
reject it.

Paths form a trie (`PathTrie`): each node is an object level, each entry a key that has a
slot (record the value), a child node (descend into the value if it is an object), or both.
A slot holds the first occurrence of its key.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
import sys

import numba as nb
import numpy as np
import pyarrow as pa

from stacklens.sources.swar import (HAS_COMPRESS, NO_REFCOUNT, byte_mask, compress_block, copy_bytes,
                                    escape_classes, json_classes, load_u64, popcount, store_u64,
                                    string_classes, trailing_zeros)
from stacklens.sources.textscan import (NS_MAX_SECONDS, days_from_civil, fits_ns, json_string_len, parse_digits, parse_fraction,
                                        put_json_string, uuid_chars, valid_date)

# Value kinds recorded per slot.
ABSENT, STR, STR_ESC, SCALAR, CONTAINER, NULL = 0, 1, 2, 3, 4, 5
MAX_DEPTH = 256
U0 = np.uint64(0)
U1 = np.uint64(1)
U63 = np.uint64(63)
ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
EVEN_BITS = np.uint64(0x5555555555555555)
ODD_BITS = np.uint64(0xAAAAAAAAAAAAAAAA)


HASH_SIZE = 64


@nb.njit(cache=True, nogil=True, inline="always")
def _key_hash(buf, s, e):
    n = e - s
    if n == 0:
        return 0
    return (n * 7 + buf[s] * 3 + buf[e - 1] * 5) & (HASH_SIZE - 1)


def _key_hash_py(b) -> int:
    n = len(b)
    return 0 if n == 0 else (n * 7 + int(b[0]) * 3 + int(b[-1]) * 5) & (HASH_SIZE - 1)


class BufferPool:
    """One reader's byte buffers, handed out again once nothing else holds them. A block's
    table keeps its documents buffer (Arrow refers to it without a copy) until the consumer
    drops the table; a reused buffer is already mapped and warm in cache, where a new one
    costs page faults (a few % of the notification reader's time, measured in separate
    processes)."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._buffers: list[np.ndarray] = []

    def get(self, n: int) -> np.ndarray:
        """A buffer of n bytes (contents undefined)."""
        for b in self._buffers:
            # held only by the list, `b` and getrefcount's argument: no view of it is alive
            if len(b) >= n and sys.getrefcount(b) <= 3:
                return b[:n]
        b = np.empty(max(n, 1), np.uint8)
        self._buffers.append(b)
        if len(self._buffers) > self.keep:  # forget the oldest (a table may still hold it)
            del self._buffers[0]
        return b[:n]


class PathTrie:
    """Wanted paths ("a.b.c", keys with dots quoted as in "payload.'nova_object.data'.uuid"
    are spelled as tuples) → slot numbers, compiled to flat arrays for the scanner."""

    def __init__(self, paths: list[tuple[str, ...]]):
        self.paths = [tuple(p) for p in paths]
        self.slot = {p: i for i, p in enumerate(self.paths)}
        nodes: list[dict[str, list]] = [{}]  # node → key → [slot, child]
        for i, path in enumerate(self.paths):
            node = 0
            for depth, key in enumerate(path):
                entry = nodes[node].setdefault(key, [-1, -1])
                if depth == len(path) - 1:
                    entry[0] = i
                else:
                    if entry[1] < 0:
                        entry[1] = len(nodes)
                        nodes.append({})
                    node = entry[1]
        keys = bytearray()
        key_s, key_e, ent_slot, ent_child = [], [], [], []
        node_first = []
        for node in nodes:
            node_first.append(len(key_s))
            for key, (slot, child) in node.items():
                b = key.encode()
                key_s.append(len(keys))
                keys += b
                key_e.append(len(keys))
                ent_slot.append(slot)
                ent_child.append(child)
        self.keys = np.frombuffer(bytes(keys) + bytes(8), np.uint8).copy()  # + room for 8-byte loads
        # per node, an open-addressing table (HASH_SIZE slots) of its entries by _key_hash
        node_hash = np.full((len(nodes), HASH_SIZE), -1, np.int64)
        for n, node in enumerate(nodes):
            if len(node) > HASH_SIZE * 3 // 4:
                raise ValueError(f"more than {HASH_SIZE * 3 // 4} wanted keys in one object")
            for k in range(node_first[n], node_first[n] + len(node)):
                h = _key_hash_py(keys[key_s[k]:key_e[k]])
                while node_hash[n, h] >= 0:
                    h = (h + 1) % HASH_SIZE
                node_hash[n, h] = k
        # the scanner's view, one array (fewer arguments for the compiled walk to keep live):
        # the entries' key starts, key ends, slots and child nodes, then the hash tables
        self.entries = len(key_s)
        self.trie = np.array(key_s + key_e + ent_slot + ent_child + node_hash.ravel().tolist(), np.int64)
        # how many wanted values one byte can belong to (a slot inside a slot's value)
        self.nesting = max(sum(1 for d in range(1, len(p) + 1) if p[:d] in self.slot) for p in self.paths)

    def scan(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
             pool: BufferPool | None = None):  # noqa: ANN201
        """(valid[n], vs[slots, n], ve[slots, n], kind[slots, n], values) for documents
        buf[s:e]: the spans are in `values`, a compact copy of the wanted values (in a
        buffer of `pool` if given)."""
        r = scan_documents(buf, starts, ends, self.keys, self.trie, self.entries, len(self.paths), -1, False,
                           False, *self._buffers(buf, False, False, pool))
        return r[:4] + (r[6],)

    def scan_packing(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, envelope: int,
                     unwrap: bool = False, pool: BufferPool | None = None):  # noqa: ANN201
        """scan() plus the documents packed end to end (docs, offsets[n + 1]): a valid line as
        written, or where its top-level slot `envelope` is a string, that string decoded (the
        envelope's inner document; the envelope slot's span is in docs); an invalid line is
        empty. With `unwrap`, an envelope's row is its inner document's: valid if that is,
        with its slots. Returns (valid, vs, ve, kind, values, docs, offsets); values and
        docs are in buffers of `pool` if given."""
        r = scan_documents(buf, starts, ends, self.keys, self.trie, self.entries, len(self.paths), envelope,
                           True, unwrap, *self._buffers(buf, True, unwrap, pool))
        return r[:4] + (r[6], r[4], r[5])

    def _buffers(self, buf: np.ndarray, build_docs: bool, unwrap: bool,
                 pool: BufferPool | None) -> tuple[np.ndarray, np.ndarray]:
        """The scanner's output buffers (values, documents), allocated here rather than in
        compiled code: NumPy asks for transparent huge pages on large arrays, the compiled
        allocator does not, and faulting in a block's size in 4 KB pages cost as much as
        decoding its envelopes. Slots nested in slots (like "extra" and "extra.request_id")
        are copied once per level: `nesting` bounds the values' size; an unwrapped
        envelope's inner document adds at most as much again. The documents buffer has 64
        bytes of room past its end for 64-byte stores."""
        get = pool.get if pool is not None else (lambda n: np.empty(n, np.uint8))
        vals = get(len(buf) * self.nesting * (2 if unwrap else 1))
        return vals, get(len(buf) + 64 if build_docs else 0)


@nb.njit(cache=True, nogil=True, inline="always")
def _is_hex(c):
    return (48 <= c <= 57) or (97 <= c <= 102) or (65 <= c <= 70)


@nb.njit(**NO_REFCOUNT)
def _number_end(buf, p, e):
    """End of the JSON number starting at p, or -1."""
    if p < e and buf[p] == 45:
        p += 1
    if p >= e:
        return -1
    c = buf[p]
    if c == 48:
        p += 1
    elif 49 <= c <= 57:
        while p < e and 48 <= buf[p] <= 57:
            p += 1
    else:
        return -1
    if p < e and buf[p] == 46:
        p += 1
        q = p
        while p < e and 48 <= buf[p] <= 57:
            p += 1
        if p == q:
            return -1
    if p < e and (buf[p] == 101 or buf[p] == 69):
        p += 1
        if p < e and (buf[p] == 43 or buf[p] == 45):
            p += 1
        q = p
        while p < e and 48 <= buf[p] <= 57:
            p += 1
        if p == q:
            return -1
    return p


@nb.njit(**NO_REFCOUNT)
def _literal_end(buf, p, e):
    """End of true/false/null at p and whether it is null, or (-1, False)."""
    c = buf[p]
    if c == 116 and p + 4 <= e and buf[p + 1] == 114 and buf[p + 2] == 117 and buf[p + 3] == 101:
        return p + 4, False
    if c == 102 and p + 5 <= e and buf[p + 1] == 97 and buf[p + 2] == 108 and buf[p + 3] == 115 \
            and buf[p + 4] == 101:
        return p + 5, False
    if c == 110 and p + 4 <= e and buf[p + 1] == 117 and buf[p + 2] == 108 and buf[p + 3] == 108:
        return p + 4, True
    return -1, False


@nb.njit(cache=True, nogil=True, inline="always")
def _copy_run(buf, a, n, out, o, roomy):
    """out[o:o + n] = buf[a:a + n], 16 bytes per step when `roomy` (both arrays have 16 bytes
    to spare past the run; a run between two escapes of an envelope is ~10 bytes: one step)."""
    if roomy:
        store_u64(out, o, load_u64(buf, a))
        store_u64(out, o + 8, load_u64(buf, a + 8))
        j = 16
        while j < n:
            store_u64(out, o + j, load_u64(buf, a + j))
            store_u64(out, o + j + 8, load_u64(buf, a + j + 8))
            j += 16
    else:
        copy_bytes(buf, a, n, out, o)


@nb.njit(cache=True, nogil=True, inline="always")
def _same_bytes(x, xa, y, ya, n):
    """x[xa:xa + n] == y[ya:ya + n], 8 bytes a step where both have 8 bytes to spare."""
    if xa + n + 8 <= len(x) and ya + n + 8 <= len(y):
        j = 0
        while j + 8 <= n:
            if load_u64(x, xa + j) != load_u64(y, ya + j):
                return False
            j += 8
        if j == n:
            return True
        tail = (U1 << np.uint64(8 * (n - j))) - U1
        return (load_u64(x, xa + j) ^ load_u64(y, ya + j)) & tail == U0
    for j in range(n):
        if x[xa + j] != y[ya + j]:
            return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _keep(buf, a, b, vals, vo, vs, ve, slot):
    """Copy a slot's value buf[a:b] to the values buffer while it is in cache: later passes
    read the compact values buffer rather than spans scattered over the whole block."""
    o = vo[0]
    n = b - a
    _copy_run(buf, a, n, vals, o, b + 16 <= len(buf) and o + n + 16 <= len(vals))
    vs[slot] = o
    ve[slot] = o + n
    vo[0] = o + n




@nb.njit(cache=True, nogil=True, inline="always")
def _prefix_xor(x):
    """Bit i = XOR of bits 0..i (a quote mask → inside-a-string mask)."""
    x ^= x << np.uint64(1)
    x ^= x << np.uint64(2)
    x ^= x << np.uint64(4)
    x ^= x << np.uint64(8)
    x ^= x << np.uint64(16)
    x ^= x << np.uint64(32)
    return x


@nb.njit(cache=True, nogil=True, inline="always")
def _escapes(bs, first_escaped):
    """(escaping backslashes, escaped bytes) of a block with backslash mask `bs` whose first
    byte is escaped by the previous block if first_escaped (0 or 1). In a run of backslashes
    every other one escapes the next byte, counting from the run's start: runs starting on
    an even bit escape from their even bits, the others from their odd bits. Adding each
    odd-starting run's first bit to the mask carries through (clears) exactly those runs."""
    b = bs & ~first_escaped
    starts = b & ~(b << U1)
    even_runs = (b + (starts & ODD_BITS)) & b
    escaping = (even_runs & EVEN_BITS) | (b & ~even_runs & ODD_BITS)
    return escaping, (escaping << U1) | first_escaped


@nb.njit(cache=True, nogil=True, inline="always")
def _pad_tail(buf, b, scratch):
    """scratch = buf[b:] padded with spaces to 64 bytes (loops: no array views, so that the
    scanners compile without reference counting)."""
    m = len(buf) - b
    for j in range(64):
        scratch[j] = buf[b + j] if j < m else 32


@nb.njit(cache=True, nogil=True, inline="always")
def _block_at(buf, b, scratch):
    """Where the 64 bytes at b can be loaded: buf itself, or for the buffer's last bytes a
    copy padded with spaces."""
    if b + 64 <= len(buf):
        return buf, b
    _pad_tail(buf, b, scratch)
    return scratch, 0


@nb.njit(cache=True, nogil=True, inline="always")
def _u_escapes_hex(buf, b, e, u):
    """Is each escaped 'u' of the block at b (mask u) followed by four hex digits before e?"""
    while u != U0:
        k = b + np.int64(trailing_zeros(u))
        u &= u - U1
        if k + 5 > e or not (_is_hex(buf[k + 1]) and _is_hex(buf[k + 2]) and _is_hex(buf[k + 3])
                             and _is_hex(buf[k + 4])):
            return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _close(buf, p, depth, st, vals, vo, vs, ve, kind):
    """Pop the container closed at p, keeping its text if it is a wanted slot; the new depth."""
    depth -= 1
    sl = st[4 * depth + 2]
    if sl >= 0 and kind[sl] == ABSENT:
        _keep(buf, st[4 * depth + 3], p + 1, vals, vo, vs, ve, sl)
        kind[sl] = CONTAINER
    return depth


@nb.njit(cache=True, nogil=True, inline="always")
def _block_tokens(buf, b, e, scratch, in_str, first_escaped, prev_scalar):
    """Tokens of the 64-byte block at b of a document ending at e: structural operators
    outside strings, unescaped quotes (both ends of every string) and the first byte of each
    run of other bytes outside strings (numbers, literals, or garbage the grammar rejects).
    Returns (tokens, escaping backslashes, in_str, first_escaped, prev_scalar, ok) with the
    carries for the next block; ok is False for a control byte in a string or a bad escape."""
    src, at = _block_at(buf, b, scratch)
    q, bs, ctrl, ws, op = json_classes(src, at)
    lim = ALL
    if e - b < 64:  # bytes past the document count as whitespace
        lim = (U1 << np.uint64(e - b)) - U1
        q &= lim
        bs &= lim
        ctrl &= lim
        op &= lim
        ws |= ~lim
    escaping = U0
    if (bs | first_escaped) != U0:
        escaping, escaped = _escapes(bs, first_escaped)
        first_escaped = escaping >> U63
        valid, u = escape_classes(src, at)
        if escaped & ~valid & lim != U0:
            return U0, U0, in_str, first_escaped, prev_scalar, False
        u &= escaped
        if not _u_escapes_hex(buf, b, e, u):
            return U0, U0, in_str, first_escaped, prev_scalar, False
        q &= ~escaped
    inside = _prefix_xor(q) ^ in_str
    if ctrl & inside != U0:
        return U0, U0, in_str, first_escaped, prev_scalar, False
    in_str = U0 - (inside >> U63)
    outside = ~inside
    scalar = ~(ws | op | q) & outside
    tokens = (op & outside) | q | (scalar & ~((scalar << U1) | prev_scalar))
    return tokens, escaping, in_str, first_escaped, scalar >> U63, True


@nb.njit(**NO_REFCOUNT)
def _decode_string(buf, a, e, out, o, scratch):
    """Validate the JSON string whose content starts at buf[a] (document end e) and write its
    decoded text to out[o:]: (closing quote or -1 if invalid, end in out, had escapes).

    One pass of 64-byte blocks finds the closing quote and checks control bytes and escapes;
    while every escape is \\" \\\\ or \\/ — an envelope's inner document has only those —
    decoding is copying the runs between escaping backslashes; a string with any other escape
    is then decoded byte by byte (_unescape_into)."""
    o0 = o
    pos = a
    run = a  # start of the bytes not yet copied
    # 16-byte copy steps may read and write up to 16 bytes past the string's end
    roomy = e + 16 <= len(buf) and o + (e - a) + 16 <= len(out)
    first_escaped = U0
    simple_only = True
    had_escape = False
    while pos < e:
        src, at = _block_at(buf, pos, scratch)
        q, bs, ctrl, not_escapable, not_itself, u = string_classes(src, at)
        lim = ALL
        if e - pos < 64:
            lim = (U1 << np.uint64(e - pos)) - U1
        escaping = U0
        if (bs | first_escaped) != U0:
            escaping, escaped = _escapes(bs & lim, first_escaped)
            first_escaped = escaping >> U63
            had_escape = True
            escaped &= lim
            if escaped & not_escapable != U0:
                return -1, o0, had_escape
            u &= escaped
            if not _u_escapes_hex(buf, pos, e, u):
                return -1, o0, had_escape
            simple_only = simple_only and escaped & not_itself == U0
            q &= ~escaped
        q &= lim
        before = ALL
        if q != U0:  # the closing quote: only the bytes before it belong to the string
            before = (q & (U0 - q)) - U1
        if ctrl & lim & before != U0:
            return -1, o0, had_escape
        if simple_only:
            o, run = _drop_escaping(buf, src, at, pos, escaping & before, before & lim, out, o, run, roomy)
        if q != U0:
            end = pos + np.int64(trailing_zeros(q))
            if simple_only:
                return end, _drop_escaping_end(buf, run, end, out, o, roomy), had_escape
            return end, _unescape_into(buf, a, end, out, o0), had_escape
        pos += 64
    return -1, o0, had_escape


# Decoding a block of a string whose escapes are all \" \\ \/ is dropping its escaping
# backslashes. With AVX-512 VBMI2 one compress instruction does it for the whole block (into
# a register, then one 64-byte store: out has 64 bytes of room past any string); elsewhere
# the runs between escaping backslashes are copied 16 bytes a step.


@nb.njit(cache=True, nogil=True, inline="always")
def _drop_escaping_compress(buf, src, at, pos, escaping, string_bytes, out, o, run, roomy):
    keep = string_bytes & ~escaping
    compress_block(src, at, keep, out, o)
    return o + np.int64(popcount(keep)), run


@nb.njit(cache=True, nogil=True, inline="always")
def _drop_escaping_end_compress(buf, run, end, out, o, roomy):
    return o  # the block's bytes before the closing quote are written already


@nb.njit(cache=True, nogil=True, inline="always")
def _drop_escaping_runs(buf, src, at, pos, escaping, string_bytes, out, o, run, roomy):
    while escaping != U0:
        k = pos + np.int64(trailing_zeros(escaping))
        escaping &= escaping - U1
        _copy_run(buf, run, k - run, out, o, roomy)
        o += k - run
        run = k + 1
    return o, run


@nb.njit(cache=True, nogil=True, inline="always")
def _drop_escaping_end_runs(buf, run, end, out, o, roomy):
    _copy_run(buf, run, end - run, out, o, roomy)
    return o + end - run


if HAS_COMPRESS:
    _drop_escaping, _drop_escaping_end = _drop_escaping_compress, _drop_escaping_end_compress
else:
    _drop_escaping, _drop_escaping_end = _drop_escaping_runs, _drop_escaping_end_runs


@nb.njit(cache=True, nogil=True, inline="always")
def _escapes_before(esc_base, esc_blk, k):
    """Escaping backslashes in the document before bit k of the current block."""
    if esc_base == U0 and esc_blk == U0:
        return U0
    return esc_base + popcount(esc_blk & ((U1 << np.uint64(k)) - U1))


@nb.njit(inline="always", **NO_REFCOUNT)
def _comma_after_value(buf, blk, tok, depth, st, cur_slot, cur_node):
    """After a value, mode 1 — or, when the block's next token is the comma that follows it,
    that comma taken in the same turn: mode 2 (a key) in an object, 0 (a value, nothing
    wanted) in an array. Returns (tok, mode, cur_slot, cur_node)."""
    if tok != U0 and depth > 0 and buf[blk + np.int64(trailing_zeros(tok))] == 44:
        if st[4 * depth - 4]:
            return tok & (tok - U1), 2, cur_slot, cur_node
        return tok & (tok - U1), 0, -1, -1
    return tok, 1, cur_slot, cur_node


@nb.njit(**NO_REFCOUNT)
def _scan_one(buf, s, e, keys, trie, m, vs, ve, kind, st, out, o, env_slot, vals, vo, scratch):
    """Validate buf[s:e] as one JSON value, recording wanted slots; True if valid. The string
    value of top-level slot `env_slot` is decoded into out[o:]: returns (valid, end in out,
    decoded start, decoded end) — start -1 if there was none.

    Two stages per 64-byte block, as simdjson does: vector compares classify the block and a
    few 64-bit operations find its tokens (structural operators and quotes outside strings,
    the first byte of each number or literal), checking string contents on the way; the
    grammar then walks only the tokens, a count-trailing-zeros at a time, never the bytes of
    strings."""
    env_s = -1
    env_e = -1
    # block state: start of the current block, its tokens not yet taken, its escaping
    # backslashes, the count of escaping backslashes before it, carries into the next one
    blk = s - 64
    tok = U0
    esc_blk = U0
    esc_base = U0
    in_str = U0
    first_escaped = U0
    prev_scalar = U0
    cur_slot = -1
    cur_node = 0
    depth = 0
    mode = 0  # 0: a value; 1: after a value; 2: a key; 3: the colon after a key
    can_close = False  # just after an opening bracket: the empty container's closing one
    while True:
        # the next token: p (-1 past the document's last)
        while tok == U0:
            blk += 64
            if blk >= e:
                break
            esc_base += popcount(esc_blk)
            tok, esc_blk, in_str, first_escaped, prev_scalar, ok = _block_tokens(
                buf, blk, e, scratch, in_str, first_escaped, prev_scalar)
            if not ok:
                return False, o, env_s, env_e
        if tok == U0:
            p = -1
        else:
            k = np.int64(trailing_zeros(tok))
            tok &= tok - U1
            p = blk + k
        if mode == 1:
            if depth == 0:
                return p < 0, o, env_s, env_e
            if p < 0:
                return False, o, env_s, env_e
            c = buf[p]
            top = depth - 1
            if c == 44:  # ,
                if st[4 * top]:
                    mode = 2
                else:
                    cur_slot = -1
                    cur_node = -1
                    mode = 0
                can_close = False
                continue
            if (st[4 * top] and c == 125) or (not st[4 * top] and c == 93):
                depth = _close(buf, p, depth, st, vals, vo, vs, ve, kind)
                continue
            return False, o, env_s, env_e
        if p < 0:
            return False, o, env_s, env_e
        c = buf[p]
        if mode == 3:
            if c != 58:  # :
                return False, o, env_s, env_e
            mode = 0
            continue
        if c == 34 and mode == 0 and env_slot >= 0 and cur_slot == env_slot and depth == 1 \
                and kind[cur_slot] == ABSENT:
            # the envelope: its inner document is decoded while the string is validated, and
            # the token walk resumes after the closing quote
            q, o2, esc = _decode_string(buf, p + 1, e, out, o, scratch)
            if q < 0:
                return False, o, env_s, env_e
            env_s = o
            env_e = o2
            o = o2
            vs[cur_slot] = env_s
            ve[cur_slot] = env_e
            kind[cur_slot] = STR_ESC if esc else STR
            blk = q + 1 - 64
            tok = U0
            esc_blk = U0
            in_str = U0
            first_escaped = U0
            prev_scalar = U0
            can_close = False
            mode = 1
            continue
        if c == 34:  # a string: its closing quote is the next token
            can_close = False
            esc_open = _escapes_before(esc_base, esc_blk, k)
            while tok == U0:
                blk += 64
                if blk >= e:
                    return False, o, env_s, env_e
                esc_base += popcount(esc_blk)
                tok, esc_blk, in_str, first_escaped, prev_scalar, ok = _block_tokens(
                    buf, blk, e, scratch, in_str, first_escaped, prev_scalar)
                if not ok:
                    return False, o, env_s, env_e
            k = np.int64(trailing_zeros(tok))
            tok &= tok - U1
            q = blk + k
            esc = _escapes_before(esc_base, esc_blk, k) != esc_open
            if mode == 2:  # a key
                cur_slot = -1
                cur_node = -1
                node = st[4 * depth - 3]
                klen = q - p - 1
                if node >= 0 and not esc:
                    h = _key_hash(buf, p + 1, q)
                    while True:
                        kk = trie[4 * m + node * HASH_SIZE + h]
                        if kk < 0:
                            break
                        if trie[m + kk] - trie[kk] == klen and _same_bytes(buf, p + 1, keys, trie[kk], klen):
                                cur_slot = trie[2 * m + kk]
                                cur_node = trie[3 * m + kk]
                                break
                        h = (h + 1) & (HASH_SIZE - 1)
                mode = 3
                if tok != U0:  # the colon, when it is in this block: taken here
                    if buf[blk + np.int64(trailing_zeros(tok))] != 58:
                        return False, o, env_s, env_e
                    tok &= tok - U1
                    mode = 0
                continue
            if cur_slot >= 0 and kind[cur_slot] == ABSENT:
                _keep(buf, p + 1, q, vals, vo, vs, ve, cur_slot)
                kind[cur_slot] = STR_ESC if esc else STR
            tok, mode, cur_slot, cur_node = _comma_after_value(buf, blk, tok, depth, st, cur_slot, cur_node)
            continue
        if mode == 2:
            if can_close and c == 125:  # {}
                can_close = False
                depth = _close(buf, p, depth, st, vals, vo, vs, ve, kind)
                mode = 1
                continue
            return False, o, env_s, env_e
        # mode 0: a value
        if c == 123 or c == 91:  # { [
            if depth >= MAX_DEPTH:
                return False, o, env_s, env_e
            st[4 * depth] = c == 123
            st[4 * depth + 1] = cur_node if c == 123 else -1
            st[4 * depth + 2] = cur_slot
            st[4 * depth + 3] = p
            depth += 1
            can_close = True
            if c == 123:
                mode = 2
            else:
                cur_slot = -1
                cur_node = -1
            continue
        if c == 93 and can_close:  # []
            can_close = False
            depth = _close(buf, p, depth, st, vals, vo, vs, ve, kind)
            mode = 1
            continue
        if c == 45 or 48 <= c <= 57:
            q = _number_end(buf, p, e)
            is_null = False
        else:
            q, is_null = _literal_end(buf, p, e)
        # a number or literal ends where its run of bytes ends
        if q < 0 or (q < e and not _ends_scalar(buf[q])):
            return False, o, env_s, env_e
        if cur_slot >= 0 and kind[cur_slot] == ABSENT:
            _keep(buf, p, q, vals, vo, vs, ve, cur_slot)
            kind[cur_slot] = NULL if is_null else SCALAR
        can_close = False
        tok, mode, cur_slot, cur_node = _comma_after_value(buf, blk, tok, depth, st, cur_slot, cur_node)


@nb.njit(cache=True, nogil=True, inline="always")
def _ends_scalar(c):
    """May byte c follow a number or literal (whitespace or an operator; a quote or bracket
    there is a token the grammar then rejects)?"""
    return c == 32 or c == 44 or c == 125 or c == 93 or c == 10 or c == 13 or c == 9 or c == 58 \
        or c == 34 or c == 123 or c == 91


def scan_documents(buf, starts, ends, keys, trie, m, nslots, env_slot, build_docs, unwrap, vals, out):  # noqa: ANN001, ANN201
    """Scan documents buf[starts[i]:ends[i]] (see PathTrie.scan_packing): the outputs are
    allocated here, so that the compiled loop allocates nothing and runs without
    reference counting."""
    n = len(starts)
    vo = np.zeros(1, np.int64)
    doc_off = np.zeros(n + 1, np.int64)
    valid = np.zeros(n, np.bool_)
    vs = np.full((nslots, n), -1, np.int64)
    ve = np.full((nslots, n), -1, np.int64)
    kind = np.zeros((nslots, n), np.int8)
    o = _scan_rows(buf, starts, ends, keys, trie, m, env_slot if build_docs else -1, build_docs, unwrap, vals, out,
                   vo, doc_off, valid, vs, ve, kind, np.zeros(4 * MAX_DEPTH, np.int64), np.empty(nslots, np.int64),
                   np.empty(nslots, np.int64), np.empty(nslots, np.int8), np.empty(64, np.uint8))
    return valid, vs, ve, kind, out[:o], doc_off, vals[:vo[0]]


@nb.njit(**NO_REFCOUNT)
def _scan_rows(buf, starts, ends, keys, trie, m, env_slot, build_docs, unwrap, vals, out, vo, doc_off, valid,
               vs, ve, kind, st, dvs, dve, dkind, scratch):
    """vals: the wanted values, copied end to end; out: the documents packed end to end (when
    build_docs): a valid line as written, or, when it has the top-level string `env_slot`
    (an envelope), that string decoded (PathTrie._buffers sizes both); st: per level of
    nesting, is an object, trie node, slot, start; dvs, dve, dkind: one document's slots
    (1-D, so that the walk indexes them without a stride). Returns the end in out."""
    n = len(starts)
    nslots = len(dkind)
    o = 0
    for i in range(n):
        s = starts[i]
        doc_off[i] = o
        if s < 0:
            continue
        for k in range(nslots):
            dkind[k] = ABSENT
        ok, o2, env_s, env_e = _scan_one(buf, s, ends[i], keys, trie, m, dvs, dve, dkind, st, out,
                                         o, env_slot, vals, vo, scratch)
        if ok and build_docs:
            if env_s >= 0:
                # the decoded envelope string is the document (it was written at o)
                o = o2
                if unwrap:  # its slots are the row's, read now while it is in cache
                    for k in range(nslots):
                        dkind[k] = ABSENT
                    ok, _o, _s, _e = _scan_one(out, env_s, env_e, keys, trie, m, dvs, dve, dkind, st, out, 0, -1,
                                               vals, vo, scratch)
            else:
                ln = ends[i] - s
                _copy_run(buf, s, ln, out, o, ends[i] + 16 <= len(buf))
                o += ln
        valid[i] = ok
        if ok:
            for k in range(nslots):
                if dkind[k] != ABSENT:
                    kind[k, i] = dkind[k]
                    vs[k, i] = dvs[k]
                    ve[k, i] = dve[k]
    doc_off[n] = o
    return o


@nb.njit(cache=True, nogil=True, inline="always")
def _hex(c):
    if c <= 57:
        return c - 48
    if c <= 70:
        return c - 55
    return c - 87


@nb.njit(**NO_REFCOUNT)
def _unescape_into(buf, s, e, out, o):
    """Decode the JSON string content buf[s:e] (already validated) into out[o:]; returns the
    new end. A lone surrogate becomes U+FFFD."""
    p = s
    while p < e:
        c = buf[p]
        if c != 92:
            out[o] = c
            o += 1
            p += 1
            continue
        d = buf[p + 1]
        if d != 117:
            if d == 110:
                out[o] = 10
            elif d == 116:
                out[o] = 9
            elif d == 114:
                out[o] = 13
            elif d == 98:
                out[o] = 8
            elif d == 102:
                out[o] = 12
            else:
                out[o] = d  # \" \\ \/
            o += 1
            p += 2
            continue
        cp = (_hex(buf[p + 2]) << 12) | (_hex(buf[p + 3]) << 8) | (_hex(buf[p + 4]) << 4) | _hex(buf[p + 5])
        p += 6
        if 0xD800 <= cp <= 0xDBFF:
            if p + 6 <= e and buf[p] == 92 and buf[p + 1] == 117:
                lo = (_hex(buf[p + 2]) << 12) | (_hex(buf[p + 3]) << 8) | (_hex(buf[p + 4]) << 4) \
                    | _hex(buf[p + 5])
                if 0xDC00 <= lo <= 0xDFFF:
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                    p += 6
                else:
                    cp = 0xFFFD
            else:
                cp = 0xFFFD
        elif 0xDC00 <= cp <= 0xDFFF:
            cp = 0xFFFD
        if cp < 0x80:
            out[o] = cp
            o += 1
        elif cp < 0x800:
            out[o] = 0xC0 | (cp >> 6)
            out[o + 1] = 0x80 | (cp & 0x3F)
            o += 2
        elif cp < 0x10000:
            out[o] = 0xE0 | (cp >> 12)
            out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
            out[o + 2] = 0x80 | (cp & 0x3F)
            o += 3
        else:
            out[o] = 0xF0 | (cp >> 18)
            out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
            out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
            out[o + 3] = 0x80 | (cp & 0x3F)
            o += 4
    return o


@nb.njit(**NO_REFCOUNT)
def _first_texts(buf, vs, ve, kind, cand, cut, offsets, out, valid):
    """For each column c and document i, the text of the first slot of cand[c] (-1 ends
    the list) with a non-null value, as json_extract_string gives it (strings decoded, other
    values as written), up to its first byte cut[c] if that is >= 0: written to `out` (16
    bytes of room past the texts), offsets[c, i:i + 2] into it, valid[c, i] if there was one.
    Returns the texts' end, or -1 if `out` is too small."""
    ncol, n = cand.shape[0], vs.shape[1]
    o = 0
    for c in range(ncol):
        stop = cut[c]
        for i in range(n):
            offsets[c, i] = o
            for j in range(cand.shape[1]):
                sl = cand[c, j]
                if sl < 0:
                    break
                k = kind[sl, i]
                if k == ABSENT or k == NULL:
                    continue
                valid[c, i] = True
                a, e = vs[sl, i], ve[sl, i]
                if o + (e - a) + 16 > len(out):
                    return -1
                if stop >= 0:
                    for q in range(a, e):
                        if buf[q] == stop:
                            e = q
                            break
                if k == STR_ESC:
                    o = _unescape_into(buf, a, e, out, o)
                else:
                    _copy_run(buf, a, e - a, out, o, e + 16 <= len(buf))
                    o += e - a
                break
        offsets[c, n] = o
    return o


def text_columns(buf: np.ndarray, vs: np.ndarray, ve: np.ndarray, kind: np.ndarray,
                 columns: list[list[int]], cut: dict[int, int] | None = None) -> list[pa.Array]:
    """Arrow string columns, one per list of slots (rows of vs/ve/kind): per document, the
    text of the first slot with a non-null value (null if none), cut before its first byte
    `cut[column]` where given. One compiled pass for all the columns."""
    cand = np.full((len(columns), max(len(c) for c in columns)), -1, np.int64)
    for c, slots in enumerate(columns):
        cand[c, :len(slots)] = slots
    cuts = np.array([(cut or {}).get(c, -1) for c in range(len(columns))], np.int64)
    n = vs.shape[1]
    # room for the texts: a row's values are its own bytes of `buf` (decoding only shortens
    # them), so a column takes at most len(buf); failing that, the sum of all the spans
    spans = (lambda: int(sum(np.clip(ve[sl] - vs[sl], 0, None).sum() for c in columns for sl in c)))
    for room in (len(columns) * len(buf), None):
        room = spans() if room is None else room
        small = room < (1 << 31)
        offsets = np.empty((len(columns), n + 1), np.int32 if small else np.int64)
        out = np.empty(room + 16, np.uint8)
        valid = np.zeros((len(columns), n), np.bool_)
        end = _first_texts(buf, vs, ve, kind, cand, cuts, offsets, out, valid)
        if end >= 0:
            break
    typ = pa.string() if small else pa.large_string()
    data = pa.py_buffer(out[:end])
    arrays = []
    for c in range(len(columns)):
        nulls = int(n - valid[c].sum())
        bitmap = pa.py_buffer(np.packbits(valid[c], bitorder="little")) if nulls else None
        arrays.append(pa.Array.from_buffers(typ, n, [bitmap, pa.py_buffer(offsets[c]), data], null_count=nulls))
    return arrays


def text_column(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, kinds: np.ndarray) -> pa.Array:
    """An Arrow string column of the values' text (see text_columns)."""
    return text_columns(buf, np.ascontiguousarray(starts)[None], np.ascontiguousarray(ends)[None],
                        np.ascontiguousarray(kinds)[None], [[0]])[0]


def coalesce(vs: np.ndarray, ve: np.ndarray, kind: np.ndarray, slots: list):  # noqa: ANN201
    """(start, end, kind) of the first slot with a non-null value, per document; a slot is
    a row number of vs/ve/kind or a (starts, ends, kinds) triple of its own."""
    s = np.full(vs.shape[1], -1, np.int64)
    e = np.full(vs.shape[1], -1, np.int64)
    k = np.zeros(vs.shape[1], np.int8)
    for slot in reversed(slots):
        ss, se, sk = slot if isinstance(slot, tuple) else (vs[slot], ve[slot], kind[slot])
        has = (sk != ABSENT) & (sk != NULL)
        s = np.where(has, ss, s)
        e = np.where(has, se, e)
        k = np.where(has, sk, k)
    return s, e, k


# Member modes of json_members (AS_TEXT: the span is plain text, not JSON, present where its
# start is >= 0; it is written as a JSON string).
AS_STRING, AS_RAW, AS_INT, AS_TEXT = 0, 1, 2, 3


@nb.njit(**NO_REFCOUNT)
def _int_text(buf, s, e):
    """Bounds of an optionally signed run of digits (the whole span), else (-1, -1)."""
    p = s
    if p < e and buf[p] == 45:
        p += 1
    if p >= e:
        return -1, -1
    for j in range(p, e):
        if buf[j] < 48 or buf[j] > 57:
            return -1, -1
    return s, e


@nb.njit(cache=True, nogil=True)
def _member_len(buf, s, e, k, mode):
    """Bytes the member value takes in the output (-1: left out)."""
    if mode == 3:  # AS_TEXT
        return -1 if s < 0 else 2 + json_string_len(buf, s, e)
    if k == ABSENT:
        return -1
    if mode == 2:  # AS_INT: strings or numbers made of digits
        if k == NULL or k == CONTAINER:
            return -1
        a, b = _int_text(buf, s, e)
        return -1 if a < 0 else b - a
    if mode == 1:  # AS_RAW
        if k == NULL:
            return 4
        if k == STR or k == STR_ESC:
            return e - s + 2
        return e - s
    if k == NULL:
        return -1
    if k == STR or k == STR_ESC or k == SCALAR:
        return e - s + 2
    return 2 + json_string_len(buf, s, e)  # a container's text as a JSON string


@nb.njit(cache=True, nogil=True, inline="always")
def _present(buf, s, e, k, mode):
    """_member_len(...) >= 0 without measuring an escaped string's length again."""
    if mode == 3:
        return s >= 0
    if k == ABSENT:
        return False
    if mode == 2:
        return k != NULL and k != CONTAINER and _int_text(buf, s, e)[0] >= 0
    return mode == 1 or k != NULL


@nb.njit(cache=True, nogil=True)
def _json_members(buf, vs, ve, kind, modes, keys, key_off):
    nm, n = vs.shape
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    total = 0
    for i in range(n):
        size = 2
        members = 0
        for m in range(nm):
            ln = _member_len(buf, vs[m, i], ve[m, i], kind[m, i], modes[m])
            if ln < 0:
                continue
            size += (1 if members else 0) + key_off[m + 1] - key_off[m] + ln
            members += 1
        total += size
        offsets[i + 1] = total
    out = np.empty(total, np.uint8)
    for i in range(n):
        o = offsets[i]
        out[o] = 123
        o += 1
        members = 0
        for m in range(nm):
            s = vs[m, i]
            e = ve[m, i]
            k = kind[m, i]
            mode = modes[m]
            if not _present(buf, s, e, k, mode):
                continue
            if members:
                out[o] = 44
                o += 1
            members += 1
            kl = key_off[m + 1] - key_off[m]
            copy_bytes(keys, key_off[m], kl, out, o)
            o += kl
            if mode == 1 and k == NULL:
                out[o] = 110
                out[o + 1] = 117
                out[o + 2] = 108
                out[o + 3] = 108
                o += 4
                continue
            quoted = (k == STR or k == STR_ESC) or (mode == 0 and k == SCALAR)
            if mode == 3 or (mode == 0 and k == CONTAINER):
                out[o] = 34
                o = put_json_string(buf, s, e, out, o + 1)
                out[o] = 34
                o += 1
                continue
            if mode == 2:
                quoted = False
            if quoted:
                out[o] = 34
                o += 1
            copy_bytes(buf, s, e - s, out, o)
            o += e - s
            if quoted:
                out[o] = 34
                o += 1
        out[o] = 125
    return offsets, out


def json_members(buf: np.ndarray, members: dict[str, tuple]) -> pa.Array:
    """One JSON object per document with the members `key → (starts, ends, kinds, mode)`:
    AS_STRING gives the value as a JSON string (what json_extract_string then a JSON string
    encoder would give: strings copied as written, numbers/booleans quoted), AS_RAW gives the
    JSON value as written (null included), AS_INT an integer (left out unless digits).
    Absent values (and nulls, but for AS_RAW) are left out. `key → (starts, ends)` is plain
    text (AS_TEXT), left out where its start is < 0."""
    members = {k: v if len(v) == 4 else (v[0], v[1], np.zeros(len(v[0]), np.int8), AS_TEXT)
               for k, v in members.items()}
    names = list(members)
    key_bytes = [f'"{k}":'.encode() for k in names]
    keys = np.frombuffer(b"".join(key_bytes), np.uint8)
    key_off = np.zeros(len(names) + 1, np.int64)
    key_off[1:] = np.cumsum([len(k) for k in key_bytes])
    vs = np.stack([np.asarray(members[k][0], np.int64) for k in names])
    ve = np.stack([np.asarray(members[k][1], np.int64) for k in names])
    kind = np.stack([np.asarray(members[k][2], np.int8) for k in names])
    modes = np.array([members[k][3] for k in names], np.int64)
    offsets, data = _json_members(buf, vs, ve, kind, modes, keys, key_off)
    arr = pa.Array.from_buffers(pa.large_string(), vs.shape[1],
                                [None, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=0)
    return arr.cast(pa.string())


# The value a timestamp parser leaves, with ok False, where the text is a time that does not
# fit int64 ns (before 1677-09-21 or after 2262-04-11): the reader skips and reports it. (Any
# int64 is a valid time, so the value says it only where ok is False; elsewhere there it is 0.)
OUT_OF_RANGE = -1


def _values_parser(kernel):  # noqa: ANN001, ANN202
    """parse(buf, starts, ends, kinds) -> (values, ok) around a compiled kernel that fills
    arrays allocated here (so that it runs without reference counting). A timestamp parser
    leaves OUT_OF_RANGE in `values` (and False in ok) where a time parsed but does not fit int64 ns."""
    def parse(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros(len(starts), np.int64)
        ok = np.zeros(len(starts), np.bool_)
        kernel(buf, np.ascontiguousarray(starts), np.ascontiguousarray(ends), np.ascontiguousarray(kinds), out, ok)
        return out, ok
    parse.__doc__ = kernel.__doc__
    return parse


@nb.njit(**NO_REFCOUNT)
def _parse_timestamps(buf, starts, ends, kinds, out, ok):
    """ns since the epoch of "YYYY-MM-DD[ T]HH:MM:SS[.f{1,9}][Z|±HH[:]MM]" string values;
    valid flag per value. Dates are checked (month lengths, leap years)."""
    n = len(starts)
    for i in range(n):
        if kinds[i] != STR:
            continue
        p = starts[i]
        e = ends[i]
        if e - p < 19 or buf[p + 4] != 45 or buf[p + 7] != 45 or not (buf[p + 10] == 32 or buf[p + 10] == 84) \
                or buf[p + 13] != 58 or buf[p + 16] != 58:
            continue
        y = parse_digits(buf, p, 4)
        mo = parse_digits(buf, p + 5, 2)
        d = parse_digits(buf, p + 8, 2)
        hh = parse_digits(buf, p + 11, 2)
        mi = parse_digits(buf, p + 14, 2)
        ss = parse_digits(buf, p + 17, 2)
        if not valid_date(y, mo, d) or hh < 0 or hh > 23 or mi < 0 or mi > 59 or ss < 0 or ss > 59:
            continue
        q = p + 19
        frac = 0
        if q < e and buf[q] == 46:
            frac, q, nd = parse_fraction(buf, q + 1, e)
            if nd == 0 or nd > 9:
                continue
        off = 0
        if q < e:
            c = buf[q]
            if c == 90 and q + 1 == e:
                q += 1
            elif (c == 43 or c == 45) and (e - q == 6 or e - q == 5):
                oh = parse_digits(buf, q + 1, 2)
                om = parse_digits(buf, e - 2, 2)
                if oh < 0 or om < 0 or (e - q == 6 and buf[q + 3] != 58) or oh > 23 or om > 59:
                    continue
                off = (oh * 60 + om) * 60
                if c == 45:
                    off = -off
                q = e
            else:
                continue
        secs = ((days_from_civil(y, mo, d) * 24 + hh) * 60 + mi) * 60 + ss - off
        if not fits_ns(secs, frac):
            out[i] = OUT_OF_RANGE
            continue
        out[i] = secs * 1_000_000_000 + frac
        ok[i] = True


parse_timestamps = _values_parser(_parse_timestamps)


@nb.njit(**NO_REFCOUNT)
def _parse_epoch_seconds(buf, starts, ends, kinds, out, ok):
    """ns of "D+[.D+]" values (epoch seconds as text: no precision lost through a double);
    valid flag per value."""
    n = len(starts)
    for i in range(n):
        k = kinds[i]
        if k != SCALAR and k != STR:
            continue
        p = starts[i]
        e = ends[i]
        whole = 0
        q = p
        while q < e and 48 <= buf[q] <= 57:
            if q - p < 12:  # more digits than that are out of range anyway (no overflow here)
                whole = whole * 10 + (buf[q] - 48)
            else:
                whole = NS_MAX_SECONDS + 1
            q += 1
        if q == p:
            continue
        frac = 0
        if q < e and buf[q] == 46:
            frac, q, nd = parse_fraction(buf, q + 1, e)
            if nd == 0:
                continue
        if q != e:
            continue
        if not fits_ns(whole, frac):
            out[i] = OUT_OF_RANGE
            continue
        out[i] = whole * 1_000_000_000 + frac
        ok[i] = True


parse_epoch_seconds = _values_parser(_parse_epoch_seconds)


@nb.njit(**NO_REFCOUNT)
def _parse_ints(buf, starts, ends, kinds, out, ok):
    """Integer values (numbers or strings of digits, optionally signed); valid flag."""
    n = len(starts)
    for i in range(n):
        k = kinds[i]
        if k != SCALAR and k != STR:
            continue
        a, b = _int_text(buf, starts[i], ends[i])
        if a < 0 or b - a > 18:
            continue
        neg = buf[a] == 45
        v = 0
        for j in range(a + 1 if neg else a, b):
            v = v * 10 + (buf[j] - 48)
        out[i] = -v if neg else v
        ok[i] = True


parse_ints = _values_parser(_parse_ints)


@nb.njit(cache=True, nogil=True)
def has_prefix(buf, starts, ends, prefix):
    """Per span: does buf[start:end] start with `prefix`?"""
    n = len(starts)
    out = np.zeros(n, np.bool_)
    for i in range(n):
        s = starts[i]
        out[i] = s >= 0 and ends[i] - s >= len(prefix) and _starts_with(buf, s, prefix)
    return out


@nb.njit(cache=True, nogil=True, inline="always")
def _starts_with(buf, s, prefix):
    """Does buf[s:] start with `prefix` (the caller checked there is room)?"""
    for j in range(len(prefix)):
        if buf[s + j] != prefix[j]:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def instance_prefix(buf, starts, ends, kinds):
    """Span of the uuid in a message starting with oslo's "[instance: <36 hex/dash>]"."""
    n = len(starts)
    os_ = np.full(n, -1, np.int64)
    oe = np.full(n, -1, np.int64)
    k = np.zeros(n, np.int8)
    pre = np.array([91, 105, 110, 115, 116, 97, 110, 99, 101, 58, 32], np.uint8)  # "[instance: "
    for i in range(n):
        if kinds[i] != STR and kinds[i] != STR_ESC:
            continue
        s = starts[i]
        if ends[i] - s < 48 or buf[s + 47] != 93 or not _starts_with(buf, s, pre):
            continue
        if uuid_chars(buf, s + 11, s + 47):
            os_[i] = s + 11
            oe[i] = s + 47
            k[i] = STR
    return os_, oe, k


def line_blocks(f, chunk_bytes: int):  # noqa: ANN201
    """Blocks of whole lines (memoryviews, not copies) of binary file `f`, about `chunk_bytes`
    each: bounded memory whatever the file size. A regular file is mapped (no copy of its
    bytes out of the page cache: a read() of 70 MB costs as much as scanning it); other
    streams are read, the cut line's bytes read again with the next block (seek back)."""
    mapped = _mapped(f)
    if mapped is not None:
        yield from _mapped_line_blocks(mapped, chunk_bytes)
        return
    while True:
        block = f.read(chunk_bytes)
        if not block:
            return
        if len(block) < chunk_bytes:  # a short read of a regular file: its end
            yield memoryview(block)
            return
        cut = block.rfind(b"\n") + 1
        while cut == 0:  # a line longer than the block: read on until it ends
            more = f.read(chunk_bytes)
            if not more:
                yield memoryview(block)
                return
            block += more
            cut = block.rfind(b"\n") + 1
        f.seek(cut - len(block), 1)
        yield memoryview(block)[:cut]


def _mapped(f) -> mmap.mmap | None:  # noqa: ANN001
    """`f` mapped read-only from its current position's file start, or None when it is not a
    non-empty regular file read from its start."""
    try:
        if f.tell() != 0 or not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _mapped_line_blocks(mapped: mmap.mmap, chunk_bytes: int):  # noqa: ANN202
    size = len(mapped)
    view = memoryview(mapped)
    try:
        start = 0
        while start < size:
            cut = size
            if start + chunk_bytes < size:
                cut = mapped.rfind(b"\n", start, start + chunk_bytes) + 1
                if cut <= start:  # a line longer than the block: up to its end
                    cut = mapped.find(b"\n", start + chunk_bytes) + 1 or size
            yield view[start:cut]
            start = cut
    finally:
        try:
            view.release()
            mapped.close()
        except BufferError:  # a caller still holds a view of it: the map goes with that
            pass


def line_block_tables(f, chunk_bytes: int, block, progress):  # noqa: ANN001, ANN201
    """The tables `block(data, first_line) -> (table or None, lines)` makes of each block of
    whole lines of `f` (line_blocks), with the running line number; progress(bytes) per block."""
    first_line = 1
    for part in line_blocks(f, chunk_bytes):
        table, n_lines = block(part, first_line)
        first_line += n_lines
        progress(len(part))
        if table is not None:
            yield table


def utf8_or_replaced(data: bytes) -> tuple[bytes, bool]:
    """`data` and True if it is valid UTF-8 (checked by Arrow's vectorised validator, no
    Python string made), else the text with invalid bytes replaced as
    bytes.decode("utf-8", "replace") does, and False."""
    off = np.array([0, len(data)], np.int64)
    whole = pa.Array.from_buffers(pa.large_string(), 1, [None, pa.py_buffer(off), pa.py_buffer(data)])
    try:
        whole.validate(full=True)
        return data, True
    except pa.ArrowInvalid:
        return bytes(data).decode("utf-8", "replace").encode("utf-8"), False


def document_lines(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of every line of `buf` without its newline and surrounding whitespace."""
    return _document_lines(buf)


@nb.njit(cache=True, nogil=True)
def _document_lines(buf):
    # newlines found 64 bytes at a time: count them, then list them
    n = len(buf)
    full = n - n % 64
    count = 0
    for b in range(0, full, 64):
        count += np.int64(popcount(byte_mask(buf, b, 10)))
    for j in range(full, n):
        count += buf[j] == 10
    last_open = n > 0 and buf[n - 1] != 10
    lines = count + (1 if last_open else 0)
    starts = np.empty(lines, np.int64)
    ends = np.empty(lines, np.int64)
    i = 0
    start = 0
    for b in range(0, full, 64):
        m = byte_mask(buf, b, 10)
        while m != U0:
            nl = b + np.int64(trailing_zeros(m))
            m &= m - U1
            starts[i] = start
            ends[i] = nl
            start = nl + 1
            i += 1
    for j in range(full, n):
        if buf[j] == 10:
            starts[i] = start
            ends[i] = j
            start = j + 1
            i += 1
    if last_open:
        starts[i] = start
        ends[i] = n
    # without surrounding whitespace
    for i in range(lines):
        s = starts[i]
        e = ends[i]
        while s < e and (buf[s] == 32 or buf[s] == 9 or buf[s] == 13):
            s += 1
        while e > s and (buf[e - 1] == 32 or buf[e - 1] == 9 or buf[e - 1] == 13):
            e -= 1
        starts[i] = s
        ends[i] = e
    return starts, ends
