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
import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import SourceError
from stacklens.sources.base import Reader

_HINT = re.compile(rb'^\s*\{.*"(?:levelname|funcname)"\s*:.*"created"\s*:', re.S)
BATCH_LINES = 500_000

EXTRACT_SQL = r"""
SELECT pos,
       CAST(split_part(created, '.', 1) AS BIGINT) * 1000000000
         + CAST(rpad(left(split_part(created, '.', 2) || '0', 9), 9, '0') AS BIGINT) AS ts,
       j->>'$.name' AS name,
       TRY_CAST(j->>'$.process' AS BIGINT) AS pid,
       coalesce(j->>'$.context.request_id', j->>'$.extra.request_id') AS request_id,
       coalesce(j->>'$.extra.instance_uuid', j->>'$.extra.instance.uuid',
                nullif(regexp_extract(j->>'$.message', '^\[instance: ([0-9a-fA-F-]{36})\]', 1), ''),
                j->>'$.context.resource_uuid') AS instance,
       CAST(json_object(
         'level', j->>'$.levelname', 'logger', j->>'$.name', 'message', j->>'$.message',
         'global_request_id', j->>'$.context.global_request_id',
         'user', coalesce(j->>'$.context.user_id', j->>'$.context.user'),
         'project', coalesce(j->>'$.context.project_id', j->>'$.context.project'),
         'funcname', j->>'$.funcname', 'lineno', TRY_CAST(j->>'$.lineno' AS BIGINT),
         'thread', j->'$.thread', 'thread_name', j->>'$.thread_name',
         'hostname', j->>'$.hostname', 'traceback', j->'$.traceback', 'extra', j->'$.extra'
       ) AS VARCHAR) AS fields
FROM (
  SELECT pos, j, CAST(j->'$.created' AS VARCHAR) AS created
  FROM (SELECT pos, CAST(line AS JSON) AS j FROM lines WHERE json_valid(line)
        AND json_type(CAST(line AS JSON)) = 'OBJECT')
)
WHERE j->>'$.name' IS NOT NULL AND regexp_full_match(created, '\d+(\.\d+)?')
ORDER BY pos
"""


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
        lines = data.decode("utf-8", "replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        con = duckdb.connect()
        con.execute("SET threads TO 1")
        for start in range(0, len(lines), BATCH_LINES):
            chunk = lines[start:start + BATCH_LINES]
            table = pa.table({"pos": pa.array(range(start + 1, start + 1 + len(chunk)), pa.int64()),
                              "line": pa.array(chunk, pa.string())})
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
            self.report.rows += out.num_rows
            if out.num_rows:
                yield out
        self.options.progress(len(data))
