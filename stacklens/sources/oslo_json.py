"""oslo.log JSON records (oslo_log.formatters.JSONFormatter, SPEC §3), one object per line.

Decoded column-wise by DuckDB's JSON functions. The timestamp comes from `created` (epoch
seconds, UTC) read as text so that no nanoseconds are lost through a double; `fields` carries
the same keys as the text reader (level, logger, message, global_request_id, user, project)
plus what only JSON has (funcname, lineno, thread, hostname, traceback, extra).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import SourceError
from stacklens.sources.base import Reader, json_objects

_HINT = re.compile(rb'^\s*\{.*"(?:levelname|funcname)"\s*:.*"created"\s*:', re.S)
BATCH_LINES = 500_000

# Every key is read in one parse per row: json_extract_string with a list of paths (each
# `->>` would parse the line again). thread/traceback/extra keep their JSON text.
PATHS = ["$.created", "$.name", "$.process", "$.context.request_id", "$.extra.request_id",
         "$.extra.instance_uuid", "$.extra.instance.uuid", "$.message", "$.context.resource_uuid",
         "$.context.global_request_id", "$.context.user_id", "$.context.user", "$.context.project_id",
         "$.context.project", "$.levelname", "$.funcname", "$.lineno", "$.thread_name", "$.hostname"]
RAW_PATHS = ["$.thread", "$.traceback", "$.extra"]
_P = {p: i + 1 for i, p in enumerate(PATHS)}


def _v(path: str) -> str:
    return f"v[{_P[path]}]"


EXTRACT_SQL = rf"""
SELECT pos,
       CAST(split_part(created, '.', 1) AS BIGINT) * 1000000000
         + CAST(rpad(left(split_part(created, '.', 2) || '0', 9), 9, '0') AS BIGINT) AS ts,
       {_v("$.name")} AS name,
       TRY_CAST({_v("$.process")} AS BIGINT) AS pid,
       coalesce({_v("$.context.request_id")}, {_v("$.extra.request_id")}) AS request_id,
       coalesce({_v("$.extra.instance_uuid")}, {_v("$.extra.instance.uuid")},
                nullif(regexp_extract({_v("$.message")}, '^\[instance: ([0-9a-fA-F-]{{36}})\]', 1), ''),
                {_v("$.context.resource_uuid")}) AS instance,
       {_v("$.levelname")} AS level, {_v("$.name")} AS logger, {_v("$.message")} AS message,
       {_v("$.context.global_request_id")} AS global_request_id,
       coalesce({_v("$.context.user_id")}, {_v("$.context.user")}) AS "user",
       coalesce({_v("$.context.project_id")}, {_v("$.context.project")}) AS project,
       {_v("$.funcname")} AS funcname, TRY_CAST({_v("$.lineno")} AS BIGINT) AS lineno,
       {_v("$.thread_name")} AS thread_name, {_v("$.hostname")} AS hostname,
       CAST(r[1] AS VARCHAR) AS thread, CAST(r[2] AS VARCHAR) AS traceback, CAST(r[3] AS VARCHAR) AS extra
FROM (
  SELECT pos, v, r, v[1] AS created
  FROM (SELECT pos, json_extract_string(line, {PATHS!r}) AS v, json_extract(line, {RAW_PATHS!r}) AS r
        FROM lines WHERE json_valid(line) AND starts_with(ltrim(line), '{{'))
)
WHERE {_v("$.name")} IS NOT NULL AND regexp_full_match(created, '\d+(\.\d+)?')
ORDER BY pos
"""
FIELD_COLUMNS = ["level", "logger", "message", "global_request_id", "user", "project", "funcname",
                 "lineno", "thread_name", "hostname"]
RAW_COLUMNS = ["thread", "traceback", "extra"]
OUT_COLUMNS = ["pos", "ts", "name", "pid", "request_id", "instance", "fields"]


def line_array(data: bytes) -> pa.Array:
    """The lines of `data` (no trailing empty line) split by Arrow's kernels, not by Python
    objects per line; invalid UTF-8 is replaced as bytes.decode("replace") would."""
    try:
        whole = pa.array([data], pa.large_binary()).cast(pa.large_string())
    except (pa.ArrowInvalid, UnicodeDecodeError):
        whole = pa.array([data.decode("utf-8", "replace")], pa.large_string())
    lines = pc.split_pattern(whole, "\n").flatten()
    if len(lines) and lines[len(lines) - 1].as_py() == "":
        lines = lines.slice(0, len(lines) - 1)
    return lines.cast(pa.string())


def line_batches(data: bytes, batch: int) -> Iterator[pa.Table]:
    """Tables (pos, line) of at most `batch` lines; pos counts from 1."""
    lines = line_array(data)
    for start in range(0, len(lines), batch):
        chunk = lines.slice(start, batch)
        yield pa.table({"pos": pa.array(np.arange(start + 1, start + 1 + len(chunk), dtype=np.int64)),
                        "line": chunk})


def _with_fields(out: pa.Table) -> pa.Table:
    """`fields` built column-wise; the JSON-valued keys are spliced in as their own text."""
    body = json_objects(out, FIELD_COLUMNS)
    body = pc.utf8_slice_codeunits(body, 0, -1)  # drop the closing brace
    pieces = [body]
    for name in RAW_COLUMNS:
        raw = out.column(name).combine_chunks()
        member = pc.binary_join_element_wise(pa.scalar(f',"{name}":'), raw, "")
        pieces.append(pc.fill_null(member, ""))
    fields = pc.binary_join_element_wise(*pieces, pa.scalar("}"), "")
    fields = pc.replace_substring(fields, "{,", "{", max_replacements=1)
    return out.select(OUT_COLUMNS[:-1]).append_column("fields", fields)


class OsloJsonLogReader(Reader):
    """Logs written by oslo.log's JSONFormatter."""

    format = "oslo.log.json"
    layer = "app"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        first = head.lstrip().split(b"\n", 1)[0]
        return bool(_HINT.match(first))

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        con = duckdb.connect()
        con.execute("SET threads TO 1")
        for table in line_batches(data, BATCH_LINES):
            con.register("lines", table)
            out = con.sql(EXTRACT_SQL).to_arrow_table()
            con.unregister("lines")
            nonblank = pc.invert(pc.equal(pc.utf8_trim_whitespace(table.column("line")), ""))
            candidates = table.column("pos").filter(nonblank)
            bad = candidates.filter(pc.invert(pc.is_in(candidates, out.column("pos"))))
            for p in bad.slice(0, 10).to_pylist():
                self.report.skip(p)
            if len(bad) > 10:
                self.report.skipped += len(bad) - 10
            out = _with_fields(out)
            self.report.rows += out.num_rows
            if out.num_rows:
                yield out
        self.options.progress(len(data))
