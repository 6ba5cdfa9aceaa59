"""Service task intervals (SPEC §4, service view): per worker, `X.start` opens and `X.end`
(or `X.error`) closes an interval of task X, for one request and one VM/volume.

Pairing is done in SQL: the k-th start and the k-th end/error of the same key (worker, task,
request, object) in time order form one interval, so interleaved tasks of different requests
on one worker pair correctly; a start without its end is an open interval (end null).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from stacklens.models.app_ops import register_operations

TASKS_SQL = r"""
WITH marks AS (
  SELECT *, regexp_extract(event_type, '^(.*)\.(start|end|error)$', 1) AS task,
         regexp_extract(event_type, '^(.*)\.(start|end|error)$', 2) AS edge,
         coalesce(instance, vmname, volume, resource, '') AS object
  FROM ops WHERE regexp_matches(event_type, '\.(start|end|error)$')
), ranked AS (
  SELECT *, row_number() OVER (PARTITION BY worker, task, coalesce(request_id, ''), object,
                                            edge = 'start' ORDER BY ts) AS k
  FROM marks
), paired AS (
SELECT s.task, s.worker, s.service, s.host, s.source, s.request_id,
       s.instance, coalesce(s.vmname, e.vmname) AS vmname, coalesce(s.volume, e.volume) AS volume, s.resource,
       coalesce(e.node, s.node) AS node, s.ts AS start_ts, e.ts AS end_ts, e.ts - s.ts AS duration_ns,
       CASE WHEN e.edge IS NULL THEN 'open' WHEN e.edge = 'error' THEN 'error' ELSE 'ok' END AS outcome,
       s.vm_state AS state_before, e.vm_state AS state_after, e.fault
FROM ranked s LEFT JOIN ranked e
  ON e.edge IN ('end', 'error') AND e.worker = s.worker AND e.task = s.task
 AND coalesce(e.request_id, '') = coalesce(s.request_id, '') AND e.object = s.object AND e.k = s.k
WHERE s.edge = 'start'
), failures AS (  -- the error that ended a request whose task never got its end
  SELECT request_id, ts, fault FROM ops WHERE ends_with(event_type, '.error') AND request_id IS NOT NULL
)
-- A task left open by a request that then failed (NoValidHost: the scheduler's
-- select_destinations.start has no end, the conductor emits compute_task.*.error) ended in
-- that error: it is an error, not an open task.
SELECT p.* REPLACE (
         CASE WHEN p.outcome = 'open' AND x.ts IS NOT NULL THEN x.ts ELSE p.end_ts END AS end_ts,
         CASE WHEN p.outcome = 'open' AND x.ts IS NOT NULL THEN x.ts - p.start_ts ELSE p.duration_ns END AS duration_ns,
         CASE WHEN p.outcome = 'open' AND x.ts IS NOT NULL THEN 'error' ELSE p.outcome END AS outcome,
         CASE WHEN p.outcome = 'open' AND x.ts IS NOT NULL THEN x.fault ELSE p.fault END AS fault)
FROM paired p ASOF LEFT JOIN failures x ON x.request_id = p.request_id AND x.ts >= p.start_ts
ORDER BY p.start_ts
"""

STATS_SQL = """
SELECT task, count(*) AS count, count(duration_ns) AS closed,
       CAST(sum(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END) AS BIGINT) AS errors,
       min(duration_ns) AS min_ns, avg(duration_ns) AS mean_ns,
       quantile_cont(duration_ns, 0.5) AS median_ns, max(duration_ns) AS max_ns,
       CAST(sum(duration_ns) AS BIGINT) AS total_ns
FROM tasks GROUP BY task ORDER BY total_ns DESC NULLS LAST, task
"""


def service_tasks(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Task intervals of every worker (also registered as `tasks` on `con`)."""
    from stacklens.models.cache import memo
    register_operations(con)
    table = memo(con, "tasks", lambda: con.sql(TASKS_SQL).to_arrow_table())
    con.register("tasks", table)
    return table


def task_statistics(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Duration statistics per task type."""
    service_tasks(con)
    return con.sql(STATS_SQL).to_arrow_table()


def idle_workers(con: duckdb.DuckDBPyConnection, start_ns: int, end_ns: int) -> list[str]:
    """Workers known to the store that ran no task overlapping [start_ns, end_ns)."""
    service_tasks(con)
    rows = con.execute(
        "SELECT DISTINCT worker FROM tasks EXCEPT SELECT DISTINCT worker FROM tasks"
        " WHERE start_ts < ? AND coalesce(end_ts, start_ts) >= ?", [end_ns, start_ns]).fetchall()
    return sorted(r[0] for r in rows)


UNMATCHED_SQL = r"""
WITH marks AS (
  SELECT ts, host, worker, request_id, regexp_extract(event_type, '^(.*)\.(start|end|error)$', 1) AS task,
         regexp_extract(event_type, '^(.*)\.(start|end|error)$', 2) AS edge
  FROM ops WHERE regexp_matches(event_type, '\.(start|end|error)$')
), ends AS (   -- an end/error whose worker never started that task for that request before it
  SELECT e.* FROM marks e
  WHERE e.edge IN ('end', 'error') AND NOT EXISTS (
    SELECT 1 FROM marks s WHERE s.edge = 'start' AND s.worker = e.worker AND s.task = e.task
       AND coalesce(s.request_id, '') = coalesce(e.request_id, '') AND s.ts <= e.ts)
), opens AS (
  SELECT start_ts AS ts, host, worker, request_id, task FROM tasks WHERE outcome = 'open'
)
SELECT 'end without start' AS kind, task, worker, host, any_value(request_id) AS request_id, count(*) AS count,
       min(ts) AS first_ts, max(ts) AS last_ts FROM ends GROUP BY ALL
UNION ALL
SELECT 'start without end', task, worker, host, any_value(request_id), count(*), min(ts), max(ts)
FROM opens GROUP BY ALL
ORDER BY count DESC, task
"""


def unmatched_task_records(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Task edges that pair with nothing, counted per kind, task and worker."""
    service_tasks(con)
    return con.sql(UNMATCHED_SQL).to_arrow_table().to_pylist()
