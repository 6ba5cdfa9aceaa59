"""One nested timeline for a request or a VM, from the API call down to kernel threads
(thesis fig. 3.4): request → its spans per service and host → the VM operations it drove →
QEMU migration stages and rounds → the VM's QEMU threads on the source host (running,
waiting for a CPU) → who ran while they waited.

Every node carries its layer, host, [start, end) and a few attributes; the web UI, the
exports and the terminal view all draw the same tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stacklens.errors import StacklensError


@dataclass
class Node:
    label: str
    layer: str  # app / virt / kernel / net / storage
    kind: str  # request, span, record, vm, state, migration (QEMU), nova_migration, stage, round, thread, …
    host: str | None = None
    start: int | None = None
    end: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    children: list["Node"] = field(default_factory=list)

    def add(self, child: "Node") -> "Node":
        self.children.append(child)
        return child

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "layer": self.layer, "kind": self.kind, "host": self.host,
                "start": self.start, "end": self.end, "attrs": self.attrs,
                "children": [c.to_dict() for c in self.children]}

    def walk(self, depth: int = 0):
        yield depth, self
        for c in self.children:
            yield from c.walk(depth + 1)

    def fit(self) -> None:
        """Widen each node's span to cover its children (bottom-up)."""
        for c in self.children:
            c.fit()
        spans = [(c.start, c.end if c.end is not None else c.start) for c in self.children if c.start is not None]
        if spans:
            lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
            self.start = lo if self.start is None else min(self.start, lo)
            self.end = hi if self.end is None else max(self.end, hi)


