"""The block-classified JSON scanner (sources/jsonscan.py) against Python's json module.

The scanner classifies 64 bytes at a time and carries string, escape and number state from
one block to the next, so the cases that matter are the ones that straddle a block edge:
runs of backslashes, escaped quotes, \\u escapes, strings and numbers cut by the edge, and
documents that end inside the last, partial block of the buffer. Oracle: json.loads decides
validity; json.loads of the envelope's string is the decoded inner document.
"""

from __future__ import annotations

import json
import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacklens.sources.jsonscan import ABSENT, STR, STR_ESC, PathTrie, document_lines, text_columns

TRIE = PathTrie([("event_type",), ("a", "b"), ("oslo.message",)])
EVENT, AB, ENVELOPE = TRIE.slot[("event_type",)], TRIE.slot[("a", "b")], TRIE.slot[("oslo.message",)]
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> bytes:
    """What the scanner writes for a decoded string: lone surrogates become U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text).encode()


def _loads(line: str):
    try:
        return True, json.loads(line)
    except ValueError:
        return False, None


def _scan(lines: list[str], trailing_newline: bool, unwrap: bool = False):
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if trailing_newline:
        data += b"\n"
    buf = np.frombuffer(data, np.uint8)
    starts, ends = document_lines(buf)
    assert len(starts) == len(lines)
    return TRIE.scan_packing(buf, starts, ends, ENVELOPE, unwrap=unwrap)


def _check_slots(doc, i, vs, ve, kind, vals) -> None:
    """The recorded values of `event_type` and `a.b` are the document's."""
    for slot, value in ((EVENT, doc.get("event_type")),
                        (AB, doc["a"].get("b") if isinstance(doc.get("a"), dict) else None)):
        if slot == EVENT and "event_type" not in doc:
            assert kind[slot, i] == ABSENT
        if isinstance(value, str):
            raw = bytes(vals[vs[slot, i]:ve[slot, i]])
            assert json.loads(b'"' + raw + b'"') == value
            assert kind[slot, i] == (STR_ESC if b"\\" in raw else STR)
        elif value is not None and not isinstance(value, (dict, list)):
            assert json.loads(bytes(vals[vs[slot, i]:ve[slot, i]])) == value


def _check(lines: list[str], trailing_newline: bool = True) -> None:
    valid, vs, ve, kind, vals, docs, doc_off = _scan(lines, trailing_newline)
    uvalid, uvs, uve, ukind, uvals, _, _ = _scan(lines, trailing_newline, unwrap=True)
    for i, line in enumerate(lines):
        ok, doc = _loads(line)
        assert valid[i] == ok, (i, line)
        if not ok or not isinstance(doc, dict):
            assert uvalid[i] == ok
            continue
        inner = doc.get("oslo.message")
        if isinstance(inner, str):  # the envelope's string, decoded
            assert kind[ENVELOPE, i] in (STR, STR_ESC)
            assert bytes(docs[doc_off[i]:doc_off[i + 1]]) == _utf8(inner), (i, line)
            # unwrapped: the row is the inner document's
            inner_ok, inner_doc = _loads(inner)
            assert uvalid[i] == inner_ok, (i, line)
            if inner_ok and isinstance(inner_doc, dict):
                _check_slots(inner_doc, i, uvs, uve, ukind, uvals)
        else:
            assert bytes(docs[doc_off[i]:doc_off[i + 1]]) == line.strip(" \t\r").encode("utf-8", "surrogatepass")
            assert uvalid[i]
            _check_slots(doc, i, uvs, uve, ukind, uvals)
        _check_slots(doc, i, vs, ve, kind, vals)


def test_escapes_and_tokens_across_block_edges():
    """Backslash runs of every length, escaped quotes, \\u escapes, numbers and literals placed
    at every offset around the first two 64-byte edges, bare and in an envelope."""
    pieces = ['\\\\', '\\"', '\\\\\\"', '\\\\\\\\', '\\u00e9', '\\ud83d\\ude00', '\\ud83d', '\\n\\t',
              '"', '\\', '\\u00g9', '\x01', '\\x']
    lines = []
    for piece in pieces:
        for pad in range(40, 136):
            text = '{"event_type": "' + "x" * pad + piece + 'y", "a": {"b": 12.5e-3}}'
            lines.append(text)
            lines.append(json.dumps({"oslo.version": "2.0", "oslo.message": text}))
            lines.append('{"a": {"b": ' + " " * pad + '-0.5E+2 }, "event_type": "' + piece + '"}')
            lines.append('{"a": {"b": ' + " " * pad + 'true}, "event_type": ' + "1" * (pad % 7 + 1) + "x}")
    _check(lines)


