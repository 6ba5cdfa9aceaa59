"""oslo.log JSON records (oslo_log.formatters.JSONFormatter, SPEC §3), one object per line.

Read in blocks and decoded by a compiled scanner (jsonscan.py) that validates each line and
finds the byte spans of the keys needed here: no Python object per record. The timestamp
comes from `created` (epoch seconds, UTC) read as text so that no nanoseconds are lost
through a double; `fields` carries
the same keys as the text reader (level, logger, message, global_request_id, user, project)
plus what only JSON has (funcname, lineno, thread, hostname, traceback, extra).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader
from stacklens.sources.jsonscan import (
    ABSENT, AS_INT, AS_RAW, AS_STRING, NULL, OUT_OF_RANGE, PathTrie, coalesce, document_lines, has_prefix, instance_prefix, json_members,
    line_block_tables, parse_epoch_seconds, parse_ints, text_column, utf8_or_replaced)

_HINT = re.compile(rb'^\s*\{.*"(?:levelname|funcname)"\s*:.*"created"\s*:', re.S)

# Paths read from a record (one validating compiled pass per line, jsonscan.py). thread,
# traceback and extra keep their JSON text in `fields`.
PATHS = [("created",), ("name",), ("process",), ("context", "request_id"), ("extra", "request_id"),
         ("extra", "instance_uuid"), ("extra", "instance", "uuid"), ("message",), ("context", "resource_uuid"),
         ("context", "global_request_id"), ("context", "user_id"), ("context", "user"),
         ("context", "project_id"), ("context", "project"), ("levelname",), ("funcname",), ("lineno",),
         ("thread_name",), ("hostname",), ("thread",), ("traceback",), ("extra",)]
TRIE = PathTrie(PATHS)
_S = {".".join(p): i for p, i in TRIE.slot.items()}
CHUNK_BYTES = 32 << 20
MAX_REPORTED = 10
# `fields`: key → (slot(s) coalesced, how the value is written)
FIELD_MEMBERS = [("level", ["levelname"], AS_STRING), ("logger", ["name"], AS_STRING),
                 ("message", ["message"], AS_STRING),
                 ("global_request_id", ["context.global_request_id"], AS_STRING),
                 ("user", ["context.user_id", "context.user"], AS_STRING),
                 ("project", ["context.project_id", "context.project"], AS_STRING),
                 ("funcname", ["funcname"], AS_STRING), ("lineno", ["lineno"], AS_INT),
                 ("thread_name", ["thread_name"], AS_STRING), ("hostname", ["hostname"], AS_STRING),
                 ("thread", ["thread"], AS_RAW), ("traceback", ["traceback"], AS_RAW),
                 ("extra", ["extra"], AS_RAW)]


class OsloJsonLogReader(Reader):
    """Logs written by oslo.log's JSONFormatter."""

    format = "oslo.log.json"
    layer = "app"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        lines = head.lstrip().split(b"\n")
        if _HINT.match(lines[0]):
            return True
        # JSONFormatter writes "message" first: a huge first message (placement logs every
        # trait it synced) runs past the head. Then a later whole line decides, or, with none,
        # the record's own opening.
        whole = lines[1:-1] if len(lines) > 1 else []
        if whole:
            return any(_HINT.match(ln) for ln in whole[:5])
        return lines[0].startswith(b'{"message": "') and len(lines) == 1

    def tables(self) -> Iterator[pa.Table]:
        with self.open_binary() as f:
            try:
                for table in line_block_tables(f, CHUNK_BYTES, self._block, self.options.progress):
                    self.report.rows += table.num_rows
                    yield table
            except OSError as e:
                raise SourceError(self.path, f"read error: {e.strerror}") from None

    def _block(self, data: bytes, first_line: int) -> tuple[pa.Table | None, int]:
        """The records of whole lines `data` (line numbers from `first_line`), and the
        number of lines."""
        data, utf8 = utf8_or_replaced(data)
        if not utf8 and "invalid UTF-8 replaced" not in self.report.notes:
            self.report.notes.append("invalid UTF-8 replaced")
        buf = np.frombuffer(data, np.uint8)
        starts, ends = document_lines(buf)
        valid, vs, ve, kind, vals = TRIE.scan(buf, starts, ends)
        valid &= has_prefix(buf, starts, ends, np.frombuffer(b"{", np.uint8))
        created, has_created = parse_epoch_seconds(vals, vs[_S["created"]], ve[_S["created"]], kind[_S["created"]])
        name = _S["name"]
        keep = valid & has_created & (kind[name] != ABSENT) & (kind[name] != NULL)
        out_of_range = valid & ~has_created & (created == OUT_OF_RANGE)  # a time, but none int64 ns can hold
        self.report.skip_out_of_range(np.flatnonzero(out_of_range) + first_line)
        bad = np.flatnonzero(~keep & ~out_of_range & (starts != ends)) + first_line
        for p in bad[:MAX_REPORTED]:
            self.report.skip(int(p))
        if len(bad) > MAX_REPORTED:
            self.report.skipped += len(bad) - MAX_REPORTED
        rows = np.flatnonzero(keep)
        if not len(rows):
            return None, len(starts)
        if len(rows) < len(starts):
            vs, ve, kind, created = vs[:, rows], ve[:, rows], kind[:, rows], created[rows]
        if self.report.host_hint is None:
            # the host the records name (JSONFormatter's `hostname`): the part's host when
            # neither --host nor bundle.toml gives one, instead of "unknown"
            hn = _S["hostname"]
            named = text_column(vals, vs[hn], ve[hn], kind[hn]).drop_null()
            if len(named):
                self.report.host_hint = named[0].as_py() or None
        msg = _S["message"]
        msg_instance = instance_prefix(vals, vs[msg], ve[msg], kind[msg])  # "[instance: UUID] …"
        pid, has_pid = parse_ints(vals, vs[_S["process"]], ve[_S["process"]], kind[_S["process"]])
        members = {}
        for key, slots, mode in FIELD_MEMBERS:
            if len(slots) == 1:  # a JSON null is kept as null where the value is raw JSON
                k = _S[slots[0]]
                members[key] = (vs[k], ve[k], kind[k], mode)
            else:
                members[key] = (*coalesce(vs, ve, kind, [_S[x] for x in slots]), mode)
        return pa.table({
            "pos": pa.array(rows + first_line, pa.int64()),
            "ts": pa.array(created, pa.int64()),
            "name": text_column(vals, vs[name], ve[name], kind[name]),
            "pid": pa.array(pid, pa.int64(), mask=~has_pid),
            "request_id": text_column(vals, *coalesce(vs, ve, kind, [_S["context.request_id"],
                                                                  _S["extra.request_id"]])),
            "instance": text_column(vals, *coalesce(vs, ve, kind, [
                _S["extra.instance_uuid"], _S["extra.instance.uuid"], msg_instance, _S["context.resource_uuid"]])),
            "fields": json_members(vals, members),
        }), len(starts)
