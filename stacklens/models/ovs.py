"""Open vSwitch packet paths from the thesis datapath kprobe events (SPEC §4 OvS).

The thesis instrumented the kernel datapath with four kprobes, each recording the skb, its
EtherType (`protocol`), a tag written into the packet's tail room (`id`, 0 = untagged) and,
for receive/send, the vport:

    addons_lttng_ovs_vport_receive   a packet enters the datapath on a vport
    addons_lttng_ovs_upcall_start    no flow matched: the packet goes up to ovs-vswitchd
    addons_lttng_ovs_upcall_end      ovs-vswitchd re-injects it (a new skb, same tag)
    addons_lttng_ovs_vport_send      the packet leaves on a vport (once per output port)

The skb changes across the upcall, so the tag is what ties a packet's events together. A
tagged packet is a receive plus the events with its tag up to the next receive of the same tag
(tags may be reused). Its path, one of PATHS:

    fast          receive → send                           (a datapath flow matched)
    fast_flood    receive → several sends                  (flow output to several ports)
    slow          receive → upcall_start → upcall_end → send
    slow_flood    the same with several sends              (e.g. a flooded unknown destination)
    upcall_lost   receive → upcall_start, never re-injected (dropped by ovs-vswitchd, or trace end)
    no_send       receive only                             (dropped in the datapath, or trace end)
    no_receive    tagged events whose receive is not in the trace (trace started mid-packet)

Everything is DuckDB SQL over the `events` view; nothing here loops over events in Python.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

PREFIX = "addons_lttng_ovs_"
STAGES = ("vport_receive", "upcall_start", "upcall_end", "vport_send")
EVENT_NAMES = tuple(PREFIX + s for s in STAGES)
PATHS = ("fast", "fast_flood", "slow", "slow_flood", "upcall_lost", "no_send", "no_receive")
SLOW_PATHS = ("slow", "slow_flood", "upcall_lost")

# EtherTypes the thesis traffic carries (protocol is the skb's big-endian u16, decoded).
PROTOCOLS = {0x0800: "IPv4", 0x86DD: "IPv6", 0x0806: "ARP", 0x8100: "802.1Q", 0x88CC: "LLDP"}

_NAMES = ", ".join(f"'{n}'" for n in EVENT_NAMES)
_PROTO_CASE = "CASE protocol " + " ".join(f"WHEN {k} THEN '{v}'" for k, v in PROTOCOLS.items()) + \
    " ELSE printf('0x%04x', protocol) END"


def ovs_events(con: duckdb.DuckDBPyConnection, host: str | None = None) -> pa.Table:
    """The datapath events, one row each: host, ts, cpu, stage, tag, protocol, proto, vport, skb."""
    return con.sql(_EVENTS_SQL + " ORDER BY host, ts, pos", params=_host_params(host)).to_arrow_table()


_EVENTS_SQL = f"""
SELECT host, ts, cpu, pos, replace(name, '{PREFIX}', '') AS stage,
       CAST(fields->>'id' AS UBIGINT) AS tag,
       CAST(fields->>'protocol' AS INTEGER) AS protocol,
       CAST(fields->>'vport' AS BIGINT) AS vport,
       CAST(fields->>'skb' AS UBIGINT) AS skb
FROM events WHERE name IN ({_NAMES}) AND ($host IS NULL OR host = $host)"""


def _host_params(host: str | None) -> dict:
    return {"host": host}


def packet_paths(con: duckdb.DuckDBPyConnection, host: str | None = None) -> pa.Table:
    """One row per tagged packet: its path, stage timestamps and latencies (ns), vports.

    Columns: host, tag, protocol, proto, path, slow, flood, sends, receive_ts, upcall_start_ts,
    upcall_end_ts, first_send_ts, last_send_ts, in_vport, out_vports (list),
    to_upcall_ns (receive → upcall_start), upcall_ns (upcall_start → upcall_end),
    reinject_ns (upcall_end → first send), latency_ns (receive → first send),
    flood_ns (first → last send)."""
    sql = f"""