def test_documents_ending_in_the_buffers_last_block():
    for n in range(0, 70):
        doc = '{"event_type": "' + "z" * n + '"}'
        _check(["{}", doc], trailing_newline=False)
        _check(["[1, 2]", doc[:-1]], trailing_newline=False)  # cut: unterminated
        _check([doc + "\\"], trailing_newline=False)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=90),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from(["a", "b", "event_type", "c\\", 'd"']),
                                                                inner, max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_json_values, st.booleans(), st.booleans(), st.lists(
    st.tuples(st.integers(0, 400), st.sampled_from(list('{}[]":,\\ntru0-.e \x01\u00e9'))), max_size=2)),
    min_size=1, max_size=8), st.booleans())
def test_generated_documents_like_json_loads(docs, trailing_newline):
    lines = []
    for value, ascii_only, envelope, damage in docs:
        text = json.dumps(value, ensure_ascii=ascii_only)
        if envelope:
            text = json.dumps({"oslo.version": "2.0", "oslo.message": text}, ensure_ascii=ascii_only)
        for at, ch in damage:
            at = min(at, len(text))
            text = text[:at] + ch + text[at + 1:]
        lines.append(text.replace("\n", " "))
    _check(lines, trailing_newline)


def test_wanted_keys_and_near_misses_of_every_length():
    """Keys are compared 8 bytes a step with a masked tail: wanted keys of lengths around the
    word size, each beside keys of the same length and hash bucket that differ in one inner
    byte or in the first and last, anywhere in the line and at the buffer's very end."""
    wanted = ["k", "abcdefg", "abcdefgh", "abcdefghi", "abcdefghijklmno", "abcdefghijklmnop",
              "abcdefghijklmnopq"]
    trie = PathTrie([(w,) for w in wanted])
    lines, expect = [], []
    for w in wanted:
        misses = [w[:j] + "X" + w[j + 1:] for j in range(1, len(w) - 1)]
        # and in the first and last bytes, moved so that the hash stays the same
        misses.append(chr(ord(w[0]) + 8) if len(w) == 1 else chr(ord(w[0]) + 5) + w[1:-1] + chr(ord(w[-1]) - 3))
        for pad in (0, 5, 61):
            doc = {m: "miss" for m in misses}
            doc["p" * (pad + 1)] = 0
            doc[w] = "hit-" + w
            lines.append(json.dumps(doc))
            expect.append(w)
        lines.append(json.dumps({**{m: 1 for m in misses}}))
        expect.append(None)
    lines.append('{"' + wanted[-1] + '": 7}')  # the last key ends 5 bytes before the buffer's end
    expect.append(wanted[-1])
    data = "\n".join(lines).encode()
    buf = np.frombuffer(data, np.uint8)
    starts, ends = document_lines(buf)
    valid, vs, ve, kind, vals = trie.scan(buf, starts, ends)
    assert valid.all()
    for i, (line, w) in enumerate(zip(lines, expect)):
        doc = json.loads(line)
        for key in wanted:
            slot = trie.slot[(key,)]
            raw = bytes(vals[vs[slot, i]:ve[slot, i]])
            if key in doc:  # a string's span is its content, without the quotes
                assert json.loads(b'"' + raw + b'"' if kind[slot, i] == STR else raw) == doc[key], (i, key)
            else:
                assert kind[slot, i] == ABSENT, (i, key)
        assert w is None or w in doc


def test_text_columns_of_spans_sharing_bytes():
    """Columns are first written into room for one copy of the buffer per column; spans that
    share bytes (every row the same 100-byte value) need more, and still come out whole."""
    buf = np.frombuffer(b'\\"ab' * 25, np.uint8)
    n = 10
    starts, ends = np.zeros((1, n), np.int64), np.full((1, n), 100, np.int64)
    kinds = np.full((1, n), STR_ESC, np.int8)
    kinds[0, 3] = ABSENT
    (col,) = text_columns(buf, starts, ends, kinds, [[0]])
    assert col.to_pylist() == [None if i == 3 else '"ab' * 25 for i in range(n)]
    (cut,) = text_columns(buf, starts, ends, kinds, [[0]], cut={0: ord("b")})
    assert cut.to_pylist()[0] == '"a'


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list('abcXYZ09 _-/"\\\x00\x01\x08\t\n\x0c\r\x1f\x7fé€😀')), max_size=60),
       st.integers(0, 9))
def test_json_string_content_is_what_json_dumps_writes(text, offset):
    """put_json_string (eight bytes at a time while none needs an escape, then byte by byte),
    at any offset into its source, writes what json.dumps writes between the quotes."""
    from stacklens.sources.textscan import put_json_string
    raw = text.encode()
    src = np.frombuffer(b"#" * offset + raw + b"#" * 3, np.uint8)
    out = np.zeros(6 * len(raw) + 16, np.uint8)
    o = put_json_string(src, offset, offset + len(raw), out, 5)
    assert bytes(out[5:o]) == json.dumps(text, ensure_ascii=False)[1:-1].encode()
