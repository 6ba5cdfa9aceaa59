"""Models read from Nova's own log records (oslo.log text or JSON, already in the store):

- API requests: the WSGI access line nova-api (and its metadata server) writes per request,
  `CLIENT "METHOD URL PROTO" status: N len: N time: SECONDS`, with the request id of the
  record's context;
- instance lifecycle events: nova.compute.manager's `[instance: UUID] VM Started (Lifecycle
  Event)` (Started/Paused/Resumed/Stopped/Suspended…), which Nova logs when the hypervisor
  reports a power change;
- instance step timings: `[instance: UUID] Took N seconds to spawn the instance on the
  hypervisor.` / `… to build instance.` / `… to destroy …` / `… to deallocate network …`.

Everything is one SQL pass over the `events` view (regexp_extract over the message column);
no file is read again.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

_LOG_SOURCES = "('oslo.log', 'oslo.log.json')"
_MSG = "fields->>'$.message'"

API_SQL = rf"""
WITH m AS (
  SELECT ts, host, procname, pid, name AS logger, request_id, {_MSG} AS msg,
         regexp_extract({_MSG},
           '^(\S+) "([A-Z]+) (\S+) ([^"]*)" status: (\d+) len: (\d+) time: ([0-9.]+)',
           ['client', 'method', 'url', 'protocol', 'status', 'length', 'time']) AS x
  FROM events
  WHERE layer = 'app' AND source IN {_LOG_SOURCES} AND name LIKE '%wsgi%'
    AND {_MSG} LIKE '%" status: % time: %'
)
SELECT ts, host, procname, pid, logger, request_id, x.client AS client, x.method AS method,
       x.url AS url, split_part(x.url, '?', 1) AS path, x.protocol AS protocol,
       CAST(x.status AS INTEGER) AS status, CAST(x.length AS BIGINT) AS length,
       CAST(x.time AS DOUBLE) AS latency_s,
       CAST(round(CAST(x.time AS DECIMAL(18, 9)) * 1000000000) AS BIGINT) AS latency_ns
FROM m WHERE x.method <> ''
ORDER BY ts
"""

# The resource of a request path: the first segment after the version/project that is not an
# id, so `/v2/PROJECT/servers/UUID/action` and `/v2/PROJECT/servers/detail` group as
# `servers/ID/action` and `servers/detail`.
API_STATS_SQL = r"""
SELECT method,
       rtrim(regexp_replace(regexp_replace(path, '^/v[0-9.]+(/[0-9a-f]{32})?', '') || '/',
                            '/([0-9a-f]{32}|[0-9a-f-]{36}|\d+)/', '/ID/', 'g'), '/') AS resource,
       count(*) AS count, CAST(sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS errors,
       min(latency_s) AS min_s, quantile_cont(latency_s, 0.5) AS median_s,
       quantile_cont(latency_s, 0.95) AS p95_s, max(latency_s) AS max_s, avg(latency_s) AS mean_s
FROM api_requests GROUP BY ALL ORDER BY count DESC, method, resource
"""

LIFECYCLE_SQL = rf"""
SELECT ts, host, procname, pid, request_id,
       coalesce(instance, regexp_extract({_MSG}, '\[instance: ([0-9a-f-]+)\]', 1)) AS instance,
       regexp_extract({_MSG}, 'VM (\w+) \(Lifecycle Event\)', 1) AS event
FROM events
WHERE layer = 'app' AND source IN {_LOG_SOURCES} AND {_MSG} LIKE '%(Lifecycle Event)%'
ORDER BY instance, ts
"""

TIMINGS_SQL = rf"""
WITH m AS (
  SELECT ts, host, procname, pid, request_id,
         coalesce(instance, regexp_extract({_MSG}, '\[instance: ([0-9a-f-]+)\]', 1)) AS instance,
         regexp_extract({_MSG}, 'Took ([0-9.]+) seconds to (.*?)\.?$', ['seconds', 'what']) AS x
  FROM events
  WHERE layer = 'app' AND source IN {_LOG_SOURCES} AND {_MSG} LIKE '%Took % seconds to %'
)
SELECT ts, host, procname, pid, request_id, instance,
       -- the verb names the step: spawn, build, destroy, deallocate (network), …
       split_part(x.what, ' ', 1) AS step, x.what AS phrase, CAST(x.seconds AS DOUBLE) AS seconds
FROM m WHERE x.seconds <> ''
ORDER BY instance, ts
"""


def api_requests(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """One row per API request logged by a WSGI server (also registered as `api_requests`)."""
    table = con.sql(API_SQL).to_arrow_table()
    con.register("api_requests", table)
    return table


def api_statistics(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Latency statistics per method and resource."""
    api_requests(con)
    return con.sql(API_STATS_SQL).to_arrow_table()


def instance_lifecycle(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Hypervisor lifecycle events per instance (VM Started/Paused/Resumed/Stopped…)."""
    return con.sql(LIFECYCLE_SQL).to_arrow_table()


def instance_timings(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Nova's own "Took N seconds to …" figures per instance (spawn, build, destroy, …)."""
    return con.sql(TIMINGS_SQL).to_arrow_table()
