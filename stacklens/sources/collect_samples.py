"""Samples written by stacklens' own tracers (/proc sampler, package inventory): JSON lines.

Each line is `{"stacklens": KIND, "ts": ns, ...}`; KIND becomes the event name
(`proc.sample`, `package.installed`, `package.conflict`), pid/procname/instance become
columns, and the whole record is `fields`. Decoded column-wise by DuckDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import SourceError
from stacklens.sources.base import Reader

MAGIC = b'{"stacklens": "'

SQL = """
SELECT pos, CAST(v[1] AS BIGINT) AS ts, v[2] AS name,
       CASE WHEN starts_with(v[2], 'proc.') THEN 'kernel' ELSE 'app' END AS layer,
       TRY_CAST(v[3] AS BIGINT) AS pid, TRY_CAST(v[3] AS BIGINT) AS tid,
       v[4] AS procname, v[5] AS instance, line AS fields
FROM (SELECT pos, line, json_extract_string(line, ['$.ts', '$.stacklens', '$.pid', '$.procname', '$.instance']) AS v
      FROM lines WHERE json_valid(line))
WHERE TRY_CAST(v[1] AS BIGINT) IS NOT NULL AND v[2] IS NOT NULL
ORDER BY pos
"""
# Lines whose ts is a number that does not fit int64 ns: skipped as out of range.
FAR_SQL = """
SELECT pos FROM (SELECT pos, json_extract_string(line, '$.ts') AS t FROM lines WHERE json_valid(line))
WHERE regexp_full_match(t, '-?[0-9]+') AND TRY_CAST(t AS BIGINT) IS NULL ORDER BY pos
"""


class CollectSampleReader(Reader):
    format = "stacklens.sample"
    layer = "app"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        lines = data.decode("utf-8", "replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        table = pa.table({"pos": pa.array(range(1, len(lines) + 1), pa.int64()),
                          "line": pa.array(lines, pa.string())})
        import duckdb  # here, not at import: recognising parts imports every reader module

        con = duckdb.connect()
        con.execute("SET threads TO 1")
        con.register("lines", table)
        out = con.sql(SQL).to_arrow_table()
        bad = pc.invert(pc.is_in(table.column("pos"), out.column("pos")))
        far = con.sql(FAR_SQL).to_arrow_table().column("pos")  # a number no int64 ns holds
        self.report.skip_out_of_range(far.to_pylist())
        for p in table.column("pos").filter(pc.and_(bad, pc.invert(pc.is_in(table.column("pos"), far)))).to_pylist():
            self.report.skip(p)
        out = out.set_column(out.schema.get_field_index("pid"), "pid", out.column("pid"))
        self.report.rows += out.num_rows
        self.options.progress(len(data))
        if out.num_rows:
            yield out
