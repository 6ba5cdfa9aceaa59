"""Multi-layer correlation (SPEC §4 Multi-layer, thesis fig. 3.4): the identifiers that tie one
layer's objects to the layer below.

* VM ↔ QEMU process ↔ threads. A VM is known by its Nova name (`instance_name_template`, which
  Nova also passes to QEMU as `-name guest=NAME`) and its uuid (QEMU `-uuid`, answered by QMP
  `query-uuid`). Three independent ways to its threads, all kept with the way they were found:
  - `qemu.trace`: QEMU's log trace backend prefixes each line with the thread id that logged it,
    and the file is named after the guest; a tid seen in the same host's kernel trace gives the
    process id, and the process id gives every other thread of that QEMU;
  - `lab.json` (the migration lab reads /proc/PID/task while migrating);
  - the /proc sampler (`proc.sample`, the QEMU named by its command line).
* service ↔ process: the service that reported an operation (nova-compute, nova-scheduler, …)
  and the kernel's processes of the same name on the same host (comm is cut at 15 characters).
* VM ↔ OvS ports (Interface external_ids, models/ovs.port_vms) ↔ packets on those ports.
* volume ↔ instance (models/cinder.volume_attachments).
* VM name ↔ uuid, from every source that gives both.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

COMM_LEN = 15  # the kernel's TASK_COMM_LEN - 1

VM_THREADS_SCHEMA = pa.schema([
    ("vm", pa.string()), ("instance", pa.string()), ("host", pa.string()), ("kernel_host", pa.string()),
    ("pid", pa.int64()), ("tid", pa.int64()), ("thread", pa.string()), ("role", pa.string()),
    ("via", pa.string()),
])


def vm_identities(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Pairs (vm name, instance uuid) from every source that names both (QMP, lab, Nova)."""
    from stacklens.models.cache import memo
    return memo(con, "vm_identities", lambda: _vm_identities(con))


def _vm_identities(con: duckdb.DuckDBPyConnection) -> pa.Table:
    return con.sql("""
        SELECT procname AS vm, instance, min(source) AS via FROM events
        WHERE layer = 'virt' AND procname IS NOT NULL AND instance IS NOT NULL GROUP BY ALL
        UNION
        SELECT coalesce(fields->>'$.payload."nova_object.data".display_name', fields->>'$.payload.display_name'),
               instance, min(source)
        FROM events WHERE layer = 'app' AND instance IS NOT NULL
          AND coalesce(fields->>'$.payload."nova_object.data".display_name', fields->>'$.payload.display_name') IS NOT NULL
        GROUP BY ALL
        ORDER BY vm, instance""").to_arrow_table()


def resolve_vm(con: duckdb.DuckDBPyConnection, key: str) -> tuple[str | None, str | None]:
    """(name, uuid) of a VM given either; (key, None) / (None, key) when only one is known."""
    ids = vm_identities(con).to_pylist()
    for r in ids:
        if key in (r["vm"], r["instance"]):
            # prefer QEMU's name (what the lower layers carry) over a Nova display name
            virt = next((x for x in ids if x["instance"] == r["instance"] and x["via"] != "oslo.notification"
                         and x["via"] != "rabbitmq.dump"), r)
            return virt["vm"], r["instance"]
    known = con.execute("SELECT 1 FROM events WHERE procname = ? AND layer = 'virt' LIMIT 1", [key]).fetchall()
    if known:
        return key, None
    if con.execute("SELECT 1 FROM events WHERE instance = ? LIMIT 1", [key]).fetchall():
        return None, key
    return None, None


KERNEL_THREADS_SCHEMA = pa.schema([("kernel_host", pa.string()), ("tid", pa.int64()), ("pid", pa.int64()),
                                   ("thread", pa.string())])


