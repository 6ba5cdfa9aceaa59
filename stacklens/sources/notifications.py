"""oslo.messaging notifications (SPEC §3): legacy and versioned, bare or in the AMQP v2
envelope `{"oslo.version": "2.0", "oslo.message": "<json string>"}`.

Two layouts are read:
- one notification per line (what a listener or a notification driver writes), decoded
  column-wise by DuckDB's JSON functions: no Python object per notification;
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

import duckdb
import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader

# What a notification line looks like in its first bytes (bare or wrapped).
_LINE_HINT = re.compile(rb'^\s*\{.*"(?:event_type|oslo\.message)"\s*:', re.S)
TS_FORMATS = ["%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f",
              "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ",
              "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S.%f%z"]
BATCH_LINES = 500_000

# Column-wise extraction of a notification `m`. Every `->>` re-parses the JSON text, so all
# paths are read in one json_extract_string call (one parse per row); versioned payloads nest
# their data in "nova_object.data" (Nova) or "versioned_object.data".
_D = '$.payload."nova_object.data"'
_V = '$.payload."versioned_object.data"'
PATHS = ["$.event_type", "$.timestamp", "$.publisher_id", "$._context_request_id",
         "$.context.request_id", f"{_D}.request_id", "$.payload.request_id",
         "$.payload.instance_id", "$.payload.instance_uuid", f"{_D}.uuid", f"{_D}.instance_uuid",
         f"{_D}.updated_at", f"{_D}.created_at", f"{_V}.uuid", f"{_V}.request_id"]
_P = {p: i + 1 for i, p in enumerate(PATHS)}


def _v(path: str) -> str:
    return f"v[{_P[path]}]"


EXTRACT_SQL = f"""
SELECT pos,
       {_v("$.event_type")} AS name,
       coalesce(epoch_ns(try_strptime({_v("$.timestamp")}, {TS_FORMATS!r})),
                epoch_ns(try_strptime({_v(_D + ".updated_at")}, {TS_FORMATS!r})),
                epoch_ns(try_strptime({_v(_D + ".created_at")}, {TS_FORMATS!r}))) AS ts,
       split_part({_v("$.publisher_id")}, ':', 1) AS procname,
       coalesce({_v("$._context_request_id")}, {_v("$.context.request_id")},
                {_v(_D + ".request_id")}, {_v(_V + ".request_id")}, {_v("$.payload.request_id")}) AS request_id,
       coalesce({_v("$.payload.instance_id")}, {_v("$.payload.instance_uuid")},
                CASE WHEN {_v("$.event_type")} LIKE 'instance.%'
                     THEN coalesce({_v(_D + ".uuid")}, {_v(_V + ".uuid")}) END,
                {_v(_D + ".instance_uuid")}) AS instance,
       m AS fields
FROM (
  SELECT pos, m, json_extract_string(m, {PATHS!r}) AS v
  FROM (
    SELECT pos, CASE WHEN contains(line, '"oslo.message"')
                     THEN json_extract_string(line, '$."oslo.message"') ELSE line END AS m
    FROM lines WHERE json_valid(line) AND starts_with(ltrim(line), '{{')
  ) WHERE json_valid(m)
)
WHERE {_v("$.event_type")} IS NOT NULL
ORDER BY pos
"""


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
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        first = data.lstrip().split(b"\n", 1)[0].strip()
        if _is_json_object(first):
            yield from self._lines(data)
        else:
            yield from self._document(data)
        self.options.progress(len(data))

    def _lines(self, data: bytes) -> Iterator[pa.Table]:
        from stacklens.sources.oslo_json import line_batches
        con = duckdb.connect()
        con.execute("SET threads TO 1")
        for table in line_batches(data, BATCH_LINES):
            con.register("lines", table)
            out = con.sql(EXTRACT_SQL).to_arrow_table()
            con.unregister("lines")
            self._count_bad(table, out)
            out = _drop_without_ts(out, self.report)
            self.report.rows += out.num_rows
            if out.num_rows:
                yield out

    def _count_bad(self, lines: pa.Table, kept: pa.Table) -> None:
        import pyarrow.compute as pc
        nonblank = pc.invert(pc.equal(pc.utf8_trim_whitespace(lines.column("line")), ""))
        candidates = lines.column("pos").filter(nonblank)
        bad = pc.invert(pc.is_in(candidates, kept.column("pos")))
        bad_pos = candidates.filter(bad)
        for p in bad_pos.slice(0, 10).to_pylist():
            self.report.skip(p)
        if len(bad_pos) > 10:
            self.report.skipped += len(bad_pos) - 10

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
        con = duckdb.connect()
        table = pa.table({"pos": pa.array(range(1, len(lines) + 1), pa.int64()),
                          "line": pa.array(lines, pa.string())})
        con.register("lines", table)
        out = con.sql(EXTRACT_SQL).to_arrow_table()
        self._count_bad(table, out)
        out = _drop_without_ts(out, self.report, fallback_ts=0)
        self.report.rows += out.num_rows
        if out.num_rows:
            yield out


def _drop_without_ts(out: pa.Table, report, fallback_ts: int | None = None) -> pa.Table:
    import pyarrow.compute as pc
    ts = out.column("ts")
    missing = ts.null_count
    if not missing:
        return out
    if fallback_ts is not None:
        # Nova's samples carry no timestamp at all: keep them at the epoch, say so.
        report.notes.append(f"{missing} notification(s) without a timestamp placed at the epoch")
        return out.set_column(out.schema.get_field_index("ts"), "ts", pc.fill_null(ts, fallback_ts))
    valid = ts.is_valid()
    for p in out.column("pos").filter(pc.invert(valid)).slice(0, 10).to_pylist():
        report.skip(p)
    if missing > 10:
        report.skipped += missing - 10
    report.notes.append(f"{missing} notification(s) with an unreadable timestamp skipped")
    return out.filter(valid)


def _is_json_object(line: bytes) -> bool:
    if not line.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def resolve_refs(node: Any, base: Path, depth: int = 0) -> Any:
    """Replace every `{"$ref": "file.json#", k: v…}` by the referenced document with the
    sibling keys merged over it (recursively for nested objects), as Nova's sample tests do."""
    if depth > 20:
        raise SourceError(base, "$ref nesting deeper than 20 (a cycle?)")
    if isinstance(node, list):
        return [resolve_refs(x, base, depth) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = str(node["$ref"]).split("#", 1)[0]
        target = (base / ref)
        try:
            loaded = json.loads(target.read_text())
        except (OSError, ValueError) as e:
            raise SourceError(target, f"cannot resolve $ref {node['$ref']!r}: {e}") from None
        resolved = resolve_refs(loaded, target.parent, depth + 1)
        overrides = {k: resolve_refs(v, base, depth) for k, v in node.items() if k != "$ref"}
        return _merge(resolved, overrides)
    return {k: resolve_refs(v, base, depth) for k, v in node.items()}


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over
