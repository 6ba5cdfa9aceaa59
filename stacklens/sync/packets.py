"""Packets seen leaving one host and arriving at another (SPEC §4 Multi-host synchronization).

TCP: `inet_sock_local_out` on the sender ↔ `inet_sock_local_in` on the receiver, keyed by
(seq, ack_seq, flags) — the key Trace Compass uses; the same key on both sides of one hop is
one packet. A key seen more than once on a side (retransmissions) is matched first to first.
Device level: `net_dev_queue` ↔ `netif_receive_skb` keyed the same way when the events carry
the TCP header fields (LTTng's network_header); events without them are not matched. ftrace's
net_dev_queue / netif_receive_skb carry only dev, skbaddr and len (checked on kernel 6.18 by
tests/test_ftrace_net.py): skbaddr is one kernel's memory address and len repeats, so ftrace
recordings give no cross-host match, by design rather than by guess.

Timestamps are the raw host clocks (`ts_raw`): sync computes the transforms applied later.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

PAIRS = [("inet_sock_local_out", "inet_sock_local_in"), ("net_dev_queue", "netif_receive_skb")]


def _key(prefix: str = "") -> str:
    # LTTng 2.x inet_sock_* carry seq/ack_seq/flags at the top level; newer net events nest
    # the TCP header under network_header.transport_header.
    def f(name: str) -> str:
        return (f"coalesce(TRY_CAST(fields->>'{name}' AS UBIGINT), "
                f"TRY_CAST(fields->'network_header'->'transport_header'->>'{name}' AS UBIGINT))")
    return f"{f('seq')} AS seq, {f('ack_seq')} AS ack_seq, {f('flags')} AS flags"


def matched_packets(store) -> pa.Table:
    """send_host, recv_host, send_ts, recv_ts (raw clocks), seq, ack_seq, flags, kind."""
    return match_packets(net_events(store.connect()))


def net_events(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The send and receive events of the connection's hosts: host, ts (raw), name, seq,
    ack_seq, flags. Per host (a cluster worker runs it over one host's partitions)."""
    names = [n for pair in PAIRS for n in pair]
    return con.sql(f"""
        SELECT host, ts_raw AS ts, name, {_key()}
        FROM events WHERE name IN ({', '.join("'" + n + "'" for n in names)})""").to_arrow_table()


def host_sync_inputs(con: duckdb.DuckDBPyConnection) -> tuple[pa.Table, tuple[int, int] | None]:
    """What sync needs of one host, over a connection to its partitions only (a cluster task):
    its send and receive events (net_events) and its first and last raw timestamps (None
    when it has no event)."""
    first, last = con.execute("SELECT min(ts_raw), max(ts_raw) FROM events").fetchall()[0]
    return net_events(con), None if first is None else (int(first), int(last))


def match_packets(net: pa.Table) -> pa.Table:
    """The packets of `net` (net_events of every host, concatenated) matched across hosts."""
    con = duckdb.connect()
    con.register("net", net)
    parts = []
    for send_name, recv_name in PAIRS:
        parts.append(f"""
          SELECT s.host AS send_host, r.host AS recv_host, s.ts AS send_ts, r.ts AS recv_ts,
                 s.seq, s.ack_seq, s.flags, '{send_name}' AS kind
          FROM (SELECT *, row_number() OVER (PARTITION BY host, seq, ack_seq, flags ORDER BY ts) AS k
                FROM net WHERE name = '{send_name}' AND seq IS NOT NULL) s
          JOIN (SELECT *, row_number() OVER (PARTITION BY host, seq, ack_seq, flags ORDER BY ts) AS k
                FROM net WHERE name = '{recv_name}' AND seq IS NOT NULL) r
            ON s.seq = r.seq AND s.ack_seq = r.ack_seq AND s.flags = r.flags AND s.k = r.k
           AND s.host <> r.host""")
    return con.sql(" UNION ALL ".join(parts) + " ORDER BY send_host, recv_host, send_ts").to_arrow_table()