def explain_vm(store, key: str, window: tuple[int, int] | None = None, migrations: bool = True,
               cluster: str | None = None) -> Node:
    """The tree of one VM (name or uuid); `window` restricts it to [start, end); `migrations`
    False leaves its migration attempts out (a request's tree adds its own). `cluster`: a Dask
    scheduler's address, where the kernel part of its migrations runs (one task per source host)."""
    from stacklens.models.cache import shared_connection
    from stacklens.models.correlation import instance_volumes, resolve_vm, vm_port_packets
    con = shared_connection(store)
    from stacklens.models.vm_states import vm_candidates
    found = vm_candidates(con, key)  # the names `stacklens vm` accepts: uuid, display name, instance_name
    if len(found) > 1:
        raise StacklensError(f"{key!r} is ambiguous: it names {len(found)} instances: "
                             + ", ".join(f"{c['instance']} ({c['vmname'] or '?'})" for c in found)
                             + "; give the uuid")
    name, uuid = resolve_vm(con, found[0]["instance"] if found else key)
    if name is None and uuid is None:
        raise StacklensError(f"no VM named {key!r} in the store (give its QEMU/Nova name or its uuid)")
    root = Node(f"VM {name or uuid}", "app", "vm", attrs={"vm": name, "instance": uuid})
    lo, hi = window or (None, None)

    def inside(s: int | None, e: int | None) -> bool:
        if lo is None or s is None:
            return True
        return s < hi and (e if e is not None else s) >= lo

    # application layer: VM states and the tasks of services on it
    if uuid or name:
        from stacklens.models.vm_states import vm_state_timeline
        states = [r for r in vm_state_timeline(con).to_pylist() if r["instance"] == uuid or r["vmname"] == name
                  or r["vm"] in (uuid, name)]
        if states:
            st = root.add(Node("VM states", "app", "group"))
            for r, nxt in zip(states, states[1:] + [None]):
                end = nxt["ts"] if nxt else None
                if inside(r["ts"], end):
                    st.add(Node(f"{r['vm_state']}" + (f" ({r['task_state']})" if r["task_state"] else ""), "app",
                                "state", r["node"], r["ts"], end, {"event_type": r["event_type"],
                                                                   "request_id": r["request_id"]}))
        from stacklens.models.service_tasks import service_tasks
        tasks = [t for t in service_tasks(con).to_pylist()
                 if (uuid and t["instance"] == uuid) or (name and t["vmname"] == name)]
        if tasks:
            g = root.add(Node("service tasks", "app", "group"))
            for t in tasks:
                if inside(t["start_ts"], t["end_ts"]):
                    g.add(Node(t["task"], "app", "span", t["host"], t["start_ts"], t["end_ts"],
                               {"worker": t["worker"], "service": t["service"], "outcome": t["outcome"],
                                "request_id": t["request_id"]}))
        # Nova's live migrations of the VM (completed, rolled back, refused by a pre-check):
        # the outcome, its reason and where the VM stayed, whether or not QEMU was traced
        from stacklens.models.live_migration import nova_live_migrations
        lms = [m for m in nova_live_migrations(con) if (uuid and m["instance"] == uuid)
               or (name and m["vmname"] == name)]
        if lms:
            g = root.add(Node("live migrations (Nova)", "app", "group"))
            for m in lms:
                if inside(m["start_ts"], m["end_ts"]):
                    label = (f"live migration {m['source'] or '?'} → {m['destination'] or '?'}: {m['outcome']}"
                             + (f" — {m['reason']}" if m["reason"] else "")
                             + (f"; VM on {m['host_after']} after" if m["host_after"] else ""))
                    g.add(Node(label, "app", "nova_migration", m["host_after"], m["start_ts"], m["end_ts"],
                               {k: m[k] for k in ("outcome", "reason", "source", "destination", "host_after",
                                                  "request_id")}))
    # virtualization layer: migrations, then the kernel under them
    from stacklens.models.migration import migration_attempts
    mine = [a for a in (migration_attempts(con) if migrations else [])
            if ((name and a.vm == name) or (uuid and a.instance == uuid)) and inside(a.start, a.end)]
    # the VMs' QEMU threads: each kernel host's threads built per host (a task per host on a
    # cluster), joined here with the QEMU traces and the lab's records
    from stacklens.models.correlation import store_vm_threads
    known = store_vm_threads(store, cluster).to_pylist() if mine or name else []
    for a, threads in zip(mine, attempts_thread_times(store, mine, cluster=cluster, vm_thread_rows=known)):
        root.add(migration_node(a, threads))
    if name:
        threads = [r for r in known if r["vm"] == name]
        if threads:
            procs = root.add(Node("QEMU processes", "virt", "group"))
            seen: dict[tuple, Node] = {}
            for r in threads:
                key_ = (r["host"], r["pid"])
                if key_ not in seen:
                    seen[key_] = procs.add(Node(f"QEMU pid {r['pid']} on {r['host']}", "virt", "process", r["host"],
                                                attrs={"pid": r["pid"], "role": r["role"], "via": []}))
                p = seen[key_]
                if r["via"] not in p.attrs["via"]:
                    p.attrs["via"].append(r["via"])
                if r["role"]:
                    p.attrs["role"] = r["role"]
                if not any(c.attrs.get("tid") == r["tid"] for c in p.children):
                    p.add(Node(f"{r['thread'] or 'thread'} ({r['tid']})", "kernel", "thread", r["kernel_host"] or r["host"],
                               attrs={"tid": r["tid"]}))
    # network and storage
    for key_ in filter(None, (uuid, name)):
        pk = vm_port_packets(con, key_).to_pylist()
        if pk:
            g = root.add(Node("OvS ports", "net", "group"))
            for r in pk:
                g.add(Node(f"port {r['dp_port']} ({r['interface']}): {r['packets']} {r['path']} packets", "net",
                           "packets", r["host"], attrs=r))
            break
    if uuid:
        vols = instance_volumes(con, uuid).to_pylist()
        if vols:
            g = root.add(Node("volumes", "storage", "group"))
            for v in vols:
                g.add(Node(f"volume {v['volume']}", "storage", "attachment", v["host"], v["attached_ts"],
                           v["detached_ts"], {"request_id": v["request_id"]}))
    root.fit()
    return root


