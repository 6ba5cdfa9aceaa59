"""Application-layer operations: one row per thesis record or notification, whatever its
source, with the columns the Nova/Neutron/Cinder models need.

Sources read from the store (never from the files again):
- thesis records `lttng_trace:{…}` in LTTng Python agent events (`lttng_python:event`);
- oslo.messaging notifications (source `oslo.notification`, and the notifications of a
  RabbitMQ firehose dump, source `rabbitmq.dump`), legacy and versioned payloads.

Columns: ts, host, source, worker (the logger and thread of a thesis record, the
publisher_id of a notification: what executes the task), service, event_type, request_id,
instance (uuid), vmname, vm_state, task_state, node (host of the VM), project_id, volume,
resource (Neutron network/subnet/port/router), vcpus, memory_mb, fault, family (legacy /
versioned / thesis).

Host: a notification's host is the one its data names — the publisher_id's host part
("nova-compute:HOST" versioned, "compute.HOST" legacy) — not the host of the file it was
captured in (one listener captures every service's notifications).

One event, one row: Nova emits most notifications twice when `notification_format = both`
(legacy `compute.instance.live_migration._post.start` and versioned
`instance.live_migration_post.start`). A legacy row is dropped when a versioned twin names the
same operation (canonical event type), edge, request and instance within TWIN_WINDOW_NS.
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
    ("family", pa.string()),
])
TWIN_WINDOW_NS = 5_000_000_000

_D = "(fields->'$.payload.\"nova_object.data\"')"
_FLAVOR = f"({_D}->'$.flavor.\"nova_object.data\"')"

# Nova's notification samples carry no emission time (no top-level `timestamp`): the reader
# falls back to the payload's updated_at/created_at (a sample's 2012 object) or the epoch.
# Neither is when anything happened: such rows are kept out of every time range and
# time-based figure. (CASE: the JSON is looked at for notification rows only.)
TIMED = ("(CASE WHEN source = 'oslo.notification' THEN (fields->>'$.timestamp') IS NOT NULL "
         "ELSE TRUE END)")

_PUB = "fields->>'$.publisher_id'"
_ERR = f"({_D}->'$.reason.\"nova_object.data\"')"
# legacy names whose versioned twin is not the mechanical rename
_LEGACY_ALIASES = {"instance.finish_resize": "instance.resize_finish"}

NOTIFICATION_SQL = f"""
WITH n AS (
SELECT ts,
       coalesce(nullif(CASE WHEN contains({_PUB}, ':') THEN split_part({_PUB}, ':', 2)
                            WHEN contains({_PUB}, '.') THEN substr({_PUB}, strpos({_PUB}, '.') + 1) END, ''),
                host) AS host,
       source,
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
                -- versioned error payloads: ExceptionPayload itself, or as the `reason` of a task
                ({_D}->>'$.exception') || ': ' || ({_D}->>'$.exception_message'),
                ({_ERR}->>'$.exception') || ': ' || ({_ERR}->>'$.exception_message'),
                fields->>'$.payload.exception') AS fault,
       CASE WHEN (fields->'$.payload."nova_object.data"') IS NOT NULL
              OR (fields->'$.payload."versioned_object.data"') IS NOT NULL THEN 'versioned'
            ELSE 'legacy' END AS family
FROM events
WHERE layer = 'app' AND source IN ('oslo.notification', 'rabbitmq.dump')
  AND fields->>'$.event_type' IS NOT NULL
), k AS (
  SELECT *, regexp_extract(event_type, '\\.(start|end|error)$', 1) AS edge,
         regexp_replace(event_type, '\\.(start|end|error)$', '') AS base
  FROM n
), c AS (
  SELECT *, CASE WHEN family = 'legacy' AND base LIKE 'compute.instance.%'
                 THEN 'instance.' || regexp_replace(substr(base, 18), '\\._?', '_', 'g')
                 ELSE base END AS canon0
  FROM k
), t AS (
  SELECT * EXCLUDE (canon0), coalesce(a.versioned, canon0) AS canon
  FROM c LEFT JOIN _legacy_alias a ON a.legacy = c.canon0
)
SELECT * EXCLUDE (edge, base, canon, legacy, versioned) FROM t l
WHERE NOT (l.family = 'legacy' AND EXISTS (
  SELECT 1 FROM t v
  WHERE v.family = 'versioned' AND v.canon = l.canon AND v.edge = l.edge
    AND coalesce(v.request_id, '') = coalesce(l.request_id, '')
    AND (l.instance IS NULL OR v.instance IS NULL OR v.instance = l.instance)
    AND abs(v.ts - l.ts) < {TWIN_WINDOW_NS}))
"""

THESIS_SQL = """
SELECT ts, host, source, fields->>'$.logger_name' AS logger, CAST(fields->>'$.thread' AS VARCHAR) AS thread,
       fields->>'$.msg' AS msg
FROM events WHERE name = 'lttng_python:event' AND fields->>'$.msg' LIKE '%lttng_trace:%'
"""


def app_operations(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Every application-layer operation record in the store, in time order."""
    con.register("_legacy_alias", pa.table({"legacy": list(_LEGACY_ALIASES),
                                            "versioned": list(_LEGACY_ALIASES.values())}))
    try:
        notes = con.sql(NOTIFICATION_SQL).to_arrow_table()
    finally:
        con.unregister("_legacy_alias")
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
            "vcpus": None, "memory_mb": None, "fault": None, "family": "thesis",
        }
        for k in cols:
            cols[k].append(vals[k])
    return pa.table(cols, schema=OPS_SCHEMA)


def register_operations(con: duckdb.DuckDBPyConnection) -> None:
    """Make the operations table available to SQL as `ops` (built once per connection)."""
    from stacklens.models.cache import memo
    con.register("ops", memo(con, "ops", lambda: app_operations(con)))
