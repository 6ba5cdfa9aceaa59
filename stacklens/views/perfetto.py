"""Chrome / Perfetto trace-event JSON built from the models (never from the files again).

What goes where (one JSON "process" per thing a person looks for, named by metadata events):

* kernel, per host: a process "<host> CPUs" with one track per CPU holding who ran there
  (slices named by the thread, idle left out); one process per real process (`pid`), one
  track per thread (named by `thread_name`) holding its states (running, runnable, blocked,
  io_wait, unknown); a counter "CPU usage" (% of all CPUs, per bin);
* application: one process per (service, host) with one track per worker holding its tasks
  (nova-compute's compute.instance.create …); VM states per VM; per request with RPC hops a
  process "request <id>" with a track per service holding the request's spans, each hop a
  slice on its caller's track with a flow arrow (`s` → `f`) to where the callee handled it;
* virtualization: per migration attempt a process with its stages (setup, precopy, rounds,
  stop&copy), the Nova steps, and a "dirty pages" counter per round; Open vSwitch counters
  (upcalls per bin from the datapath kprobes, hits/misses per second from ovs-appctl).

Slices are complete events (`X`) placed so that slices on one track nest or follow each
other (Perfetto drops partially overlapping ones): intervals that would overlap go to an
extra track of the same name ("worker #2"). Times are µs relative to `otherData.origin_ns`
(the first event's whole second, ns since the epoch): absolute µs in a double lose the
nanoseconds, relative ones keep them. Real pids and tids are kept on the first host; other
hosts' are offset by 10,000,000 per host (`args` carry the real ones).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any, Iterable

import numpy as np

SYNTHETIC = 1_900_000_000  # ids of processes/tracks that are not kernel processes/threads
HOST_OFFSET = 10_000_000
CPU_USAGE_BINS = 400


class TraceBuilder:
    """Accumulates trace events; ids, names and per-track nesting are handled here."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.meta: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self._pids: dict[Any, int] = {}
        self._tids: dict[tuple[int, Any], int] = {}
        self._lanes: dict[tuple[int, Any], list[list[int]]] = {}
        self._lane_tids: dict[tuple[int, Any, int], int] = {}
        self._thread_names: dict[tuple[int, Any], str] = {}
        self._next = SYNTHETIC
        self._flow = 0
        self.origin: int | None = None
        self._times: list[int] = []

    # ---- ids ----------------------------------------------------------------------------
    def _synthetic(self) -> int:
        self._next += 1
        return self._next

    def process(self, key: Any, name: str, pid: int | None = None, labels: str | None = None,
                sort: int | None = None) -> int:
        if key in self._pids:
            return self._pids[key]
        pid = self._synthetic() if pid is None else pid
        self._pids[key] = pid
        self.meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0, "args": {"name": name}})
        if labels:
            self.meta.append({"ph": "M", "name": "process_labels", "pid": pid, "tid": 0, "ts": 0,
                              "args": {"labels": labels}})
        if sort is not None:
            self.meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "ts": 0,
                              "args": {"sort_index": sort}})
        return pid

    def thread(self, pid: int, key: Any, name: str, tid: int | None = None, sort: int | None = None) -> int:
        if (pid, key) in self._tids:
            return self._tids[(pid, key)]
        tid = self._synthetic() if tid is None else tid
        self._tids[(pid, key)] = tid
        self._thread_names[(pid, key)] = name
        self.meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": 0, "args": {"name": name}})
        if sort is not None:
            self.meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "ts": 0,
                              "args": {"sort_index": sort}})
        return tid

    def _lane(self, pid: int, key: Any, start: int, end: int) -> int:
        """The track of `key` (or an extra one of the same name) where [start, end] nests in or
        follows what is already there."""
        lanes = self._lanes.setdefault((pid, key), [])
        for i, stack in enumerate(lanes):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or end <= stack[-1]:
                stack.append(end)
                return self._lane_tid(pid, key, i)
        lanes.append([end])
        return self._lane_tid(pid, key, len(lanes) - 1)

    def _lane_tid(self, pid: int, key: Any, i: int) -> int:
        if i == 0:
            return self._tids[(pid, key)]
        if (pid, key, i) not in self._lane_tids:
            self._lane_tids[(pid, key, i)] = self.thread(pid, (key, i), f"{self._thread_names[(pid, key)]} #{i + 1}")
        return self._lane_tids[(pid, key, i)]

    # ---- events (times in ns since the epoch; converted when written) ------------------
    def slice(self, pid: int, key: Any, name: str, cat: str, start: int, end: int | None,
              args: dict[str, Any] | None = None) -> int:
        """A complete slice on the track of `key` (it must have been declared with thread());
        returns the tid it went to. Slices must be added in start order per track."""
        end = start if end is None or end < start else end
        tid = self._lane(pid, key, start, end)
        ev = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": start, "dur": end - start}
        if args:
            ev["args"] = _plain(args)
        self.events.append(ev)
        self.counts[cat] += 1
        return tid

    def counter(self, pid: int, name: str, cat: str, ts: int, values: dict[str, float]) -> None:
        self.events.append({"ph": "C", "cat": cat, "name": name, "pid": pid, "tid": 0, "ts": ts,
                            "args": {k: float(v) for k, v in values.items()}})
        self.counts[cat] += 1

    def flow(self, cat: str, name: str, src: tuple[int, int, int], dst: tuple[int, int, int]) -> None:
        """An arrow from the slice enclosing `src` (pid, tid, ts) to the one enclosing `dst`."""
        self._flow += 1
        for ph, (pid, tid, ts) in (("s", src), ("f", dst)):
            ev = {"ph": ph, "cat": cat, "name": name, "id": self._flow, "pid": pid, "tid": tid, "ts": ts}
            if ph == "f":
                ev["bp"] = "e"  # bind to the enclosing slice (the callee's span)
            self.events.append(ev)
        self.counts["flow"] += 1

    def document(self) -> dict[str, Any]:
        timed = [e["ts"] for e in self.events]
        origin = (min(timed) // 1_000_000_000 * 1_000_000_000) if timed else 0
        span = max((e["ts"] + e.get("dur", 0) for e in self.events), default=origin) - origin
        # µs in a double keep every ns up to ~10^15 ns (11 days) from the origin; beyond, all
        # times are floored to whole µs (nesting and order are kept: flooring is monotonic)
        exact = span < 10**15
        resolution_ns = 1 if exact else 1000
        for e in self.events:
            start = e["ts"] - origin
            if exact:
                e["ts"] = start / 1000
                if "dur" in e:
                    e["dur"] = e["dur"] / 1000
            else:
                e["ts"] = float(start // 1000)
                if "dur" in e:
                    e["dur"] = float((start + e["dur"]) // 1000 - start // 1000)
        self.events.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))  # an enclosing slice before its children
        iso = dt.datetime.fromtimestamp(origin / 1e9, dt.timezone.utc).isoformat() if timed else None
        return {"traceEvents": self.meta + self.events, "displayTimeUnit": "ms",
                "otherData": {"producer": "stacklens", "origin_ns": str(origin), "origin_utc": iso,
                              "time_unit": "µs since origin_ns",
                              "resolution_ns": resolution_ns, "counts": dict(self.counts)}}


def _plain(attrs: dict[str, Any]) -> dict[str, Any]:
    import json
    out = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, (str, int, float, bool)):
            out[k] = v
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = json.dumps(v, default=str)
    return out


