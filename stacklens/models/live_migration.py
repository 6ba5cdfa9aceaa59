"""Nova live-migration steps per instance (SPEC §4), as Nova reports them in notifications.

Legacy and versioned event types map to one step vocabulary:

| step          | where       | legacy                                          | versioned                                  |
|---------------|-------------|-------------------------------------------------|--------------------------------------------|
| pre           | destination | compute.instance.live_migration.pre.*           | instance.live_migration_pre.*              |
| migration     | source      | (the interval between pre.end and post.start)   |                                            |
| post          | source      | compute.instance.live_migration._post.*         | instance.live_migration_post.*             |
| post_dest     | destination | compute.instance.live_migration.post.dest.*     | instance.live_migration_post_dest.*        |
| rollback      | source      | compute.instance.live_migration._rollback.*     | instance.live_migration_rollback.*         |
| rollback_dest | destination | compute.instance.live_migration.rollback.dest.* | instance.live_migration_rollback_dest.*    |
| abort, force_complete | source |                                         | instance.live_migration_abort/force_complete.* |

`live_migration_steps(con)` gives one row per (instance, step) with start/end/duration and the
host that reported it; other models (e.g. the QEMU migration lab) join on `instance` and time.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from stacklens.models.service_tasks import service_tasks

STEP_ORDER = ["select_destination", "pre", "migration", "post", "post_dest", "rollback",
              "rollback_dest", "abort", "force_complete"]
STEP_WHERE = {"select_destination": "scheduler", "pre": "destination", "migration": "source",
              "post": "source", "post_dest": "destination", "rollback": "source",
              "rollback_dest": "destination", "abort": "source", "force_complete": "source"}

STEP_OF_TASK = {
    "compute.instance.live_migration.pre": "pre",
    "compute.instance.live_migration._post": "post",
    "compute.instance.live_migration.post.dest": "post_dest",
    "compute.instance.live_migration._rollback": "rollback",
    "compute.instance.live_migration.rollback.dest": "rollback_dest",
    "instance.live_migration_pre": "pre",
    "instance.live_migration_post": "post",
    "instance.live_migration_post_dest": "post_dest",
    "instance.live_migration_rollback": "rollback",
    "instance.live_migration_rollback_dest": "rollback_dest",
    "instance.live_migration_abort": "abort",
    "instance.live_migration_force_complete": "force_complete",
}


def live_migration_steps(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Per instance, the Nova live-migration steps in order (columns: instance, vmname, step,
    where, host, start_ts, end_ts, duration_ns, outcome, request_id, event_family)."""
    tasks = service_tasks(con)
    con.register("_step_map", pa.table({"task": list(STEP_OF_TASK), "step": list(STEP_OF_TASK.values())}))
    con.register("_step_rank", pa.table({"step": STEP_ORDER, "rank": list(range(len(STEP_ORDER))),
                                         "where_": [STEP_WHERE[s] for s in STEP_ORDER]}))
    steps = con.sql("""
      WITH s AS (
        -- the host that ran the step (its publisher), not the payload's host (the VM's, still the source)
        SELECT t.instance, t.vmname, m.step, coalesce(t.host, t.node) AS host, t.worker, t.start_ts, t.end_ts,
               t.duration_ns, t.outcome, t.request_id,
               CASE WHEN t.task LIKE 'compute.%' THEN 'legacy' ELSE 'versioned' END AS event_family
        FROM tasks t JOIN _step_map m USING (task)
      ), sched AS (  -- select_destinations of the same request
        SELECT DISTINCT s.instance, s.vmname, 'select_destination' AS step, t.host AS host, t.worker,
               t.start_ts, t.end_ts, t.duration_ns, t.outcome, t.request_id, s.event_family
        FROM tasks t JOIN s ON t.request_id = s.request_id
        WHERE t.task IN ('scheduler.select_destinations', 'compute_task.select_destinations')
      ), mig AS (  -- the migration itself runs on the source between pre.end and post.start
        SELECT pre.instance, pre.vmname, 'migration' AS step, post.host AS host, post.worker AS worker,
               pre.end_ts AS start_ts, post.start_ts AS end_ts, post.start_ts - pre.end_ts AS duration_ns,
               'ok' AS outcome, pre.request_id, pre.event_family
        FROM s pre JOIN s post ON post.instance = pre.instance AND pre.step = 'pre'
         AND post.step IN ('post', 'rollback') AND post.start_ts >= pre.end_ts
        QUALIFY row_number() OVER (PARTITION BY pre.instance, pre.start_ts
                                   ORDER BY post.start_ts, post.step) = 1
      )
      SELECT x.*, r.where_ AS "where" FROM (SELECT * FROM s UNION ALL SELECT * FROM sched
                                            UNION ALL SELECT * FROM mig) x
      JOIN _step_rank r USING (step)
      ORDER BY x.instance, x.start_ts, r.rank
    """).to_arrow_table()
    con.unregister("_step_map")
    con.unregister("_step_rank")
    return steps


