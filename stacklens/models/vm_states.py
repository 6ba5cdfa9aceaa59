"""VM state timeline (SPEC §4, VM state view): per project and VM, the vm_state over time and
the host the VM is on, from every application-layer source (thesis records, notifications).

A VM is keyed by its uuid when the source gives one, else by its name (thesis records only
carry the name). `collapse=True` keeps only the changes of (state, host).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from stacklens.models.app_ops import register_operations

TIMELINE_SQL = """
-- {collapse}: TRUE keeps only changes of (state, host)
WITH s AS (
  SELECT ts, coalesce(instance, vmname) AS vm, instance, vmname, project_id, vm_state, task_state,
         node, event_type, source, request_id, vcpus, memory_mb
  FROM ops WHERE vm_state IS NOT NULL AND coalesce(instance, vmname) IS NOT NULL
), named AS (
  -- a uuid-keyed VM takes its display name from any record of it
  SELECT s.* REPLACE (coalesce(vmname, max(vmname) OVER (PARTITION BY vm)) AS vmname),
         lag(vm_state) OVER w AS prev_state, lag(node) OVER w AS prev_node
  FROM s WINDOW w AS (PARTITION BY vm ORDER BY ts)
)
SELECT ts, vm, instance, vmname, project_id, vm_state, task_state, node, event_type, source,
       request_id, vcpus, memory_mb
FROM named
WHERE NOT {collapse} OR prev_state IS NULL OR prev_state <> vm_state
      OR coalesce(prev_node, '') <> coalesce(node, '')
ORDER BY vm, ts
"""


def vm_state_timeline(con: duckdb.DuckDBPyConnection, collapse: bool = True) -> pa.Table:
    register_operations(con)
    return con.sql(TIMELINE_SQL.format(collapse="TRUE" if collapse else "FALSE")).to_arrow_table()


def resources_per_host(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """VMs, vCPUs and RAM reserved per host after each change (flavor from payloads): a VM
    counts on the host of its latest record while its state is not deleted/error."""
    register_operations(con)
    return con.sql("""
      WITH last AS (
        SELECT ts, coalesce(instance, vmname) AS vm, node, vm_state, vcpus, memory_mb,
               lead(ts) OVER (PARTITION BY coalesce(instance, vmname) ORDER BY ts) AS until
        FROM ops WHERE vm_state IS NOT NULL AND node IS NOT NULL AND node <> 'None'
      ), changes AS (SELECT DISTINCT ts FROM last)
      SELECT c.ts, l.node AS host, count(DISTINCT l.vm) AS vms,
             sum(l.vcpus) AS vcpus, sum(l.memory_mb) AS memory_mb
      FROM changes c JOIN last l ON l.ts <= c.ts AND (l.until IS NULL OR l.until > c.ts)
      WHERE l.vm_state NOT IN ('deleted', 'error', 'soft-delete', 'shelved_offloaded')
      GROUP BY c.ts, l.node ORDER BY c.ts, host
    """).to_arrow_table()


def vm_candidates(con: duckdb.DuckDBPyConnection, key: str) -> list[dict]:
    """Instances a name given by a user can mean: its uuid, its display name, or its
    hypervisor (libvirt) name `instance_name` from Nova's payloads — which repeats across
    cells (cell0 numbers the failed boots on its own), so several instances can match."""
    register_operations(con)
    d = "fields->'$.payload.\"nova_object.data\"'"
    rows = con.execute(f"""
      SELECT DISTINCT instance, vmname FROM ops WHERE instance IS NOT NULL AND (instance = ? OR vmname = ?)
      UNION
      SELECT DISTINCT instance, NULL FROM events
      WHERE layer = 'app' AND source = 'oslo.notification' AND instance IS NOT NULL
        AND ({d}->>'$.instance_name' = ? OR fields->>'$.payload.instance_name' = ?)
    """, [key, key, key, key]).fetchall()
    out: dict[str, dict] = {}
    for inst, name in rows:
        e = out.setdefault(inst, {"instance": inst, "vmname": None})
        e["vmname"] = e["vmname"] or name
    return sorted(out.values(), key=lambda e: e["instance"])