# ---- kernel ------------------------------------------------------------------------------

def add_kernel(b: TraceBuilder, store, host: str, host_index: int, tids: set[int] | None = None) -> None:
    """CPU tracks, thread states per thread grouped by process, CPU usage counter."""
    from stacklens.models.kernel import KernelModel
    km = KernelModel(store, host)
    off = host_index * HOST_OFFSET
    threads = {r["tid"]: r for r in km.threads().to_pylist()}

    def thread_track(tid: int) -> tuple[int, int]:
        t = threads.get(tid) or {"pid": tid, "name": f"tid {tid}", "process": None}
        pid = t["pid"] if t["pid"] is not None else tid
        proc = t["process"] or t["name"]
        p = b.process(("kproc", host, pid), f"{proc} @{host}", pid=pid + off, labels=host)
        b.thread(p, ("kthread", host, tid), t["name"] or f"tid {tid}", tid=tid + off)
        return p, tid

    run = km.running()
    cpus = sorted(set(run.column("cpu").to_pylist()))
    cpu_pid = b.process(("cpus", host), f"{host} CPUs", labels=f"{len(cpus)} CPUs", sort=-1)
    for c in cpus:
        b.thread(cpu_pid, ("cpu", host, c), f"CPU {c}", sort=c)
    cols = {k: run.column(k).to_numpy(zero_copy_only=False) for k in ("cpu", "tid", "start", "end")}
    comms = run.column("comm").to_pylist()
    busy = cols["tid"] != 0
    for i in np.flatnonzero(busy):
        tid = int(cols["tid"][i])
        if tids is not None and tid not in tids:
            continue
        t = threads.get(tid)
        b.slice(cpu_pid, ("cpu", host, int(cols["cpu"][i])), (t or {}).get("name") or comms[i] or f"tid {tid}", "sched",
                int(cols["start"][i]), int(cols["end"][i]),
                {"tid": tid, "pid": (t or {}).get("pid"), "process": (t or {}).get("process")})
    # CPU usage: busy time of all CPUs per bin, from the running intervals (cumulative sums)
    lo, hi = km.span.start, km.span.end
    if hi > lo and cpus:
        edges = np.linspace(lo, hi, CPU_USAGE_BINS + 1).astype(np.int64)
        s, e = cols["start"][busy].astype(np.int64), cols["end"][busy].astype(np.int64)
        done = _busy_until(edges, s, e)
        per_bin = np.diff(done) / (np.diff(edges) * len(cpus)) * 100
        for t0, v in zip(edges[:-1], per_bin):
            b.counter(cpu_pid, "CPU usage (%)", "cpu_usage", int(t0), {"busy": round(float(v), 3)})
    states = km.thread_states()
    st = {k: states.column(k).to_numpy(zero_copy_only=False) for k in ("tid", "start", "end")}
    names = states.column("state").to_pylist()
    cpu_col = states.column("cpu").to_pylist()
    for i in range(states.num_rows):
        tid = int(st["tid"][i])
        if tids is not None and tid not in tids:
            continue
        p, _ = thread_track(tid)
        b.slice(p, ("kthread", host, tid), names[i], "thread_state", int(st["start"][i]), int(st["end"][i]),
                {"cpu": cpu_col[i]} if names[i] == "running" else None)