WITH ev AS ({_EVENTS_SQL}),
tagged AS (
  SELECT *, sum(CAST(stage = 'vport_receive' AS INTEGER))
              OVER (PARTITION BY host, tag ORDER BY ts, pos ROWS UNBOUNDED PRECEDING) AS seq
  FROM ev WHERE tag <> 0
),
packets AS (
  SELECT host, tag, seq,
    any_value(protocol ORDER BY ts) AS protocol,
    min(ts) FILTER (WHERE stage = 'vport_receive') AS receive_ts,
    min(ts) FILTER (WHERE stage = 'upcall_start') AS upcall_start_ts,
    min(ts) FILTER (WHERE stage = 'upcall_end') AS upcall_end_ts,
    min(ts) FILTER (WHERE stage = 'vport_send') AS first_send_ts,
    max(ts) FILTER (WHERE stage = 'vport_send') AS last_send_ts,
    count(*) FILTER (WHERE stage = 'vport_send') AS sends,
    min(vport) FILTER (WHERE stage = 'vport_receive') AS in_vport,
    list(vport ORDER BY ts, pos) FILTER (WHERE stage = 'vport_send') AS out_vports
  FROM tagged GROUP BY host, tag, seq
)
SELECT host, tag, protocol, {_PROTO_CASE} AS proto,
  CASE
    WHEN receive_ts IS NULL THEN 'no_receive'
    WHEN upcall_start_ts IS NULL AND sends = 0 THEN 'no_send'
    WHEN upcall_start_ts IS NULL AND sends = 1 THEN 'fast'
    WHEN upcall_start_ts IS NULL THEN 'fast_flood'
    WHEN upcall_end_ts IS NULL AND sends = 0 THEN 'upcall_lost'
    WHEN sends <= 1 THEN 'slow'
    ELSE 'slow_flood'
  END AS path,
  upcall_start_ts IS NOT NULL AS slow,
  sends > 1 AS flood,
  sends, receive_ts, upcall_start_ts, upcall_end_ts, first_send_ts, last_send_ts,
  in_vport, coalesce(out_vports, []) AS out_vports,
  upcall_start_ts - receive_ts AS to_upcall_ns,
  upcall_end_ts - upcall_start_ts AS upcall_ns,
  first_send_ts - upcall_end_ts AS reinject_ns,
  first_send_ts - receive_ts AS latency_ns,
  last_send_ts - first_send_ts AS flood_ns
FROM packets
ORDER BY host, coalesce(receive_ts, upcall_start_ts, upcall_end_ts, first_send_ts)"""
    return con.sql(sql, params=_host_params(host)).to_arrow_table()


def stage_counts(con: duckdb.DuckDBPyConnection, host: str | None = None) -> dict[str, int]:
    """Events per stage (all packets, tagged or not)."""
    rows = con.execute(f"SELECT stage, count(*) FROM ({_EVENTS_SQL}) GROUP BY stage", _host_params(host)).fetchall()
    found = dict(rows)
    return {s: int(found.get(s, 0)) for s in STAGES}


def untagged_share(con: duckdb.DuckDBPyConnection, host: str | None = None) -> dict:
    """Received packets without a tag (id 0), which cannot be followed through the datapath."""
    total, untagged, untagged_upcalls = con.execute(
        f"SELECT count(*) FILTER (WHERE stage = 'vport_receive'),"
        f" count(*) FILTER (WHERE stage = 'vport_receive' AND tag = 0),"
        f" count(*) FILTER (WHERE stage = 'upcall_start' AND tag = 0)"
        f" FROM ({_EVENTS_SQL})", _host_params(host)).fetchall()[0]
    return {"received": int(total), "untagged": int(untagged), "untagged_upcalls": int(untagged_upcalls),
            "share": (untagged / total) if total else None}


def upcall_times(con: duckdb.DuckDBPyConnection, host: str | None = None) -> pa.Table:
    """Every upcall_start (tagged or not): host, ts, tag, proto — the upcall frequency's input."""
    return con.sql(f"SELECT host, ts, tag, {_PROTO_CASE} AS proto FROM ({_EVENTS_SQL})"
                   f" WHERE stage = 'upcall_start' ORDER BY host, ts", params=_host_params(host)).to_arrow_table()


# ---- userspace (netdev) datapath: sampled ovs-appctl statistics and miss upcalls ----------

