"""Neutron (SPEC §4): dhcp-agent network/subnet/port and l3-agent router tasks with their
durations, from thesis records (event types prefixed `dhcp-agent.` / `l3-agent.`, table 4.4)
and from Neutron notifications (network/subnet/port/router/floatingip .create/.update/.delete
.start/.end); the object of each task is in the `resource` column."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from stacklens.models.service_tasks import service_tasks

NEUTRON_TASK = r"regexp_matches(task, '^(dhcp-agent|l3-agent)\.|^(network|subnet|port|router|floatingip)\.(create|update|delete)$')"


def neutron_tasks(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Task intervals of the Neutron agents and server (also registered as `neutron_tasks`)."""
    service_tasks(con)
    table = con.sql(f"""
      SELECT CASE WHEN task LIKE 'dhcp-agent.%' THEN 'dhcp-agent' WHEN task LIKE 'l3-agent.%' THEN 'l3-agent'
                  ELSE service END AS agent,
             regexp_replace(task, '^(dhcp-agent|l3-agent)\\.', '') AS operation,
             split_part(regexp_replace(task, '^(dhcp-agent|l3-agent)\\.', ''), '.', 1) AS object_kind,
             resource, task, worker, host, node, request_id, start_ts, end_ts, duration_ns, outcome
      FROM tasks WHERE {NEUTRON_TASK} ORDER BY start_ts""").to_arrow_table()
    con.register("neutron_tasks", table)
    return table


def neutron_statistics(con: duckdb.DuckDBPyConnection) -> pa.Table:
    neutron_tasks(con)
    return con.sql("""
      SELECT agent, operation, count(*) AS count, count(duration_ns) AS closed,
             min(duration_ns) AS min_ns, quantile_cont(duration_ns, 0.5) AS median_ns,
             max(duration_ns) AS max_ns, CAST(sum(duration_ns) AS BIGINT) AS total_ns
      FROM neutron_tasks GROUP BY ALL ORDER BY agent, operation""").to_arrow_table()