def failed_live_migrations(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Live migrations the conductor gave up on before any step ran on a host (a destination
    pre-check failure, then no other host): Nova's `compute_task.migrate_server.error`. The
    reason is the first exception of the same request (the destination's
    `compute.exception`, e.g. MigrationPreCheckError), else the error's own; the VM stayed
    on the host its last state record before the error names."""
    service_tasks(con)
    rows = con.sql("""
      WITH err AS (
        SELECT ts, request_id, instance, fault, host FROM ops
        WHERE event_type IN ('compute_task.migrate_server.error', 'compute_task.live_migration.error')
          AND instance IS NOT NULL
      ), exc AS (
        SELECT request_id, arg_min(fault, ts) AS fault, arg_min(host, ts) AS host FROM ops
        WHERE (event_type = 'compute.exception' OR ends_with(event_type, '.error')) AND fault IS NOT NULL
          AND request_id IS NOT NULL
        GROUP BY request_id
      ), before AS (
        SELECT e.request_id, e.instance, arg_max(o.node, o.ts) AS node FROM err e JOIN ops o
          ON o.instance = e.instance AND o.ts < e.ts AND o.node IS NOT NULL AND o.node <> 'None'
        GROUP BY ALL
      )
      SELECT e.instance, 'precheck' AS step, 'destination' AS "where", x.host AS host, e.ts AS start_ts,
             e.ts AS end_ts, 0 AS duration_ns, 'error' AS outcome, e.request_id,
             coalesce(x.fault, e.fault) AS fault, b.node AS stayed_on,
             (SELECT max(o.vmname) FROM ops o WHERE o.instance = e.instance) AS vmname
      FROM err e LEFT JOIN exc x USING (request_id) LEFT JOIN before b USING (request_id, instance)
      ORDER BY e.ts
    """).to_arrow_table()
    return rows.to_pylist()


def nova_live_migrations(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """One row per live migration as Nova tells it (instance, request): source, destination,
    outcome (completed / rolled back / failed / running), start/end, the reason of a failure
    and the host the VM is on afterwards; from the steps above, no QEMU event needed."""
    out: dict[tuple, dict] = {}
    for s in live_migration_steps(con).to_pylist():
        if s["step"] == "select_destination":
            continue
        m = out.setdefault((s["instance"], s["request_id"]), {
            "instance": s["instance"], "vmname": s["vmname"], "request_id": s["request_id"], "source": None,
            "destination": None, "start_ts": s["start_ts"], "end_ts": s["end_ts"], "outcome": "running",
            "reason": None, "host_after": None, "steps": []})
        m["steps"].append(s["step"])
        m["start_ts"] = min(m["start_ts"], s["start_ts"])
        m["end_ts"] = max(x for x in (m["end_ts"], s["end_ts"], s["start_ts"]) if x is not None)
        if STEP_WHERE.get(s["step"]) == "source" and s["host"]:
            m["source"] = s["host"]
        elif STEP_WHERE.get(s["step"]) == "destination" and s["host"]:
            m["destination"] = s["host"]
    for m in out.values():
        if "post_dest" in m["steps"]:
            m["outcome"], m["host_after"] = "completed", m["destination"]
        elif "rollback" in m["steps"] or "rollback_dest" in m["steps"]:
            m["outcome"], m["host_after"] = "rolled back", m["source"]
    for f in failed_live_migrations(con):
        m = out.setdefault((f["instance"], f["request_id"]), {
            "instance": f["instance"], "vmname": f["vmname"], "request_id": f["request_id"], "source": f["stayed_on"],
            "destination": None, "start_ts": f["start_ts"], "end_ts": f["end_ts"], "outcome": "failed",
            "reason": None, "host_after": f["stayed_on"], "steps": []})
        m["outcome"], m["reason"], m["host_after"] = "failed", f["fault"], f["stayed_on"]
        m["destination"] = m["destination"] or f["host"]
        m["steps"].append("precheck")
    return sorted(out.values(), key=lambda m: m["start_ts"])