def datapath_series(con: duckdb.DuckDBPyConnection, host: str | None = None) -> pa.Table:
    """Per `dpctl/show` sample: the counters and their increase since the previous sample.

    Columns: host, datapath, ts, hit, missed, lost, flows, d_hit, d_missed, d_lost, interval_ns,
    slow_share (d_missed / (d_hit + d_missed): the share of packets that took the slow path
    in the interval ending at ts). The first sample of a series has no increase (NULL)."""
    return con.sql("""
WITH s AS (
  SELECT host, fields->>'datapath' AS datapath, ts,
         CAST(fields->>'hit' AS BIGINT) AS hit, CAST(fields->>'missed' AS BIGINT) AS missed,
         CAST(fields->>'lost' AS BIGINT) AS lost, CAST(fields->>'flows' AS BIGINT) AS flows
  FROM events WHERE name = 'ovs_datapath' AND ($host IS NULL OR host = $host)
), d AS (
  SELECT *, hit - lag(hit) OVER w AS d_hit, missed - lag(missed) OVER w AS d_missed,
         lost - lag(lost) OVER w AS d_lost, ts - lag(ts) OVER w AS interval_ns
  FROM s WINDOW w AS (PARTITION BY host, datapath ORDER BY ts)
)
SELECT *, CASE WHEN d_hit + d_missed > 0 THEN d_missed / (d_hit + d_missed) END AS slow_share
FROM d ORDER BY host, datapath, ts""", params=_host_params(host)).to_arrow_table()


def reconfigurations(con: duckdb.DuckDBPyConnection, host: str | None = None) -> pa.Table:
    """Commands that disturb the datapath flows, as recorded by the sampler (host, ts, command)."""
    return con.sql("SELECT host, ts, fields->>'command' AS command FROM events WHERE name = 'ovs_command'"
                   " AND ($host IS NULL OR host = $host) ORDER BY ts", params=_host_params(host)).to_arrow_table()


def port_vms(con: duckdb.DuckDBPyConnection, host: str | None = None) -> pa.Table:
    """Datapath port → interface → VM, from OvS's own tables: dpctl/show port numbers and the
    Interface rows' external_ids (vm-id, or Nova's vm-uuid; attached-mac gives the VM's MAC).

    Columns: host, dp_port, interface, vm, mac."""
    return con.sql("""
WITH ports AS (
  SELECT DISTINCT host, CAST(p.key AS VARCHAR) AS dp_port, p.value AS interface
  FROM (SELECT host, unnest(map_entries(CAST(fields->'ports' AS MAP(VARCHAR, VARCHAR)))) AS p
        FROM events WHERE name = 'ovs_datapath' AND ($host IS NULL OR host = $host))
), ifaces AS (
  SELECT host, fields->>'name' AS interface,
         coalesce(fields->'external_ids'->>'vm-id', fields->'external_ids'->>'vm-uuid') AS vm,
         coalesce(fields->'external_ids'->>'attached-mac', fields->>'mac_in_use') AS mac
  FROM events WHERE name = 'ovs_interface' AND ($host IS NULL OR host = $host)
  QUALIFY row_number() OVER (PARTITION BY host, fields->>'name' ORDER BY ts DESC) = 1
)
SELECT p.host, p.dp_port, p.interface, i.vm, i.mac FROM ports p LEFT JOIN ifaces i USING (host, interface)
ORDER BY p.host, CAST(p.dp_port AS INTEGER)""", params=_host_params(host)).to_arrow_table()


def miss_upcalls(con: duckdb.DuckDBPyConnection, host: str | None = None) -> pa.Table:
    """Every miss upcall ovs-vswitchd logged (slow-path packets), with the VMs it concerns.

    Columns: host, ts, in_port, interface, src_vm (VM behind the input port), dst_vm (VM whose
    MAC is the destination; NULL for broadcast/multicast), eth_type, ip_src, ip_dst, ip_proto."""
    ports = port_vms(con, host)
    con.register("_ovs_port_vms", ports)
    try:
        return con.sql("""
SELECT u.host, u.ts, u.fields->>'in_port' AS in_port, p.interface, p.vm AS src_vm, d.vm AS dst_vm,
       CAST(u.fields->>'eth_type' AS INTEGER) AS eth_type, u.fields->>'ip_src' AS ip_src,
       u.fields->>'ip_dst' AS ip_dst, CAST(u.fields->>'ip_proto' AS INTEGER) AS ip_proto
FROM events u
LEFT JOIN _ovs_port_vms p ON p.host = u.host AND p.dp_port = u.fields->>'in_port'
LEFT JOIN _ovs_port_vms d ON d.host = u.host AND d.mac = u.fields->>'eth_dst'
WHERE u.name = 'ovs_miss_upcall' AND ($host IS NULL OR u.host = $host)
ORDER BY u.ts""", params=_host_params(host)).to_arrow_table()
    finally:
        con.unregister("_ovs_port_vms")
