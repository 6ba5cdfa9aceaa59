"""Cinder (SPEC §4): volume ↔ instance ↔ host. An attachment opens at a volume attach
(Nova's instance.volume_attach.end / legacy compute.instance.volume.attach, Cinder's
volume.attach.end) and closes at the matching detach of the same volume from the same
instance; two attachments of one volume to different instances that overlap in time are a
finding (a volume attached to two VMs at once)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from stacklens.models.app_ops import register_operations

ATTACHMENTS_SQL = r"""
WITH marks AS (
  SELECT ts, volume, instance, node, request_id, event_type,
         CASE WHEN regexp_matches(event_type, 'volume[._]attach(\.end)?$') THEN 'attach' ELSE 'detach' END AS edge
  FROM ops
  WHERE volume IS NOT NULL AND instance IS NOT NULL
    AND regexp_matches(event_type, '^(instance\.volume_(attach|detach)\.end|compute\.instance\.volume\.(attach|detach)|volume\.(attach|detach)\.end)$')
), attaches AS (
  SELECT a.*, (SELECT min(d.ts) FROM marks d WHERE d.edge = 'detach' AND d.volume = a.volume
               AND d.instance = a.instance AND d.ts >= a.ts) AS detached_ts
  FROM marks a WHERE a.edge = 'attach'
)
SELECT volume, instance, node AS host, ts AS attached_ts, detached_ts, request_id
FROM attaches ORDER BY volume, attached_ts
"""

MULTI_ATTACH_SQL = """
SELECT a.volume, a.instance AS instance, b.instance AS other_instance, a.host, b.host AS other_host,
       greatest(a.attached_ts, b.attached_ts) AS since_ts,
       least(coalesce(a.detached_ts, 9223372036854775807), coalesce(b.detached_ts, 9223372036854775807)) AS until_ts
FROM attachments a JOIN attachments b
  ON a.volume = b.volume AND a.instance < b.instance
 AND a.attached_ts < coalesce(b.detached_ts, 9223372036854775807)
 AND b.attached_ts < coalesce(a.detached_ts, 9223372036854775807)
ORDER BY since_ts
"""


def volume_attachments(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Attachment intervals (volume, instance, host); also registered as `attachments`."""
    register_operations(con)
    table = con.sql(ATTACHMENTS_SQL).to_arrow_table()
    con.register("attachments", table)
    return table


def multi_attached_volumes(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Findings: a volume attached to two instances over the same time range (until_ts is
    int64 max while both attachments are still open)."""
    volume_attachments(con)
    return con.sql(MULTI_ATTACH_SQL).to_arrow_table()