def migration_node(a, threads: list[dict[str, Any]]) -> Node:
    """A migration attempt: Nova's steps, QEMU's stages and rounds, and on its source host the
    VM's threads (`threads`: its migration_thread_times) with their running / waiting time and
    who preempted them."""
    m = Node(f"live migration {a.source_host} → {a.dest_host or '?'}: {a.verdict}", "virt", "migration",
             a.source_host, a.start, a.end or (a.rounds[-1].end if a.rounds else a.start),
             {"vm": a.vm, "instance": a.instance, "verdict": a.verdict, "reason": a.reason,
              "request_id": a.request_id, "dirty_rate_pages_s": a.dirty_rate_pps,
              "transfer_rate_pages_s": a.transfer_rate_pps, "downtime_ns": a.downtime_ns})
    for s in a.nova_steps:
        m.add(Node(f"nova: {s.name}", "app", "span", s.host, s.start, s.end, {"request_id": s.request_id}))
    if a.setup_ns is not None:
        m.add(Node("setup", "virt", "stage", a.source_host, a.start, a.start + a.setup_ns))
    for r in a.rounds:
        m.add(Node("precopy (first pass)" if r.index == 0 else f"round {r.index}", "virt", "round",
                   a.source_host, r.start, r.end, {"dirty_pages": r.dirty_pages}))
    if a.stop_copy_start is not None:
        m.add(Node("stop&copy (downtime)", "virt", "stage", a.source_host, a.stop_copy_start,
                   a.stop_copy_end or a.end, {"dest": a.dest_host}))
    for t in threads:
        th = m.add(Node(f"{t['name']} ({t['tid']})", "kernel", "thread", a.source_host, a.start, a.end,
                        {"tid": t["tid"], "running_ns": t["running_ns"], "runnable_ns": t["runnable_ns"],
                         "blocked_ns": t["blocked_ns"]}))
        for p in t["preemptors"]:
            who = ", ".join(x for x in (p["vm"], p["role"] if p["role"] != p["vm"] else None) if x)
            th.add(Node(f"preempted by {p['name']} ({p['tid']}{', ' + who if who else ''}) for {p['ns'] / 1e6:.1f} ms",
                        "kernel",
                        "preemptor", a.source_host, attrs=p))
    return m


THREAD_TOP = 5  # preemptors per thread in a migration's node


def attempts_thread_times(store, attempts: list, top: int = THREAD_TOP, cluster: str | None = None,
                          vm_thread_rows: list[dict] | None = None) -> list[list[dict[str, Any]]]:
    """migration_thread_times of each attempt, in their order: per source host, in-process or
    one Dask task per host at `cluster` (that host's kernel model is built there).
    `vm_thread_rows`: the store's vm_threads, if already known (else store_vm_threads)."""
    from stacklens.cluster import per_host
    if not attempts:
        return []
    if vm_thread_rows is None:
        from stacklens.models.correlation import store_vm_threads
        vm_thread_rows = store_vm_threads(store, cluster).to_pylist()
    hosts = sorted({a.source_host for a in attempts})
    found = dict(zip(hosts, per_host(cluster, thread_times_of_host, store, hosts, attempts, top, vm_thread_rows)))
    mine = {h: iter(found[h]) for h in hosts}
    return [next(mine[a.source_host]) for a in attempts]


def thread_times_of_host(store, host: str, attempts: list, top: int = THREAD_TOP,
                         vm_thread_rows: list[dict] | None = None) -> list[list[dict[str, Any]]]:
    """migration_thread_times of the attempts whose source is `host`, in their order (a
    cluster task; `store`: a Store, or its path on a worker)."""
    from stacklens.cluster import open_store
    s = open_store(store)
    return [migration_thread_times(s, a, top, vm_thread_rows) for a in attempts if a.source_host == host]


def migration_thread_times(store, a, top: int = THREAD_TOP,
                           vm_thread_rows: list[dict] | None = None) -> list[dict[str, Any]]:
    """Per thread of the migrating VM's source QEMU: running / runnable / blocked ns over the
    attempt and the threads that ran on its CPU while it waited. Empty without a kernel trace.
    `vm_thread_rows`: the store's vm_threads (models.correlation), if already known."""
    from stacklens.models.cache import kernel_model, shared_connection
    if vm_thread_rows is None:
        from stacklens.models.correlation import vm_threads
        vm_thread_rows = vm_threads(shared_connection(store)).to_pylist()
    threads = [r for r in vm_thread_rows if r["vm"] == a.vm and r["host"] == a.source_host]
    if not threads:
        return []
    kernel_host = next((r["kernel_host"] for r in threads if r["kernel_host"]), a.source_host)
    try:
        k = kernel_model(store, kernel_host)
    except StacklensError:
        return []
    tids = sorted({r["tid"] for r in threads})
    names = {r["tid"]: r["thread"] for r in threads if r["thread"]}
    end = a.end or k.span.end
    k._need("states")
    import pyarrow as pa
    k.con.register("_mine", pa.table({"tid": pa.array(tids, pa.int64())}))
    rows = k.con.execute("""
        SELECT tid, state, CAST(sum(least("end", $2) - greatest(start, $1)) AS BIGINT)
        FROM states JOIN _mine USING (tid) WHERE "end" > $1 AND start < $2 GROUP BY ALL""",
                         [a.start, end]).fetchall()
    per: dict[int, dict[str, int]] = {}
    for tid, state, ns in rows:
        per.setdefault(tid, {})[state] = int(ns)
    others: dict[int, dict] = {}
    for r in vm_thread_rows:  # one row per way found: keep the one with a role
        if r["tid"] not in others or (r["role"] and not others[r["tid"]]["role"]):
            others[r["tid"]] = r
    out = []
    for tid in tids:
        st = per.get(tid, {})
        if not st:
            continue
        pre = k.preemption([tid], a.start, end).to_pylist()[:top]
        out.append({"tid": tid, "name": names.get(tid) or str(tid), "running_ns": st.get("running", 0),
                    "runnable_ns": st.get("runnable", 0), "blocked_ns": st.get("blocked", 0) + st.get("io_wait", 0),
                    "preemptors": [{"tid": p["preemptor_tid"], "name": p["preemptor_name"], "ns": int(p["ns"]),
                                    "vm": (others.get(p["preemptor_tid"]) or {}).get("vm"),
                                    "role": (others.get(p["preemptor_tid"]) or {}).get("role")} for p in pre]})
    out.sort(key=lambda t: -(t["running_ns"] + t["runnable_ns"]))
    return out


