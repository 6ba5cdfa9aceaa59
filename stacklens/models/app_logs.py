"""oslo.log records, each once: a service that logs both as text and as JSON (two handlers,
as deployments that ship JSON to a collector and keep text for humans do) writes every record
twice. The JSON copy is kept (microsecond `created`, funcname, thread, traceback); a text
record is dropped when a JSON record of the same host, process, logger, request and message
lies within TEXT_TS_SLACK_NS of it (text timestamps have millisecond resolution, truncated).

The text message is compared without what the text format adds around it: the
`[instance: UUID] ` prefix and oslo.log's debug suffix `funcName /path:lineno`.
"""

from __future__ import annotations

TEXT_TS_SLACK_NS = 1_000_000


def log_records_sql(where: str = "TRUE", columns: str = "") -> str:
    """SQL selecting oslo.log records (text and JSON) matching `where` (over `events`),
    each record once. Columns: ts, pos, src, host, procname, pid, request_id, instance,
    logger, level, message (normalised), source, fields, plus `columns` (extra expressions)."""
    extra = f", {columns}" if columns else ""
    return rf"""
WITH r AS (
  SELECT ts, pos, src, host, pid, request_id, instance, name AS logger,
         -- the text reader names the process after its file (nova-api.log); the same for JSON
         coalesce(procname, nullif(regexp_extract(_path, '([^/]+?)(?:[.]json)?[.]log[^/]*$', 1), '')) AS procname,
         fields->>'$.level' AS level, source, fields,
         regexp_replace(regexp_replace(fields->>'$.message', '\s+\S+ /\S+:\d+\s*$', ''),
                        '^\[instance: [0-9a-f-]+\] ', '') AS message,
         -- the exception of an error record: the last line of its traceback (JSON keeps it
         -- apart; the text format appends it to the message)
         nullif(trim(regexp_extract(coalesce(fields->>'$.traceback', fields->>'$.message'),
                                    '([A-Za-z_][\w.]*(?:Error|Exception|_Remote|NoValidHost|Failure)\w*: [^\n]*)\s*$', 1)),
                '') AS error_summary{extra}
  FROM (SELECT e.*, s.path AS _path FROM events e LEFT JOIN sources s ON s.src = e.src
        WHERE e.layer = 'app' AND e.source IN ('oslo.log', 'oslo.log.json')) events
  WHERE ({where})
)
SELECT * FROM r t
WHERE NOT (t.source = 'oslo.log' AND EXISTS (
  SELECT 1 FROM r j
  WHERE j.source = 'oslo.log.json' AND j.host = t.host AND j.logger = t.logger
    AND coalesce(j.pid, -1) = coalesce(t.pid, -1)
    AND coalesce(j.request_id, '') = coalesce(t.request_id, '')
    -- the text copy of a record with an exception carries "message: Class: text\nTraceback…"
    AND (j.message = t.message OR starts_with(t.message, j.message || ': '))
    AND j.ts > t.ts - {TEXT_TS_SLACK_NS} AND j.ts < t.ts + {TEXT_TS_SLACK_NS}))
"""
