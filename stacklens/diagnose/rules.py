"""Diagnosis rules: each a function of the store's models returning findings.

Rules never re-parse files: they read the models (migration, kernel, scheduling, service
tasks, request flow, VM states, Cinder, OvS, sync). A rule whose layer is absent from the
store returns nothing. Thresholds are named constants next to the rule that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from stacklens.diagnose.findings import Evidence, Finding
from stacklens.errors import StacklensError


MIGRATION_THREAD_TOP = 20  # preemptors per thread the interference rule weighs


def host_facts(store, host: str, threads: bool) -> dict[str, Any]:
    """What the rules need of one host, from that host's partitions (a cluster task; `store`:
    a Store, or its path on a worker): its OvS models, its packets sent and received and first
    and last raw timestamps (for sync), and with `threads` (the store has migrations) its
    kernel threads (for the VMs' QEMU threads, models.correlation.vm_threads)."""
    from stacklens.analyses.ovs_report import host_models
    from stacklens.cluster import open_store
    from stacklens.models.correlation import kernel_threads
    from stacklens.sync.packets import host_sync_inputs
    con = open_store(store).connect(host=host)
    try:
        out: dict[str, Any] = {"ovs": host_models(con, host)}
        out["net"], out["span"] = host_sync_inputs(con)
        if threads:
            out["kthreads"] = kernel_threads(con)
        return out
    finally:
        con.close()


@dataclass
class Context:
    """Models shared by the rules, built once per diagnosis. The per-host ones (`facts`) come
    from one host_facts call per host: in-process, or one Dask task per host at `cluster`; the
    rules' cross-host steps (sync, request flows, ranking) run here over them."""
    store: Any
    cache: dict[str, Any] = field(default_factory=dict)
    # operator-tunable thresholds (diagnose --stuck-after / --slow-scheduling)
    stuck_after_ns: int = 300_000_000_000  # 5 min in a transitional state with nothing after it
    slow_scheduling_ns: int = 2_000_000_000
    cluster: str | None = None  # a Dask scheduler's address

    @cached_property
    def facts(self) -> dict[str, dict[str, Any]]:
        """host → host_facts, for every host with partitions."""
        from stacklens.cluster import partition_hosts, per_host
        hosts = partition_hosts(self.store)
        return dict(zip(hosts, per_host(self.cluster, host_facts, self.store, hosts, bool(self.migrations))))

    @cached_property
    def ovs_by_host(self) -> dict[str, dict]:
        """host → its OvS models (analyses.ovs_report.host_models), in host order."""
        return {h: f["ovs"] for h, f in self.facts.items()}

    @cached_property
    def ovs_models(self) -> dict:
        """The OvS models of every host (as one whole-store build gives them)."""
        from stacklens.analyses.ovs_report import merge_models
        return merge_models(list(self.ovs_by_host.values()))

    @cached_property
    def matched_packets(self):
        """Packets matched across hosts (sync.packets.match_packets over every host's)."""
        import pyarrow as pa
        from stacklens.sync.packets import match_packets, net_events
        nets = [f["net"] for f in self.facts.values()]
        return match_packets(pa.concat_tables(nets) if nets else net_events(self.con))

    @cached_property
    def spans(self) -> dict[str, tuple[int, int]]:
        """host → its first and last raw timestamps."""
        return {h: f["span"] for h, f in self.facts.items() if f.get("span") is not None}

    @cached_property
    def migration_threads(self) -> list[list[dict]]:
        """migration_thread_times of each attempt (top MIGRATION_THREAD_TOP), in their order:
        the VMs' threads joined here from every host's kernel threads (facts), the thread
        times on each source host (a task per source host)."""
        if not self.migrations:
            return []
        from stacklens.analyses.explain import attempts_thread_times
        from stacklens.models.correlation import concat_kernel_threads, vm_threads
        known = vm_threads(self.con, concat_kernel_threads([f["kthreads"] for f in self.facts.values()]))
        return attempts_thread_times(self.store, self.migrations, MIGRATION_THREAD_TOP, self.cluster,
                                     known.to_pylist())

    @cached_property
    def con(self):
        from stacklens.models.cache import shared_connection
        return shared_connection(self.store)

    @cached_property
    def migrations(self):
        from stacklens.models.migration import migration_attempts
        return migration_attempts(self.con)

    @cached_property
    def tasks(self) -> list[dict]:
        from stacklens.models.service_tasks import service_tasks
        return service_tasks(self.con).to_pylist()

    @cached_property
    def app_span(self) -> tuple[int, int] | None:
        from stacklens.models.app_ops import TIMED
        r = self.con.execute(f"SELECT min(ts), max(ts) FROM events WHERE layer = 'app' AND {TIMED}").fetchall()[0]
        return None if r[0] is None else (int(r[0]), int(r[1]))


RULES: list[Callable[[Context], list[Finding]]] = []


def rule(fn: Callable[[Context], list[Finding]]) -> Callable[[Context], list[Finding]]:
    RULES.append(fn)
    return fn


def _ms(ns: int | float | None) -> str:
    return "?" if ns is None else f"{ns / 1e6:.0f} ms" if ns < 10e9 else f"{ns / 1e9:.1f} s"


def _duration(ns: int | float | None) -> str:
    """A duration in the unit that keeps three significant digits (s, ms or µs)."""
    if ns is None:
        return "?"
    for unit, scale in (("s", 1e9), ("ms", 1e6)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns / 1e3:.3g} µs"


# ---- QEMU live migration ----------------------------------------------------------------------
@rule
def migration_not_converging(ctx: Context) -> list[Finding]:
    out = []
    for a in ctx.migrations:
        if a.verdict != "not converging":
            continue
        ev = [Evidence("interval", "migration attempt", None, None, a.source_host, "virt", a.start, a.end,
                       {"vm": a.vm, "instance": a.instance, "request_id": a.request_id})]
        rates = ""
        if a.dirty_rate_pps is not None:
            ev.append(Evidence("number", "guest dirty rate (from the bitmap syncs)", round(a.dirty_rate_pps),
                               "pages/s", a.source_host, "virt", ref={"vm": a.vm}))
        if a.transfer_rate_pps is not None:
            ev.append(Evidence("number", "transfer rate (QEMU's mbps)", round(a.transfer_rate_pps), "pages/s",
                               a.source_host, "virt", ref={"vm": a.vm}))
        if a.dirty_rate_pps and a.transfer_rate_pps:
            rates = (f": the guest dirtied {a.dirty_rate_pps:,.0f} pages/s while {a.transfer_rate_pps:,.0f} pages/s"
                     f" were sent ({a.dirty_rate_pps / a.transfer_rate_pps:.1f}x)")
        for r in a.rounds[-3:]:
            ev.append(Evidence("interval", f"round {r.index}: dirty pages", r.dirty_pages, "pages",
                               a.source_host, "virt", r.start, r.end, {"vm": a.vm}))
        ev.append(Evidence("number", "throttle events", a.throttle_events, None, a.source_host, "virt",
                           ref={"vm": a.vm}))
        if a.throttle_events:
            throttle = f"auto-converge throttled the guest {a.throttle_events} times, not enough"
            action = ("raise the migration bandwidth (live_migration_bandwidth) or the downtime limit, or use "
                      "post-copy (live_migration_permit_post_copy): throttling did not bring the dirty rate down")
        else:
            throttle = "no throttling happened"
            action = ("enable auto-converge (live_migration_permit_auto_converge) or post-copy, or raise the "
                      "bandwidth above the guest's dirty rate; migrate when the guest writes less")
        out.append(Finding(
            "migration_not_converging", "critical",
            f"Live migration of {a.vm} from {a.source_host} did not converge{rates}; {throttle}"
            + ("; it was rolled back." if a.rolled_back else "."),
            action, ev, {"vm": a.vm, "instance": a.instance, "request_id": a.request_id},
            score=(a.dirty_rate_pps or 0) / (a.transfer_rate_pps or 1)))
    return out


INTERFERENCE_MIN_SHARE = 0.20  # of the attempt's duration lost to other processes' CPU time
INTERFERENCE_NAME_SHARE = 0.05  # a preemptor is named when it took at least this share of the wait


@rule
def migration_interference(ctx: Context) -> list[Finding]:
    """The migrating VM's source threads waited for a CPU while other processes ran on it."""
    out = []
    for a, threads in zip(ctx.migrations, ctx.migration_threads):
        if a.end is None or a.end <= a.start:
            continue
        if not threads:
            continue
        own = {t["tid"] for t in threads}
        runnable = sum(t["runnable_ns"] for t in threads)
        lost: dict[tuple, dict] = {}
        for t in threads:
            for p in t["preemptors"]:
                if p["tid"] in own:
                    continue
                # the same VM's other QEMU (the destination on a one-machine lab) is still another process
                who = (p["vm"], p["role"]) if p["vm"] else (p["name"], None)
                e = lost.setdefault(who, {"ns": 0, "tids": set(), "names": set(), "vm": p["vm"], "role": p["role"]})
                e["ns"] += p["ns"]
                e["tids"].add(p["tid"])
                e["names"].add(p["name"])
        total_lost = sum(e["ns"] for e in lost.values())
        duration = a.end - a.start
        if not runnable or total_lost < INTERFERENCE_MIN_SHARE * duration:
            continue
        named = sorted(((k, e) for k, e in lost.items() if e["ns"] >= INTERFERENCE_NAME_SHARE * runnable),
                       key=lambda kv: -kv[1]["ns"])
        if not named:
            continue

        def label(k: tuple, e: dict) -> str:
            if e["vm"]:
                role = f" ({e['role']})" if e["role"] and e["role"] != e["vm"] else ""
                return f"VM {e['vm']}{role}"
            return f"{k[0]}"

        parts = [f"{label(k, e)} {e['ns'] / runnable:.0%}" for k, e in named]
        ev = [Evidence("interval", "migration attempt", None, None, a.source_host, "virt", a.start, a.end,
                       {"vm": a.vm, "instance": a.instance, "request_id": a.request_id}),
              Evidence("number", f"{a.vm}'s threads runnable (waiting for a CPU)", round(runnable / 1e6, 1), "ms",
                       a.source_host, "kernel", a.start, a.end, {"vm": a.vm, "tids": sorted(own)})]
        for k, e in named:
            ev.append(Evidence("number", f"CPU time of {label(k, e)} ({', '.join(sorted(e['names']))}) while "
                               f"{a.vm} waited", round(e["ns"] / 1e6, 1), "ms", a.source_host, "kernel", a.start, a.end,
                               {"vm": e["vm"], "tids": sorted(e["tids"]), "share": round(e["ns"] / runnable, 3)}))
        out.append(Finding(
            "migration_interference", "warning",
            f"Live migration of {a.vm} was slowed by co-located processes: its threads on {a.source_host} waited "
            f"{_ms(runnable)} in total for a CPU during a {_ms(duration)} migration, taken by {', '.join(parts)}.",
            "pin the migrating VM's vCPUs and the migration thread away from these processes (or move them), "
            "or migrate when the host is less loaded",
            ev, {"vm": a.vm, "instance": a.instance, "request_id": a.request_id,
                 "preemptors": [label(k, e) for k, e in named]},
            score=total_lost / duration))
    return out


# ---- scheduling -------------------------------------------------------------------------------
@rule
def scheduling(ctx: Context) -> list[Finding]:
    from stacklens.models.scheduling import scheduling_decisions
    out = []
    for d in scheduling_decisions(ctx.con):
        ref = {"request_id": d.request_id, "instance": d.instance}
        if d.outcome == "no_valid_host":
            ev = [Evidence("event", "scheduling round", None, None, d.host, "app", d.ts, None, ref)]
            for f in d.filters:
                ev.append(Evidence("number", f"{f.filter}: {f.hosts_before}→{f.hosts_after} hosts"
                                   + (f" (removed {', '.join(f.removed_hosts)})" if f.removed_hosts else ""),
                                   f.hosts_after, "hosts", d.host, "app", ref=ref))
            if d.resources:
                ev.append(Evidence("event", f"placement asked for {d.resources}: no allocation candidates",
                                   None, None, d.host, "app", d.ts, None, ref))
            # the request's own error records (the conductor's NoValidHost, the exception
            # notification): one failed boot is one finding with all its evidence
            ev += _request_error_evidence(ctx, d.request_id)
            if d.cause == "no_allocation_candidates":
                action = "add capacity or use a smaller flavor: no compute node has these resources free"
            elif d.eliminated_by:
                action = (f"check why {d.eliminated_by} rejects the hosts (aggregates, flavor extra specs, "
                          "image properties)")
            else:
                action = "read the scheduler's log of this request (debug level names the filters)"
            why = d.explanation().removeprefix("no valid host: ").removeprefix("no valid host; ")
            if d.eliminated_by:
                last = next((f for f in d.filters if f.filter == d.eliminated_by), None)
                who = f" ({', '.join(last.removed_hosts)})" if last and last.removed_hosts else ""
                why = (f"{d.eliminated_by} removed the last host(s){who}; chain: "
                       + why.split("; chain: ", 1)[-1])
            if d.cause == "requested_host_ignored":
                first = next((e.label.removeprefix("ERROR: ") for e in ev if e.label.startswith("ERROR: ")), None)
                why += f"; the first error of the request: {first}" if first else ""
            out.append(Finding(
                "scheduling_no_valid_host", "critical",
                f"Scheduling of request {d.request_id} failed with NoValidHost: {why}.",
                action, ev, ref, score=1.0))
        elif d.select_destinations_ns and d.select_destinations_ns >= ctx.slow_scheduling_ns:
            out.append(Finding(
                "scheduling_slow", "warning",
                f"Scheduling of request {d.request_id} took {_ms(d.select_destinations_ns)} (select_destinations).",
                "look at the scheduler's load and the placement/DB queries of this request",
                [Evidence("interval", "select_destinations", d.select_destinations_ns / 1e6, "ms", d.host, "app",
                          d.ts, d.ts + d.select_destinations_ns, ref)], ref,
                score=d.select_destinations_ns / 1e9))
    return out


# ---- errors with their request flow -----------------------------------------------------------
MAX_ERROR_REQUESTS = 20
ERROR_LEVELS = ("ERROR", "CRITICAL", "FATAL")


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _request_error_evidence(ctx: Context, rid: str | None) -> list[Evidence]:
    if not rid:
        return []
    from stacklens.models.request_flow import request_flow
    flow = request_flow(ctx.con, rid)
    return [Evidence("event", f"ERROR: {(r.get('error_summary') or _first_line(r.get('message')))[:300]}",
                     None, None, r.get("host"), "app", r.get("ts"), None,
                     {"request_id": rid, "service": r.get("procname"), "instance": r.get("instance")})
            for r in flow.records if (r.get("level") or "") in ERROR_LEVELS][:5]


# Loggers of libraries, not of the services: their errors (a cache backend that cannot load, a
# retried connection) do not make a request fail unless one of its tasks failed.
LIBRARY_LOGGERS = ("stevedore", "oslo_cache", "oslo.cache", "keystoneauth", "urllib3", "requests", "dogpile",
                   "py.warnings", "oslo_policy", "oslo_db", "sqlalchemy", "kombu", "amqp")


@rule
def request_errors(ctx: Context) -> list[Finding]:
    """A request that logged an error or whose task ended in error, with where it went: the
    request is followed by its global_request_id when the services carry one (each service
    has its own local request id in oslo.context), else by its request id."""
    from stacklens.models.request_flow import request_flow
    rows = ctx.con.execute("""
        SELECT coalesce(fields->>'$.global_request_id', request_id, fields->>'$._context_request_id') AS rid,
               min(ts), count(*) FROM events
        WHERE layer = 'app'
          AND coalesce(fields->>'$.global_request_id', request_id, fields->>'$._context_request_id') IS NOT NULL
          AND (fields->>'$.level' IN ('ERROR', 'CRITICAL', 'FATAL') OR name LIKE '%.error'
               OR fields->>'$.event_type' LIKE '%.error' OR fields->>'$.priority' = 'ERROR')
        GROUP BY 1 ORDER BY 2 LIMIT ?""", [MAX_ERROR_REQUESTS]).fetchall()
    from stacklens.models.scheduling import scheduling_decisions
    # a request whose scheduling ended in NoValidHost has its finding (scheduling_no_valid_host)
    explained = {d.request_id for d in scheduling_decisions(ctx.con) if d.outcome == "no_valid_host"}
    out = []
    for rid, first, n in rows:
        if rid in explained:
            continue
        flow = request_flow(ctx.con, rid)
        failed_span = any(s["outcome"] == "error" for s in flow.spans)
        errors = [p for p in flow.problems if (p.get("level") or "") in ERROR_LEVELS
                  and (failed_span or not (p.get("name") or "").startswith(LIBRARY_LOGGERS))]
        if not errors and not failed_span:
            continue  # only a library's error, and every task of the request succeeded
        errors = errors or flow.problems
        first_error = errors[0] if errors else {"message": f"{n} error event(s)", "host": None, "ts": first}
        # the exception itself (class: message) when the record has one
        message = (first_error.get("error_summary") or _first_line(first_error.get("message") or first_error.get("task"))
                   or "error")
        # where the request went: task spans and log records, per service and host, in time order
        where: dict[tuple, list[int]] = {}
        for s in flow.spans:
            w = where.setdefault((s["service"] or s["worker"], s["host"]), [s["start_ts"], s["end_ts"] or s["start_ts"]])
            w[0], w[1] = min(w[0], s["start_ts"]), max(w[1], s["end_ts"] or s["start_ts"])
        for r in flow.records:
            w = where.setdefault((r["procname"] or r["source"], r["host"]), [r["ts"], r["ts"]])
            w[0], w[1] = min(w[0], r["ts"]), max(w[1], r["ts"])
        hops = sorted(where.items(), key=lambda kv: kv[1][0])
        services = [f"{svc}@{host}" for (svc, host), _ in hops]
        ev = [Evidence("event", f"{e.get('level') or 'ERROR'}: {_first_line(e.get('message') or e.get('task'))[:300]}",
                       None, None, e.get("host"), "app", e.get("ts") or e.get("start_ts"), None,
                       {"request_id": rid, "service": e.get("procname") or e.get("service"),
                        "instance": e.get("instance")})
              for e in errors[:5]]
        for (svc, host), (lo, hi) in hops:
            ev.append(Evidence("interval", f"request on {svc}", None, None, host, "app", lo, hi,
                               {"request_id": rid, "service": svc}))
        for s in flow.spans[:6]:
            ev.append(Evidence("interval", f"{s['task']} ({s['outcome']})", s["duration_ns"], "ns", s["host"], "app",
                               s["start_ts"], s["end_ts"], {"request_id": rid, "instance": s["instance"]}))
        ev.append(Evidence("number", "error records", len(errors), None, first_error.get("host"), "app",
                           ref={"request_id": rid}))
        origin = first_error.get("procname") or first_error.get("service")
        out.append(Finding(
            "request_error", "critical" if any((p.get("level") or "") in ("CRITICAL", "FATAL") for p in errors)
            or any(s["outcome"] == "error" for s in flow.spans) else "warning",
            f"Request {rid} failed"
            + (f" in {origin}@{first_error.get('host')}" if origin else "") + f": {message[:160]}"
            + (f" (its flow: {' → '.join(services)})" if services else "") + ".",
            f"follow the request flow (stacklens explain --request {rid}) to the first error and read "
            f"{origin or 'its service'}'s log around it",
            ev, {"request_id": rid}, score=float(n)))
    return out


# ---- records that pair with nothing -----------------------------------------------------------
@rule
def unmatched_records(ctx: Context) -> list[Finding]:
    """Task edges without their other half: a start never ended (the worker died, the capture
    was cut, or the end was lost) or an end/error with no start (emitted alone by design, as
    Nova's compute_task.*.error, or its start lost): said, not silently dropped."""
    from stacklens.models.service_tasks import unmatched_task_records
    rows = unmatched_task_records(ctx.con)
    if not rows:
        return []
    ev = [Evidence("number", f"{r['kind']}: {r['task']} ({r['worker']})", r["count"], "records", r["host"], "app",
                   r["first_ts"], r["last_ts"], {"request_id": r["request_id"]}) for r in rows[:20]]
    n = sum(r["count"] for r in rows)
    return [Finding("unmatched_records", "info",
                    f"{n} task record(s) pair with nothing: "
                    + ", ".join(f"{r['count']} {r['kind']} {r['task']}" for r in rows[:6]) + ".",
                    "an end without a start is normal for errors emitted alone; a start without an end means "
                    "the task never finished or its end was not captured: check the service and the capture",
                    ev, {}, score=0.1)]


# ---- VM stuck in a state ----------------------------------------------------------------------
TRANSITIONAL = ("building", "migrating", "resizing", "rebuilding")


@rule
def vm_stuck(ctx: Context) -> list[Finding]:
    from stacklens.models.vm_states import vm_state_timeline
    if ctx.app_span is None:
        return []
    end = ctx.app_span[1]
    last: dict[str, dict] = {}
    for r in vm_state_timeline(ctx.con, collapse=False).to_pylist():
        last[r["vm"]] = r
    out = []
    for vm, r in last.items():
        task = r["task_state"] if r["task_state"] not in (None, "None", "") else None
        ref = {"vm": r["vmname"], "instance": r["instance"], "request_id": r["request_id"]}
        if r["vm_state"] == "error":
            out.append(Finding("vm_error_state", "critical",
                               f"VM {r['vmname'] or vm} is in state error since {r['event_type']}.",
                               "look at the fault of the operation that put it there (explain --vm) and reset or rebuild it",
                               [Evidence("event", r["event_type"], "error", None, r["node"], "app", r["ts"], None, ref)],
                               ref, score=(end - r["ts"]) / 1e9))
        elif (task or r["vm_state"] in TRANSITIONAL) and end - r["ts"] >= ctx.stuck_after_ns:
            out.append(Finding("vm_stuck", "warning",
                               f"VM {r['vmname'] or vm} has been in {r['vm_state']}"
                               + (f"/{task}" if task else "") + f" for {_ms(end - r['ts'])} with no further record.",
                               "check the service that owns the task (its worker may be hung) and the request's flow",
                               [Evidence("interval", f"{r['vm_state']}/{task}", None, None, r["node"], "app", r["ts"], end, ref)],
                               ref, score=(end - r["ts"]) / 1e9))
    return out


# ---- volume attached twice --------------------------------------------------------------------
@rule
def volume_multi_attach(ctx: Context) -> list[Finding]:
    from stacklens.models.cinder import multi_attached_volumes
    out = []
    for r in multi_attached_volumes(ctx.con).to_pylist():
        until = None if r["until_ts"] == 9223372036854775807 else r["until_ts"]
        out.append(Finding(
            "volume_multi_attach", "critical",
            f"Volume {r['volume']} was attached to two instances at once ({r['instance']} on {r['host']} and "
            f"{r['other_instance']} on {r['other_host']}).",
            "detach it from one of them; unless the volume type is multiattach with a cluster file system, "
            "data corruption is likely",
            [Evidence("interval", "both attached", None, None, r["host"], "app", r["since_ts"], until,
                      {"volume": r["volume"], "instance": r["instance"]}),
             Evidence("interval", "both attached", None, None, r["other_host"], "app", r["since_ts"], until,
                      {"volume": r["volume"], "instance": r["other_instance"]})],
            {"volume": r["volume"]}, score=1.0))
    return out


# ---- OvS upcall storm after a reconfiguration -------------------------------------------------
STORM_MIN_SHARE = 0.2  # slow-path share in the first interval after the command


@rule
def ovs_upcall_storm(ctx: Context) -> list[Finding]:
    from stacklens.analyses.ovs_report import live_report
    if not ctx.ovs_by_host:
        return []
    rep = live_report(ctx.con, models=ctx.ovs_models)
    upcalls = ctx.ovs_models["miss_upcalls"].to_pylist() if rep.get("datapaths") else []
    out = []
    for dp in rep.get("datapaths", []):
        for c in dp["reconfigurations"]:
            after = c["first_interval_after"]["share"]
            before = c["slow_share_before"]["share"] or 0.0
            burst = c["burst"]
            if burst is None or after is None or after < STORM_MIN_SHARE or after <= 2 * before:
                continue
            # each sample closes the interval it counts: the burst began one interval before its
            # first sample, and not before the command
            since = max(c["ts"], burst["start"] - (dp["sample_interval_ns"] or 0))
            ev = [Evidence("event", f"command: {c['command']}", None, None, dp["host"], "net", c["ts"], None,
                           {"datapath": dp["datapath"]}),
                  Evidence("interval", "miss burst", burst["total"], "upcalls", dp["host"], "net", since,
                           burst["end"], {"datapath": dp["datapath"]}),
                  Evidence("number", "slow-path share before", round(before, 3), None, dp["host"], "net",
                           c["ts"] - c["window_ns"], c["ts"]),
                  Evidence("number", "slow-path share after", round(after, 3), None, dp["host"], "net",
                           c["ts"], burst["end"])]
            # who sent the packets that went back to ovs-vswitchd, between the command and the
            # burst's end (ovs-vswitchd's own miss upcall records, by input port)
            storm = [u for u in upcalls if u["host"] == dp["host"] and c["ts"] < u["ts"] <= burst["end"]]
            by_vm: dict[tuple, int] = {}
            for u in storm:
                key = (u["src_vm"] or f"port {u['in_port']}", u["interface"])
                by_vm[key] = by_vm.get(key, 0) + 1
            for (vm, interface), n in sorted(by_vm.items(), key=lambda kv: -kv[1])[:5]:
                ev.append(Evidence("number", f"upcalls from {vm} ({interface}) in the burst", n, "upcalls",
                                   dp["host"], "net", since, burst["end"], {"vm": vm, "interface": interface}))
            out.append(Finding(
                "ovs_upcall_storm", "warning",
                f"An upcall storm followed `{c['command']}` on {dp['host']} ({dp['datapath']}): {burst['total']} misses, "
                f"slow-path share {before:.0%} → {after:.0%}.",
                "avoid flushing/revalidating datapath flows under load (ovs-appctl dpctl/del-flows, flow-table "
                "changes); raise the flow limit or the revalidator timing if flows are evicted",
                ev, {"host": dp["host"], "datapath": dp["datapath"], "command": c["command"],
                     "vms": sorted({vm for vm, _ in by_vm})}, score=float(burst["total"])))
    return out


# ---- OvS datapath kprobes (thesis addons_lttng_ovs_*) -------------------------------------------
LOST_UPCALL_EXAMPLES = 5
BURST_EXAMPLES = 5


@rule
def ovs_kprobe_upcalls(ctx: Context) -> list[Finding]:
    """Over the per-packet datapath events (not ovs-appctl samples): upcalls that never came
    back (upcall_start, no upcall_end, nothing sent: the packet died on the slow path), and
    bursts of upcalls (1 s bins at least max(3, 4 x the median bin))."""
    import numpy as np
    from stacklens.analyses.ovs_report import thesis_report
    from stacklens.views.terminal import fmt_duration
    if not ctx.ovs_by_host:
        return []
    rep = thesis_report(ctx.con, models=ctx.ovs_models)
    if not rep:
        return []
    packets = rep["_packets"]
    out = []
    for host in sorted(set(packets.column("host").to_pylist())):
        r = thesis_report(ctx.con, models=ctx.ovs_by_host[host]) if len(set(packets.column("host").to_pylist())) > 1 \
            else rep
        pk = [p for p in r["_packets"].to_pylist()]
        ev_counts = r["events"]
        lost = [p for p in pk if p["path"] == "upcall_lost"]
        upcalled = [p for p in pk if p["upcall_start_ts"] is not None]
        if lost:
            ev = [Evidence("number", "upcall_start events", ev_counts["upcall_start"], None, host, "net"),
                  Evidence("number", "upcall_end events", ev_counts["upcall_end"], None, host, "net"),
                  Evidence("number", "packets whose upcall never ended and that were never sent", len(lost),
                           "packets", host, "net", min(p["receive_ts"] or p["upcall_start_ts"] for p in lost),
                           max(p["upcall_start_ts"] for p in lost))]
            for p in sorted(lost, key=lambda p: p["upcall_start_ts"])[:LOST_UPCALL_EXAMPLES]:
                ev.append(Evidence("event", f"{p['proto'] or 'packet'} tag {p['tag']}: upcall started, no answer",
                                   None, None, host, "net", p["upcall_start_ts"], None, {"tag": p["tag"]}))
            share = len(lost) / len(upcalled) if upcalled else 1.0
            out.append(Finding(
                "ovs_lost_upcalls", "warning",
                f"{len(lost)} of the {len(upcalled)} upcalls of tagged packets on {host} ({share:.0%}) never came back "
                f"from ovs-vswitchd: "
                f"the datapath recorded upcall_start but no upcall_end and never sent the packet.",
                "look at ovs-vswitchd's handler threads (CPU, `ovs-appctl upcall/show`), the datapath's `lost` "
                "counter (`ovs-appctl dpctl/show`) and the netlink socket buffers; install flows proactively so "
                "fewer packets need an upcall",
                ev, {"host": host, "lost": len(lost), "upcalls": len(upcalled)}, score=float(len(lost))))
        bursts = r["upcall_bursts"]
        if bursts:
            bin_ns = r["upcall_rate"]["bin_ns"]
            per_bin = np.array([b["upcalls"] for b in r["upcall_rate"]["bins"]])
            ev = [Evidence("number", f"median upcalls per {fmt_duration(bin_ns)}", round(float(np.median(per_bin)), 1),
                           None, host, "net")]
            inside = []
            for b in sorted(bursts, key=lambda b: -b["total"]):
                lo, hi = b["start"] - bin_ns, b["end"]  # a bin's end names it
                inside += [p["upcall_ns"] for p in upcalled if lo <= p["upcall_start_ts"] < hi and p["upcall_ns"]]
            for b in sorted(bursts, key=lambda b: -b["total"])[:BURST_EXAMPLES]:
                ev.append(Evidence("interval", f"upcall burst (peak {b['peak']} per bin)", b["total"], "upcalls",
                                   host, "net", b["start"] - bin_ns, b["end"]))
            outside = [p["upcall_ns"] for p in upcalled if p["upcall_ns"] and not any(
                b["start"] - bin_ns <= p["upcall_start_ts"] < b["end"] for b in bursts)]
            if inside and outside:
                ev.append(Evidence("number", "median upcall latency in the bursts", float(np.median(inside)), "ns",
                                   host, "net"))
                ev.append(Evidence("number", "median upcall latency outside them", float(np.median(outside)), "ns",
                                   host, "net"))
            total = sum(b["total"] for b in bursts)
            out.append(Finding(
                "ovs_upcall_bursts", "info" if total < 10 else "warning",
                f"{len(bursts)} burst(s) of upcalls on {host}: {total} of {ev_counts['upcall_start']} upcalls came in "
                f"bins of at least {bursts[0]['threshold']:g} per {fmt_duration(bin_ns)} (the median bin has "
                f"{np.median(per_bin):g}).",
                "find what sent the new flows at those times (the packets' protocols and ports in `stacklens ovs`); "
                "bursts of misses follow flow-table flushes, revalidation and new traffic patterns",
                ev, {"host": host, "bursts": len(bursts), "upcalls": total}, score=float(total)))
    return out


# ---- idle workers -----------------------------------------------------------------------------
IDLE_BUSY_SHARE = 0.01
PEER_BUSY_SHARE = 0.2


@rule
def idle_workers(ctx: Context) -> list[Finding]:
    """Workers of a service that ran (almost) nothing while a peer of the same service was busy."""
    if ctx.app_span is None:
        return []
    lo, hi = ctx.app_span
    span = max(hi - lo, 1)
    busy: dict[tuple[str, str], dict[str, int]] = {}
    for t in ctx.tasks:
        w = busy.setdefault((t["service"] or "?", t["host"] or "?"), {})
        w[t["worker"]] = w.get(t["worker"], 0) + (t["duration_ns"] or 0)
    out = []
    for (service, host), workers in busy.items():
        if len(workers) < 2:
            continue
        peak = max(workers.values())
        if peak < PEER_BUSY_SHARE * span:
            continue
        idle = sorted(w for w, ns in workers.items() if ns < IDLE_BUSY_SHARE * span)
        if not idle:
            continue
        out.append(Finding(
            "idle_workers", "info",
            f"{len(idle)} of {len(workers)} {service} workers on {host} were idle while another was busy "
            f"{peak / span:.0%} of the time.",
            "check the worker pool size and how requests are spread (RPC consumers, eventlet/greenthreads)",
            [Evidence("number", f"busy time of {w}", round(workers[w] / 1e6, 1), "ms", host, "app", lo, hi,
                      {"worker": w}) for w in sorted(workers, key=lambda w: -workers[w])[:10]],
            {"service": service, "host": host, "idle": idle}, score=len(idle)))
    return out


# ---- clock synchronization --------------------------------------------------------------------
POOR_ACCURACY_NS = 1_000_000


def _causality_violations(ctx: Context) -> list[Finding]:
    """Packets matched across hosts (sender's out ↔ receiver's in) that, with the clocks as the
    store currently applies them, arrive no later than they left: the clocks disagree by more
    than the network delay, so cross-host orderings in every view are wrong."""
    import numpy as np
    packets = ctx.matched_packets
    if packets.num_rows == 0:
        return []
    clocks = ctx.store.clocks()

    def synced(hosts: list[str], ts: np.ndarray) -> np.ndarray:
        out = ts.copy()
        for h in set(hosts):
            t = clocks.get(h)
            if t is None or t.quality in ("identity", "failed"):
                continue
            sel = np.array([x == h for x in hosts])
            # the store's ClockTransform.apply, column-wise (integers for the large terms)
            out[sel] = ts[sel] + t.offset_ns + np.round((ts[sel] - t.base_ns) * t.drift).astype(np.int64)
        return out

    send_hosts = packets.column("send_host").to_pylist()
    recv_hosts = packets.column("recv_host").to_pylist()
    send = synced(send_hosts, packets.column("send_ts").to_numpy().astype(np.int64))
    recv = synced(recv_hosts, packets.column("recv_ts").to_numpy().astype(np.int64))
    delay = recv - send
    out = []
    for a, b in sorted({tuple(sorted(x)) for x in zip(send_hosts, recv_hosts)}):
        pair = np.array([{sh, rh} == {a, b} for sh, rh in zip(send_hosts, recv_hosts)])
        bad = pair & (delay <= 0)
        if not bad.any():
            continue
        worst = int(np.flatnonzero(bad)[np.argmin(delay[bad])])
        directions = {}
        for i in np.flatnonzero(bad):
            directions[(send_hosts[i], recv_hosts[i])] = directions.get((send_hosts[i], recv_hosts[i]), 0) + 1
        synced_now = any(h in clocks and clocks[h].quality not in ("identity", "failed") for h in (a, b))
        ev = [Evidence("number", "packets received before they were sent", int(bad.sum()), "packets", a, "kernel",
                       ref={"hosts": [a, b], "by_direction": {f"{s}->{r}": n for (s, r), n in sorted(directions.items())}}),
              Evidence("number", "packets matched between the hosts", int(pair.sum()), "packets", a, "kernel",
                       ref={"hosts": [a, b]}),
              Evidence("number", "worst delay (receive - send)", int(delay[worst]), "ns", recv_hosts[worst], "kernel",
                       ref={"seq": packets.column("seq")[worst].as_py()}),
              Evidence("event", f"sent ({packets.column('kind')[worst].as_py()}, "
                       f"seq {packets.column('seq')[worst].as_py()})", None, None, send_hosts[worst], "kernel",
                       int(send[worst]), None),
              Evidence("event", "received", None, None, recv_hosts[worst], "kernel", int(recv[worst]), None)]
        action = ("the stored clock transforms are wrong for these packets: re-run `stacklens sync` (with more "
                  "traffic between the hosts traced) or fix NTP/PTP" if synced_now else
                  "run `stacklens sync` on this store: it derives the clock transforms from these same packets")
        out.append(Finding(
            "clock_sync", "warning",
            f"The clocks of {a} and {b} disagree: {int(bad.sum())} of {int(pair.sum())} packets between them are "
            f"received before they were sent (worst {_ms(-int(delay[worst]))} early); cross-host orderings are wrong.",
            action, ev, {"hosts": [a, b]}, score=float(bad.sum())))
    return out


@rule
def clock_sync(ctx: Context) -> list[Finding]:
    """Causality violations under the stored clocks, hosts that could not be synchronized, and
    synchronized hosts whose error bound is too wide where it is widest: at the ends of their
    trace (the convex hull's bounding lines diverge away from the matched packets)."""
    from stacklens.sync import synchronize
    out = _causality_violations(ctx)
    clocks = ctx.store.clocks()
    if not clocks:
        return out
    bad = {h: c for h, c in clocks.items() if c.quality in ("failed", "approximate")}
    try:
        details = {r.host: r for r in synchronize(ctx.store, ctx.matched_packets, ctx.spans)[0]}
    except (StacklensError, ValueError):
        details = {}
    for h, c in sorted(clocks.items()):
        d = details.get(h)
        acc = d.accuracy_ns if d else None
        if h not in bad and (acc is None or acc < POOR_ACCURACY_NS):
            continue
        ev = [Evidence("number", "matched packets", d.matches if d else None, None, h, "kernel")]
        if c.quality in ("failed", "approximate"):
            what = {"failed": "could not be synchronized", "approximate": "is only approximately synchronized"}[c.quality]
            statement = (f"Host {h}'s clock {what} with {c.reference}"
                         + (f" ({d.matches} matched packets; {d.reason})" if d and d.reason else
                            f" ({d.matches} matched packets)" if d else "") + "; cross-host orderings may be wrong.")
            action = "trace the TCP traffic between the hosts (inet_sock_local_in/out) over a longer period, or fix NTP/PTP"
            ev.append(Evidence("number", "error bound at the trace's ends", acc, "ns", h, "kernel"))
        else:
            span, window = d.span, d.window
            statement = (f"Host {h}'s clock is synchronized with {c.reference} to ±{_duration(acc)} at the ends of its "
                         f"trace but ±{_duration(d.accuracy_window_ns)} over the {d.matches} matched packets: they cover "
                         f"{_duration(window[1] - window[0])} of its {_duration(span[1] - span[0])}, and the clock's drift is "
                         f"known only within {d.slope_accuracy * 1e6:.0f} ppm, so cross-host orderings far from "
                         "the packets may be wrong.")
            action = ("trace TCP traffic between the hosts throughout the recording (inet_sock_local_in/out), so that "
                      "matched packets bound the drift over the whole trace; or fix NTP/PTP")
            ev += [Evidence("number", "error bound at the trace's ends", acc, "ns", h, "kernel",
                            c.apply(span[0]), c.apply(span[1])),
                   Evidence("number", "error bound over the matched packets", d.accuracy_window_ns, "ns", h, "kernel",
                            c.apply(window[0]), c.apply(window[1])),
                   Evidence("number", "slope uncertainty (Trace Compass's accuracy)", round(d.slope_accuracy * 1e6, 3),
                            "ppm", h, "kernel"),
                   Evidence("interval", "matched packets (on this host)", None, None, h, "kernel",
                            c.apply(window[0]), c.apply(window[1])),
                   Evidence("interval", "trace", None, None, h, "kernel", c.apply(span[0]), c.apply(span[1]))]
        out.append(Finding(
            "clock_sync", "warning" if c.quality == "failed" or (acc or 0) >= POOR_ACCURACY_NS else "info",
            statement, action, ev, {"host": h}, score=float(acc or 0)))
    return out


def diagnose_store(store, cluster: str | None = None, **thresholds: int) -> list[Finding]:
    """Every rule over one store, ranked. `cluster`: a Dask scheduler's address, where the
    per-host facts are built (one task per host). `thresholds`: Context fields (stuck_after_ns, …)."""
    from stacklens.diagnose.findings import rank
    ctx = Context(store, cluster=cluster, **thresholds)
    findings: list[Finding] = []
    for r in RULES:
        findings.extend(r(ctx))
    return rank(findings)