def _busy_until(t: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Σ over intervals of the time each ran before t (for every t): Σ_{start<t}(t-start) -
    Σ_{end<t}(t-end), with sorted arrays and prefix sums (no loop over intervals)."""
    base = int(t[0])  # relative int64 ns: sums of epoch ns in float64 would round to µs
    s, e, t = np.sort(start) - base, np.sort(end) - base, t - base
    cs = np.concatenate([[0], np.cumsum(s, dtype=np.int64)])
    ce = np.concatenate([[0], np.cumsum(e, dtype=np.int64)])
    ks, ke = np.searchsorted(s, t), np.searchsorted(e, t)
    return (ks * t - cs[ks]) - (ke * t - ce[ke])


# ---- application ------------------------------------------------------------------------

def add_tasks(b: TraceBuilder, tasks: list[dict]) -> None:
    from stacklens.views.otlp import openstack_service
    for t in sorted(tasks, key=lambda t: t["start_ts"]):
        svc = openstack_service(t["service"] or t["worker"], t["task"]) or "service"
        p = b.process(("service", svc, t["host"]), f"{svc} @{t['host']}", labels=t["host"])
        b.thread(p, ("worker", t["worker"]), t["worker"] or svc)
        b.slice(p, ("worker", t["worker"]), t["task"], "task", t["start_ts"], t["end_ts"],
                {"request_id": t["request_id"], "instance": t["instance"], "vm": t["vmname"],
                 "volume": t["volume"], "outcome": t["outcome"], "duration_ns": t["duration_ns"]})


def add_vm_states(b: TraceBuilder, rows: list[dict], end_ts: int, names: dict[str, str] | None = None) -> None:
    """`names`: uuid → VM name for VMs whose records carry only the uuid."""
    by_vm: dict[str, list[dict]] = {}
    for r in rows:
        by_vm.setdefault(r["vm"], []).append(r)
    for vm, rs in by_vm.items():
        name = next((r["vmname"] for r in rs if r["vmname"]), None) or (names or {}).get(vm) or vm
        p = b.process(("vm", vm), f"VM {name}", labels=rs[0]["instance"] or None)
        b.thread(p, "states", "vm_state")
        for i, r in enumerate(rs):
            nxt = rs[i + 1]["ts"] if i + 1 < len(rs) else max(end_ts, r["ts"])
            b.slice(p, "states", r["vm_state"] + (f" ({r['task_state']})" if r["task_state"] else ""), "vm_state",
                    r["ts"], nxt, {"node": r["node"], "event": r["event_type"], "request_id": r["request_id"]})


def add_request(b: TraceBuilder, con, request_id: str) -> None:
    """The request's spans per service and its RPC hops as slices joined by flow arrows."""
    from stacklens.models.request_flow import request_flow
    from stacklens.views.otlp import openstack_service
    flow = request_flow(con, request_id)
    if not flow.hops and not flow.spans:
        return
    p = b.process(("request", request_id), f"request {request_id}")
    spans = sorted(flow.spans, key=lambda s: s["start_ts"])
    placed: list[tuple[str, int, int, int]] = []  # (service, start, end, tid)
    for s in spans:
        svc = openstack_service(s["service"] or s["worker"], s["task"]) or "service"
        b.thread(p, svc, svc)
        tid = b.slice(p, svc, s["task"], "request", s["start_ts"], s["end_ts"],
                      {"worker": s["worker"], "outcome": s["outcome"], "instance": s["instance"]})
        placed.append((svc, s["start_ts"], s["end_ts"] or s["start_ts"], tid))
    for h in sorted(flow.hops, key=lambda h: h["ts"]):
        caller, callee = openstack_service(h["caller"]) or "?", openstack_service(h["service"]) or "?"
        b.thread(p, caller, caller)
        b.thread(p, callee, callee)
        # a 1 µs marker: the arrow needs a slice to leave from
        src = b.slice(p, caller, f"RPC {h['kind']} {h['method']} → {h['topic']}", "rpc", h["ts"], h["ts"] + 1000,
                      {"replies": h["replies"], "failure": h["failure"], "msg_id": h["msg_id"]})
        target = next(((st, tid) for svc, st, en, tid in placed if svc == callee and st >= h["ts"]), None)
        if target is None:
            tid = b.slice(p, callee, f"handle {h['method']}", "rpc", h["ts"], h["ts"] + 1000, {"topic": h["topic"]})
            target = (h["ts"], tid)
        b.flow("rpc", h["method"] or "rpc", (p, src, h["ts"]), (p, target[1], target[0]))


# ---- virtualization ---------------------------------------------------------------------

def add_migration(b: TraceBuilder, a) -> None:
    p = b.process(("migration", a.vm, a.start), f"migration {a.vm} {a.source_host} → {a.dest_host or '?'}",
                  labels=f"{a.verdict}")
    b.thread(p, "attempt", "attempt", sort=0)
    b.thread(p, "stages", "stages", sort=1)
    end = a.end or (a.rounds[-1].end if a.rounds else a.start)
    b.slice(p, "attempt", f"live migration: {a.verdict}", "migration", a.start, max(end, a.stop_copy_end or end),
            {"reason": a.reason, "qemu_state": a.final_state, "syncs": a.syncs, "request_id": a.request_id})
    if a.setup_ns:
        b.slice(p, "stages", "setup", "migration", a.start, a.start + a.setup_ns)
    for r in a.rounds:
        b.slice(p, "stages", "precopy (first pass)" if r.index == 0 else f"round {r.index}", "migration",
                r.start, r.end, {"dirty_pages": r.dirty_pages})
        b.counter(p, "dirty pages per round", "dirty_pages", r.start, {"pages": r.dirty_pages})
    if a.rounds:
        b.counter(p, "dirty pages per round", "dirty_pages", a.rounds[-1].end, {"pages": 0})
    if a.stop_copy_start is not None:
        b.thread(p, "stop", "stop&copy", sort=2)
        b.slice(p, "stop", "stop&copy (VM paused)", "migration", a.stop_copy_start, a.stop_copy_end or a.stop_copy_start,
                {"downtime_ns": a.downtime_ns, "qemu_downtime_ms": a.qmp.get("downtime-ms")})
    if a.nova_steps:
        b.thread(p, "nova", "nova steps", sort=3)
        for s in sorted((s for s in a.nova_steps if s.start is not None), key=lambda s: s.start):
            b.slice(p, "nova", f"nova: {s.name}", "migration", s.start, s.end, {"host": s.host})


def add_ovs(b: TraceBuilder, con) -> None:
    from stacklens.analyses.ovs_report import live_report, thesis_report
    thesis = thesis_report(con)
    if thesis:
        p = b.process(("ovs", "kprobes"), "Open vSwitch datapath (kprobes)")
        bin_s = thesis["upcall_rate"]["bin_ns"] / 1e9
        for r in thesis["upcall_rate"]["bins"]:
            b.counter(p, f"upcalls per {bin_s:g} s", "ovs", r["end"] - thesis["upcall_rate"]["bin_ns"], {"upcalls": r["upcalls"]})
    live = live_report(con)
    for dp in (live or {}).get("datapaths", []):
        p = b.process(("ovs", dp["host"], dp["datapath"]), f"Open vSwitch {dp['datapath']} @{dp['host']}")
        prev = None
        for r in dp["series"]:
            if prev is not None and r["ts"] > prev:
                secs = (r["ts"] - prev) / 1e9
                b.counter(p, "datapath packets per s", "ovs", prev,
                          {"hit": (r["d_hit"] or 0) / secs, "missed": (r["d_missed"] or 0) / secs})
            prev = r["ts"]


# ---- the whole store --------------------------------------------------------------------

def perfetto_trace(store, request: str | None = None, vm: str | None = None) -> dict[str, Any]:
    """Trace-event JSON of the store, or of one request / one VM."""
    from stacklens.models.cache import shared_connection
    from stacklens.models.kernel import kernel_hosts
    from stacklens.models.migration import migration_attempts
    from stacklens.models.service_tasks import service_tasks
    from stacklens.models.vm_states import vm_state_timeline
    con = shared_connection(store)
    b = TraceBuilder()
    names: set[str] = set()
    if request is not None and not con.execute("SELECT count(*) FROM events WHERE request_id = ?",
                                                [request]).fetchall()[0][0]:
        from stacklens.errors import StacklensError
        raise StacklensError(f"no request {request!r} in the store")
    if vm is not None:
        from stacklens.models.correlation import resolve_vm
        names = {vm} | {n for n in resolve_vm(con, vm) if n}  # the key itself, whatever the resolution finds
    tasks = service_tasks(con).to_pylist()
    if request is not None:
        tasks = [t for t in tasks if t["request_id"] == request]
    elif vm is not None:
        tasks = [t for t in tasks if t["instance"] in names or t["vmname"] in names]
    add_tasks(b, tasks)
    if request is None:
        end = con.execute("SELECT max(ts) FROM events WHERE layer = 'app'").fetchall()[0][0] or 0
        states = [r for r in vm_state_timeline(con).to_pylist()
                  if vm is None or r["vm"] in names or r["vmname"] in names or r["instance"] in names]
        from stacklens.models.correlation import vm_identities
        idents = {r["instance"]: r["vm"] for r in vm_identities(con).to_pylist() if r["instance"] and r["vm"]}
        add_vm_states(b, states, end, idents)
    requests = [request] if request is not None else [r[0] for r in con.execute(
        "SELECT DISTINCT request_id FROM events WHERE source = 'rabbitmq.dump' AND request_id IS NOT NULL "
        "ORDER BY 1").fetchall()]
    if vm is None:
        for rid in requests:
            add_request(b, con, rid)
    for a in migration_attempts(con):
        if (request is None or a.request_id == request) and (vm is None or a.vm in names or a.instance in names):
            add_migration(b, a)
    if request is None and vm is None:
        add_ovs(b, con)
    if request is None:
        vm_tids: dict[str, set[int]] | None = None
        if vm is not None:
            from stacklens.models.correlation import vm_threads
            vm_tids = {}
            for r in vm_threads(con).to_pylist():
                if r["vm"] in names or r["instance"] in names:
                    vm_tids.setdefault(r["kernel_host"] or r["host"], set()).add(r["tid"])
        for i, host in enumerate(kernel_hosts(store)):
            if vm_tids is not None and host not in vm_tids:
                continue
            add_kernel(b, store, host, i, None if vm_tids is None else vm_tids[host])
    if vm is not None and not any(e["cat"] in ("task", "vm_state", "migration") for e in b.events if "cat" in e):
        from stacklens.errors import StacklensError
        raise StacklensError(f"no VM {vm!r} in the store (no tasks, states or migrations name it)")
    return b.document()


def event_kinds(doc: dict[str, Any]) -> dict[str, int]:
    return dict(doc.get("otherData", {}).get("counts", {}))


def check_trace_events(events: Iterable[dict[str, Any]]) -> list[str]:
    """Problems against the trace-event format's rules (empty list: none)."""
    problems: list[str] = []
    open_b: dict[tuple, list] = {}
    flows: dict[tuple, list[str]] = {}
    named_p, named_t = set(), set()
    stacks: dict[tuple, list[float]] = {}
    for e in events:
        for k in ("ph", "ts", "pid", "tid"):
            if k not in e:
                problems.append(f"{k} missing: {e}")
        ph = e.get("ph")
        if ph == "M":
            (named_p if e["name"] == "process_name" else named_t).add((e["pid"], e["tid"]) if e["name"] == "thread_name"
                                                                      else e["pid"])
        elif ph == "X":
            if e["dur"] < 0:
                problems.append(f"negative dur: {e}")
            # in integer ns, as a reader converting µs does (float sums would round)
            start, end = round(e["ts"] * 1000), round(e["ts"] * 1000) + round(e["dur"] * 1000)
            st = stacks.setdefault((e["pid"], e["tid"]), [])
            while st and st[-1] <= start:
                st.pop()
            if st and end > st[-1]:
                problems.append(f"partial overlap on ({e['pid']}, {e['tid']}): {e['name']} at {e['ts']}")
            st.append(end)
        elif ph == "B":
            open_b.setdefault((e["pid"], e["tid"]), []).append(e)
        elif ph == "E":
            if not open_b.get((e["pid"], e["tid"])):
                problems.append(f"E without B: {e}")
            else:
                open_b[(e["pid"], e["tid"])].pop()
        elif ph in ("s", "f"):
            flows.setdefault((e["cat"], e["id"]), []).append(ph)
    problems += [f"B without E on {k}" for k, v in open_b.items() if v]
    problems += [f"flow {k}: {v}" for k, v in flows.items() if v != ["s", "f"]]
    return problems
