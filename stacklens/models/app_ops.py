"""Application-layer operations: one row per thesis record or notification, whatever its
source, with the columns the Nova/Neutron/Cinder models need.

Sources read from the store (never from the files again):
- thesis records `lttng_trace:{…}` in LTTng Python agent events (`lttng_python:event`);
- oslo.messaging notifications (source `oslo.notification`, and the notifications of a
  RabbitMQ firehose dump, source `rabbitmq.dump`), legacy and versioned payloads.

Columns: ts, host, source, worker (the logger and thread of a thesis record, the
publisher_id of a notification: what executes the task), service, event_type, request_id,
instance (uuid), vmname, vm_state, task_state, node (host of the VM), project_id, volume,
resource (Neutron network/subnet/port/router), vcpus, memory_mb, fault.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from stacklens.sources.thesis_record import parse_thesis_record

OPS_SCHEMA = pa.schema([
    ("ts", pa.int64()), ("host", pa.string()), ("source", pa.string()), ("worker", pa.string()),
    ("service", pa.string()), ("event_type", pa.string()), ("request_id", pa.string()),
    ("instance", pa.string()), ("vmname", pa.string()), ("vm_state", pa.string()),
    ("task_state", pa.string()), ("node", pa.string()), ("project_id", pa.string()),
    ("volume", pa.string()), ("resource", pa.string()), ("vcpus", pa.int64()), ("memory_mb", pa.int64()), ("fault", pa.string()),
])

_D = "(fields->'$.payload.\"nova_object.data\"')"
_FLAVOR = f"({_D}->'$.flavor.\"nova_object.data\"')"

NOTIFICATION_SQL = f"""
SELECT ts, host, source,
       fields->>'$.publisher_id' AS worker,
       split_part(split_part(fields->>'$.publisher_id', ':', 1), '.', 1) AS service,
       fields->>'$.event_type' AS event_type,
       coalesce(request_id, fields->>'$._context_request_id', {_D}->>'$.request_id') AS request_id,
       coalesce(instance, fields->>'$.payload.instance_id', {_D}->>'$.uuid') AS instance,
       coalesce(fields->>'$.payload.display_name', {_D}->>'$.display_name') AS vmname,
       coalesce(fields->>'$.payload.state', {_D}->>'$.state') AS vm_state,
       coalesce(fields->>'$.payload.new_task_state', fields->>'$.payload.task_state', {_D}->>'$.task_state') AS task_state,
       coalesce(fields->>'$.payload.host', {_D}->>'$.host') AS node,
       coalesce(fields->>'$.payload.tenant_id', {_D}->>'$.tenant_id', fields->>'$._context_project_id') AS project_id,
       coalesce(fields->>'$.payload.volume_id', {_D}->>'$.volume_id') AS volume,
       -- Neutron: the network/subnet/port/router/floating IP a notification is about
       coalesce(fields->>'$.payload.network.id', fields->>'$.payload.subnet.id', fields->>'$.payload.port.id',
                fields->>'$.payload.router.id', fields->>'$.payload.floatingip.id',
                fields->>'$.payload.network_id', fields->>'$.payload.subnet_id', fields->>'$.payload.port_id',
                fields->>'$.payload.router_id', fields->>'$.payload.floatingip_id') AS resource,
       TRY_CAST(coalesce(fields->>'$.payload.vcpus', {_FLAVOR}->>'$.vcpus') AS BIGINT) AS vcpus,
       TRY_CAST(coalesce(fields->>'$.payload.memory_mb', {_FLAVOR}->>'$.memory_mb') AS BIGINT) AS memory_mb,
       coalesce(CAST(fields->'$.payload.fault' AS VARCHAR), CAST({_D}->'$.fault' AS VARCHAR),
                fields->>'$.payload.exception') AS fault
FROM events
WHERE layer = 'app' AND source IN ('oslo.notification', 'rabbitmq.dump')
  AND fields->>'$.event_type' IS NOT NULL
"""

THESIS_SQL = """
SELECT ts, host, source, fields->>'$.logger_name' AS logger, CAST(fields->>'$.thread' AS VARCHAR) AS thread,
       fields->>'$.msg' AS msg
FROM events WHERE name = 'lttng_python:event' AND fields->>'$.msg' LIKE '%lttng_trace:%'
"""


def app_operations(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Every application-layer operation record in the store, in time order."""
    notes = con.sql(NOTIFICATION_SQL).to_arrow_table()
    parts = [notes.select(OPS_SCHEMA.names).cast(OPS_SCHEMA)]
    thesis = con.execute(THESIS_SQL).fetchall()
    if thesis:
        parts.append(_thesis_table(thesis))
    ops = pa.concat_tables(parts)
    return ops.sort_by([("ts", "ascending")])


def _thesis_table(rows: list[tuple]) -> pa.Table:
    cols: dict[str, list] = {n: [] for n in OPS_SCHEMA.names}
    for ts, host, source, logger, thread, msg in rows:
        rec = parse_thesis_record(msg)
        if not rec or not rec.get("event_type"):
            continue
        vals = {
            "ts": ts, "host": host, "source": "lttng_trace", "worker": f"{logger}/{thread}",
            "service": logger, "event_type": rec.get("event_type"), "request_id": rec.get("request_id"),
            "instance": rec.get("instance_id") or rec.get("instance"), "vmname": rec.get("vmname"),
            "vm_state": rec.get("vm_state"), "task_state": rec.get("vm_task"),
            "node": rec.get("host") or rec.get("hostname"), "project_id": rec.get("project_id"),
            "volume": rec.get("volume"),
            # Neutron records name their network/router (thesis table 4.4)
            "resource": (rec.get("network") or rec.get("router") or rec.get("subnet")
                         or rec.get("port")),
            "vcpus": None, "memory_mb": None, "fault": None,
        }
        for k in cols:
            cols[k].append(vals[k])
    return pa.table(cols, schema=OPS_SCHEMA)


def register_operations(con: duckdb.DuckDBPyConnection) -> None:
    """Make the operations table available to SQL as `ops` (built once per connection)."""
    from stacklens.models.cache import memo
    con.register("ops", memo(con, "ops", lambda: app_operations(con)))