def explain_request(store, request_id: str, cluster: str | None = None) -> Node:
    """The tree of one request: its spans per host and service, RPC hops, problems, and for
    each VM it touched the VM's operations within the request's time span. `cluster`: as for
    explain_vm (the request's migrations' kernel part, one task per source host)."""
    from stacklens.models.cache import shared_connection
    from stacklens.models.request_flow import request_flow
    con = shared_connection(store)
    flow = request_flow(con, request_id)
    if not flow.spans and not flow.records and not flow.hops:
        # requests that reached the store only through notifications (no task pairs, no logs)
        hit = con.execute("SELECT count(*) FROM events WHERE request_id = ?", [request_id]).fetchall()[0][0]
        if not hit:
            raise StacklensError(f"no request {request_id!r} in the store")
    # the same start and duration as `stacklens request` (one RequestFlow)
    root = Node(f"request {request_id}", "app", "request", None, flow.start_ts, flow.end_ts,
                attrs={"request_id": request_id,
                       "duration_ns": (flow.end_ts - flow.start_ts) if flow.start_ts is not None else None,
                       "path": " → ".join(f"{p['service']}@{p['host']}" for p in flow.path)})
    by_host: dict[tuple, Node] = {}
    for s in flow.spans:
        k = (s["host"], s["service"] or s["worker"])
        if k not in by_host:
            by_host[k] = root.add(Node(f"{k[1]} on {k[0]}", "app", "service", k[0], attrs={"service": k[1]}))
        by_host[k].add(Node(s["task"], "app", "span", s["host"], s["start_ts"], s["end_ts"],
                            {"worker": s["worker"], "service": s["service"], "outcome": s["outcome"],
                             "instance": s["instance"],
                             "duration_ns": s["duration_ns"]}))
    for h in flow.hops:
        root.add(Node(f"RPC {h['kind']} {h['method']} → {h['topic']}", "app", "hop", h.get("host"), h["ts"], None,
                      {k: h.get(k) for k in ("caller", "service", "replies", "failure")}))
    for p in flow.problems:
        root.add(Node(f"{p.get('level')}: {(p.get('message') or '')[:200]}", "app", "problem", p.get("host"),
                      p.get("ts") or p.get("start_ts"), None, {"source": p.get("source")}))
    from stacklens.models.correlation import request_instances
    instances = sorted({s["instance"] for s in flow.spans if s["instance"]} | set(request_instances(con, request_id)))
    lo, hi = flow.start_ts, flow.end_ts
    from stacklens.models.migration import migration_attempts
    attempts = [a for a in migration_attempts(con) if a.request_id == request_id]
    for inst in instances:
        try:
            sub = explain_vm(store, inst, (lo, hi + 1) if lo is not None and hi is not None else None,
                             migrations=False, cluster=cluster)
        except StacklensError:
            continue
        root.add(sub)
    for a, threads in zip(attempts, attempts_thread_times(store, attempts, cluster=cluster)):
        root.add(migration_node(a, threads))
    root.fit()
    if flow.start_ts is not None:
        # the request's own time, as `stacklens request` gives it: a VM's state that began
        # before the request or lasted after it widens that VM's node, not the request
        root.start, root.end = flow.start_ts, flow.end_ts
    return root
