"""oslo.messaging notifications (SPEC §3): legacy and versioned, bare or in the AMQP v2
envelope `{"oslo.version": "2.0", "oslo.message": "<json string>"}`.

Two layouts are read:
- one notification per line (what a listener or a notification driver writes), read in
  blocks and decoded by a compiled scanner (jsonscan.py) that validates each line and finds
  the byte spans of the keys needed here: no Python object per notification; `fields` is a
  copy of the line (or of the envelope's decoded inner document);
- one JSON document per file (Nova's notification samples), where payload pieces can be pulled
  in with `"$ref": "common_payloads/X.json#"` and overridden by the keys next to the `$ref`.

Row: `name` = event_type, `procname` = the publishing service ("nova-compute" of
"nova-compute:host2"), `request_id` = `_context_request_id` (legacy) or the payload's
request_id (versioned), `instance` = the payload's instance uuid, `fields` = the whole
notification (envelope unwrapped, `$ref` resolved) so that models read any payload key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader
from stacklens.sources.jsonscan import (
    ABSENT, NULL, OUT_OF_RANGE, BufferPool, PathTrie, document_lines, has_prefix, line_block_tables, parse_timestamps, text_columns, utf8_or_replaced)

# What a notification line looks like in its first bytes (bare or wrapped).
_LINE_HINT = re.compile(rb'^\s*\{.*"(?:event_type|oslo\.message)"\s*:', re.S)

# Paths read from a notification (one validating compiled pass per line, jsonscan.py).
# Versioned payloads nest their data in "nova_object.data" (Nova) or "versioned_object.data";
# "oslo.message" is the AMQP v2 envelope, whose inner document is a JSON string.
_D = ("payload", "nova_object.data")
_V = ("payload", "versioned_object.data")
PATHS = [("event_type",), ("timestamp",), ("publisher_id",), ("_context_request_id",),
         ("context", "request_id"), _D + ("request_id",), ("payload", "request_id"),
         ("payload", "instance_id"), ("payload", "instance_uuid"), _D + ("uuid",), _D + ("instance_uuid",),
         _D + ("updated_at",), _D + ("created_at",), _V + ("uuid",), _V + ("request_id",),
         ("oslo.message",)]
TRIE = PathTrie(PATHS)
_S = TRIE.slot
EVENT_TYPE, TIMESTAMP, PUBLISHER, ENVELOPE = (_S[("event_type",)], _S[("timestamp",)],
                                              _S[("publisher_id",)], _S[("oslo.message",)])
REQUEST_SLOTS = [_S[("_context_request_id",)], _S[("context", "request_id")], _S[_D + ("request_id",)],
                 _S[_V + ("request_id",)], _S[("payload", "request_id")]]
TS_SLOTS = [TIMESTAMP, _S[_D + ("updated_at",)], _S[_D + ("created_at",)]]
INSTANCE_SLOTS = [_S[("payload", "instance_id")], _S[("payload", "instance_uuid")], _S[_D + ("uuid",)],
                  _S[_V + ("uuid",)], _S[_D + ("instance_uuid",)]]
_INSTANCE_PREFIX = np.frombuffer(b"instance.", np.uint8)
CHUNK_BYTES = 8 << 20
MAX_REPORTED = 10
HEAD_LINES = 20


class NotificationReader(Reader):
    """oslo.messaging notifications, one per line or one JSON document per file."""

    format = "oslo.notification"
    layer = "app"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        text = head.lstrip()
        if not text.startswith(b"{"):
            return False
        first = text.split(b"\n", 1)[0]
        if _LINE_HINT.match(first):
            return True
        # A pretty-printed document: the notification keys appear near the top.
        return (b'"event_type"' in head and (b'"payload"' in head or b'"publisher_id"' in head)
                and b'"priority"' in head)

    def tables(self) -> Iterator[pa.Table]:
        self._buffers = BufferPool()
        with self.open_binary() as f:
            try:
                # One notification per line if any of the first lines is a JSON object (the
                # first one may be damaged), else one document (pretty-printed) per file.
                head = f.read(1 << 20)
                f.seek(0)
                first_lines = [ln for ln in head.split(b"\n")[:HEAD_LINES] if ln.strip()]
                if b"\n" not in head.lstrip() and len(head) == (1 << 20):
                    first_lines = [f.readline()]  # a first line longer than the head
                    f.seek(0)
                one_per_line = any(_is_json_object(ln.strip()) for ln in first_lines)
                if one_per_line:
                    yield from line_block_tables(f, CHUNK_BYTES, self._block, self.options.progress)
                else:
                    data = f.read()
                    yield from self._document(data)
                    self.options.progress(len(data))
            except OSError as e:
                raise SourceError(self.path, f"read error: {e.strerror}") from None

    def _block(self, data: bytes, first_line: int, fallback_ts: int | None = None) -> tuple[pa.Table | None, int]:
        """The notifications of whole lines `data` (line numbers from `first_line`), and the
        number of lines."""
        data = _valid_utf8(data, self.report)
        buf = np.frombuffer(data, np.uint8)
        starts, ends = document_lines(buf)
        # One pass validates each line and packs the documents end to end (`fields` is that
        # buffer as it stands): a bare line as written, an envelope's inner document decoded,
        # then scanned for the row's slots in its place.
        valid, vs, ve, kind, vals, docs, doc_off = TRIE.scan_packing(buf, starts, ends, ENVELOPE, unwrap=True,
                                                                     pool=self._buffers)
        big = vals
        # (a top-level event_type also says the document is an object)
        has_type = (kind[EVENT_TYPE] != ABSENT) & (kind[EVENT_TYPE] != NULL)
        keep = valid & has_type
        blank = starts == ends
        self._report_bad(np.flatnonzero(~keep & ~blank) + first_line)
        rows = np.flatnonzero(keep)
        if not len(rows):
            return None, len(starts)
        if len(rows) < len(starts):
            vs, ve, kind = vs[:, rows], ve[:, rows], kind[:, rows]
        # the first timestamp slot that parses (the later ones only where the earlier did not);
        # a time that parses but does not fit int64 ns ends the search: that row is skipped
        ts, has_ts = parse_timestamps(big, vs[TIMESTAMP], ve[TIMESTAMP], kind[TIMESTAMP])
        out_of_range = ~has_ts & (ts == OUT_OF_RANGE)
        for slot in TS_SLOTS[1:]:
            if (has_ts | out_of_range).all():
                break
            t, ok = parse_timestamps(big, vs[slot], ve[slot], np.where(has_ts | out_of_range, ABSENT, kind[slot]))
            ts = np.where(ok, t, ts)
            has_ts |= ok
            out_of_range |= ~ok & (t == OUT_OF_RANGE)
        pos = rows + first_line
        if out_of_range.any():
            self.report.skip_out_of_range(pos[out_of_range])
            sel = np.flatnonzero(~out_of_range)
            rows, ts, has_ts, pos = rows[sel], ts[sel], has_ts[sel], pos[sel]
            vs, ve, kind = vs[:, sel], ve[:, sel], kind[:, sel]
            if not len(rows):
                return None, len(starts)
        if not has_ts.all():
            missing = int((~has_ts).sum())
            if fallback_ts is not None:
                # Nova's samples carry no timestamp at all: keep them at the epoch, say so.
                self.report.notes.append(f"{missing} notification(s) without a timestamp placed at the epoch")
                ts[~has_ts] = fallback_ts
            else:
                self._report_bad(pos[~has_ts])
                self.report.notes.append(f"{missing} notification(s) with an unreadable timestamp skipped")
                sel = np.flatnonzero(has_ts)
                rows, ts, pos = rows[sel], ts[sel], pos[sel]
                vs, ve, kind = vs[:, sel], ve[:, sel], kind[:, sel]
                if not len(rows):
                    return None, len(starts)
        # the payload's object is the instance itself only in instance.* notifications
        is_instance_event = has_prefix(big, vs[EVENT_TYPE], ve[EVENT_TYPE], _INSTANCE_PREFIX)
        inst_kind = kind.copy()
        for path in (_D + ("uuid",), _V + ("uuid",)):
            inst_kind[_S[path]] = np.where(is_instance_event, kind[_S[path]], ABSENT)
        # procname: the publisher up to its first ':' ("nova-compute:host2" → "nova-compute")
        name, procname, request_id, instance = text_columns(big, vs, ve, inst_kind, [
            [EVENT_TYPE], [PUBLISHER], REQUEST_SLOTS, INSTANCE_SLOTS], cut={1: ord(":")})
        table = pa.table({
            "pos": pa.array(pos, pa.int64()),
            "name": name,
            "ts": pa.array(ts, pa.int64()),
            "procname": procname,
            "request_id": request_id,
            "instance": instance,
            "fields": _documents_column(docs, doc_off, rows),
        })
        self.report.rows += table.num_rows
        return table, len(starts)

    def _report_bad(self, positions: np.ndarray) -> None:
        for p in positions[:MAX_REPORTED]:
            self.report.skip(int(p))
        if len(positions) > MAX_REPORTED:
            self.report.skipped += len(positions) - MAX_REPORTED

    def _document(self, data: bytes) -> Iterator[pa.Table]:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(self.path, f"not a JSON notification document: {e}") from None
        docs = doc if isinstance(doc, list) else [doc]
        lines = []
        for i, d in enumerate(docs):
            if not isinstance(d, dict):
                self.report.skip(i + 1)
                continue
            try:
                d = resolve_refs(d, self.path.parent)
            except SourceError as e:
                self.report.notes.append(e.problem)
                self.report.skip(i + 1)
                continue
            lines.append(json.dumps(d))
        if not lines:
            return
        table, _ = self._block("\n".join(lines).encode(), 1, fallback_ts=0)
        if table is not None:
            yield table


def _documents_column(docs: np.ndarray, doc_off: np.ndarray, rows: np.ndarray) -> pa.Array:
    n = len(doc_off) - 1
    whole = pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(doc_off), pa.py_buffer(docs)],
                                  null_count=0)
    if len(rows) < n:
        whole = whole.take(pa.array(rows))
    return whole.cast(pa.string())


def _valid_utf8(data: bytes, report) -> bytes:
    """`data`, with invalid UTF-8 replaced (and noted) as bytes.decode("replace") would."""
    data, ok = utf8_or_replaced(data)
    if not ok and "invalid UTF-8 replaced" not in report.notes:
        report.notes.append("invalid UTF-8 replaced")
    return data


def _is_json_object(line: bytes) -> bool:
    if not line.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def resolve_refs(node: Any, base: Path, depth: int = 0, root: Path | None = None) -> Any:
    """Replace every `{"$ref": "file.json#", k: v…}` by the referenced document with the
    sibling keys merged over it (recursively for nested objects), as Nova's sample tests do.

    A reference resolves only to a regular file inside `root` (the sample's own directory
    tree, `base` at the first call; links resolved first): an absolute name, `..` out of it,
    a link leading out or a FIFO/device is refused with a one-line reason."""
    if root is None:
        root = base.resolve()
    if depth > 20:
        raise SourceError(base, "$ref nesting deeper than 20 (a cycle?)")
    if isinstance(node, list):
        return [resolve_refs(x, base, depth, root) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = str(node["$ref"]).split("#", 1)[0]
        target = _ref_target(base, ref, root, node["$ref"])
        try:
            loaded = json.loads(target.read_text())
        except (OSError, ValueError) as e:
            raise SourceError(target, f"cannot resolve $ref {node['$ref']!r}: {e}") from None
        resolved = resolve_refs(loaded, target.parent, depth + 1, root)
        overrides = {k: resolve_refs(v, base, depth, root) for k, v in node.items() if k != "$ref"}
        return _merge(resolved, overrides)
    return {k: resolve_refs(v, base, depth, root) for k, v in node.items()}


def _ref_target(base: Path, ref: str, root: Path, given: Any) -> Path:
    """The file a `$ref` names, if it is a regular file inside `root`; else SourceError."""
    if not ref or "\0" in ref:
        raise SourceError(base, f"$ref {given!r}: not a file name")
    try:
        target = (base / ref).resolve(strict=True)
    except (OSError, RuntimeError) as e:  # missing, or a link loop
        raise SourceError(base / ref, f"cannot resolve $ref {given!r}: {getattr(e, 'strerror', None) or e}") from None
    if not target.is_relative_to(root):
        raise SourceError(base, f"$ref {given!r} leads outside the sample's directory {root}: refused")
    if not target.is_file():  # a FIFO would block, a device never ends
        raise SourceError(target, f"$ref {given!r}: not a regular file: refused")
    return target


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over