def kernel_threads(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """tid → pid and last name, per kernel host, of the connection's hosts (columns:
    KERNEL_THREADS_SCHEMA). Per host: a cluster worker builds it over one host's partitions,
    and vm_threads joins every host's on the client."""
    return con.sql("""
        SELECT host AS kernel_host, tid, max(pid) AS pid, arg_max(procname, ts) AS thread
        FROM events WHERE layer = 'kernel' AND tid IS NOT NULL AND tid > 0 AND source <> 'stacklens.sample'
        GROUP BY ALL""").to_arrow_table().cast(KERNEL_THREADS_SCHEMA)


def kernel_threads_of_host(store, host: str) -> pa.Table:
    """kernel_threads of one host, over its kernel partitions only (a cluster task; `store`: a
    Store, or its path on a worker)."""
    from stacklens.cluster import open_store
    con = open_store(store).connect(host=host, layer="kernel")
    try:
        return kernel_threads(con)
    finally:
        con.close()


def store_vm_threads(store, cluster: str | None = None) -> pa.Table:
    """vm_threads of the store (on its shared connection), the kernel part built per kernel
    host: in-process, or one Dask task per host at `cluster`; the join across hosts here."""
    from stacklens.cluster import partition_hosts, per_host
    from stacklens.models.cache import memo, shared_connection
    con = shared_connection(store)  # vm_threads(con) gives the same table after, from the memo
    return memo(con, "vm_threads", lambda: _vm_threads(con, concat_kernel_threads(
        per_host(cluster, kernel_threads_of_host, store, partition_hosts(store, "kernel")))))


def concat_kernel_threads(parts: list[pa.Table]) -> pa.Table:
    return pa.concat_tables([t.cast(KERNEL_THREADS_SCHEMA) for t in parts]) if parts \
        else KERNEL_THREADS_SCHEMA.empty_table()


def vm_threads(con: duckdb.DuckDBPyConnection, kthreads: pa.Table | None = None) -> pa.Table:
    """Every thread known to belong to a VM's QEMU process (columns: VM_THREADS_SCHEMA).
    A thread found several ways is listed once per way (`via`), so callers can tell which
    evidence they rely on. `kthreads`: every host's kernel_threads, when already built per
    host (a cluster's); else built here over the connection."""
    from stacklens.models.cache import memo
    return memo(con, "vm_threads", lambda: _vm_threads(con, kthreads))


def _vm_threads(con: duckdb.DuckDBPyConnection, kthreads: pa.Table | None) -> pa.Table:
    ids = {r["vm"]: r["instance"] for r in vm_identities(con).to_pylist() if r["vm"]}
    con.register("_vm_ids", pa.table({"vm": list(ids), "instance": list(ids.values())},
                                     schema=pa.schema([("vm", pa.string()), ("instance", pa.string())])))
    con.register("_kthreads", kernel_threads(con) if kthreads is None else kthreads.cast(KERNEL_THREADS_SCHEMA))
    try:
        table = con.sql("""
        WITH traced AS (   -- QEMU trace lines: (host, vm, tid that logged)
          SELECT DISTINCT host, procname AS vm, tid FROM events
          WHERE source = 'qemu.trace' AND tid IS NOT NULL AND procname IS NOT NULL
        ), traced_pids AS (
          -- the same host's kernel first; a one-machine lab records every simulated host in one
          -- kernel trace, so another kernel host is used only when the VM's own host has none
          SELECT t.host, t.vm, k.kernel_host, k.pid,
                 row_number() OVER (PARTITION BY t.host, t.vm ORDER BY (k.kernel_host = t.host) DESC) AS pref
          FROM traced t JOIN _kthreads k ON k.tid = t.tid AND k.pid IS NOT NULL
          WHERE k.kernel_host = t.host OR NOT EXISTS (SELECT 1 FROM _kthreads o WHERE o.kernel_host = t.host)
        ), from_trace AS (
          SELECT p.vm, p.host, p.kernel_host, k.pid, k.tid, k.thread, NULL AS role, 'qemu.trace+kernel' AS via
          FROM (SELECT DISTINCT vm, host, kernel_host, pid FROM traced_pids) p
          JOIN _kthreads k ON k.kernel_host = p.kernel_host AND k.pid = p.pid
        ), from_lab AS (
          SELECT procname AS vm, fields->>'$.host' AS host, NULL AS kernel_host, pid, tid,
                 fields->>'$.comm' AS thread, fields->>'$.role' AS role, 'lab.json' AS via
          FROM events WHERE source = 'lab.config' AND name = 'lab.thread'
        ), from_sampler AS (
          SELECT DISTINCT procname AS vm, host, host AS kernel_host, pid, tid, NULL AS thread, NULL AS role,
                 'proc.sample' AS via
          FROM events WHERE source = 'stacklens.sample' AND name = 'proc.sample'
            AND fields->>'$.qemu' IS NOT NULL OR (source = 'stacklens.sample' AND fields->>'$.guest' IS NOT NULL)
        ), everything AS (
          SELECT * FROM from_trace UNION ALL SELECT * FROM from_lab UNION ALL SELECT * FROM from_sampler
        )
        SELECT e.vm, i.instance, e.host, e.kernel_host, CAST(e.pid AS BIGINT) AS pid, CAST(e.tid AS BIGINT) AS tid,
               e.thread, e.role, e.via
        FROM everything e LEFT JOIN _vm_ids i USING (vm)
        WHERE e.vm IS NOT NULL
        ORDER BY e.vm, e.host, e.pid, e.tid, e.via""").to_arrow_table()
    finally:
        con.unregister("_vm_ids")
        con.unregister("_kthreads")
    return table.cast(VM_THREADS_SCHEMA)


def service_processes(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Service name ↔ kernel process on the same host: services that reported operations or
    logged records (their process name, e.g. nova-compute) matched with the processes of that
    name in the host's kernel trace (columns: service, host, pid, threads, via)."""
    return con.sql(f"""
        WITH services AS (
          SELECT DISTINCT host, procname AS service FROM events
          WHERE layer = 'app' AND procname IS NOT NULL AND procname <> ''
          UNION
          SELECT DISTINCT host, split_part(split_part(fields->>'$.publisher_id', ':', 1), '.', 1)
          FROM events WHERE layer = 'app' AND fields->>'$.publisher_id' IS NOT NULL
        ), procs AS (
          SELECT host, pid, procname, count(DISTINCT tid) AS threads FROM events
          WHERE layer = 'kernel' AND pid IS NOT NULL AND procname IS NOT NULL GROUP BY ALL
        )
        SELECT s.service, s.host, p.pid, max(p.threads) AS threads, 'kernel comm' AS via
        FROM services s JOIN procs p ON p.host = s.host
          AND (p.procname = s.service OR p.procname = left(s.service, {COMM_LEN}))
        GROUP BY ALL ORDER BY s.host, s.service, p.pid""").to_arrow_table()


def request_hosts(con: duckdb.DuckDBPyConnection, request_id: str) -> pa.Table:
    """Where one request went: per host and service (or process), its events and time span
    (after clock synchronization: the store's `events` view applies the transforms)."""
    return con.sql("""
        SELECT host, coalesce(procname, split_part(fields->>'$.publisher_id', '.', 1), source) AS service,
               layer, count(*) AS events, min(ts) AS first_ts, max(ts) AS last_ts
        FROM events WHERE request_id = $r OR fields->>'$.global_request_id' = $r
           OR fields->>'$._context_request_id' = $r
        GROUP BY ALL ORDER BY first_ts""", params={"r": request_id}).to_arrow_table()


def request_instances(con: duckdb.DuckDBPyConnection, request_id: str) -> list[str]:
    """Instances (uuids) a request touched."""
    rows = con.execute("SELECT DISTINCT instance FROM events WHERE instance IS NOT NULL AND"
                       " (request_id = $r OR fields->>'$._context_request_id' = $r)", {"r": request_id}).fetchall()
    return sorted(r[0] for r in rows)


def vm_port_packets(con: duckdb.DuckDBPyConnection, vm: str) -> pa.Table:
    """OvS datapath packets received on or sent to the ports of one VM (by name or uuid, as the
    Interface external_ids carry it), counted by path: host, dp_port, interface, path, packets."""
    from stacklens.models.ovs import packet_paths, port_vms
    ports = port_vms(con).to_pylist()
    mine = [p for p in ports if p["vm"] == vm]
    if not mine:
        return pa.table({"host": pa.array([], pa.string()), "dp_port": pa.array([], pa.string()),
                         "interface": pa.array([], pa.string()), "path": pa.array([], pa.string()),
                         "packets": pa.array([], pa.int64())})
    paths = packet_paths(con)
    con.register("_paths", paths)
    con.register("_ports", pa.Table.from_pylist(mine))
    try:
        return con.sql("""
            SELECT p.host, p.dp_port, p.interface, x.path, count(*) AS packets
            FROM _paths x JOIN _ports p ON p.host = x.host AND CAST(x.in_vport AS VARCHAR) = p.dp_port
            GROUP BY ALL ORDER BY packets DESC""").to_arrow_table()
    finally:
        con.unregister("_paths")
        con.unregister("_ports")


def instance_volumes(con: duckdb.DuckDBPyConnection, instance: str) -> pa.Table:
    """Volumes attached to one instance (volume, host, attached_ts, detached_ts, request_id)."""
    from stacklens.models.cinder import volume_attachments
    volume_attachments(con)
    return con.sql("SELECT volume, host, attached_ts, detached_ts, request_id FROM attachments"
                   " WHERE instance = $i ORDER BY attached_ts", params={"i": instance}).to_arrow_table()
