"""QEMU live migrations from QEMU's trace events, QMP records and Nova notifications.

Thesis Algorithm 1 (SPEC §4), per VM and per migration attempt on the source host:

* setup: `migrate_set_state setup` → `active`;
* the bitmap syncs (`migration_bitmap_sync_end dirty_pages N`): precopy (the first pass) runs
  from the first sync to the second; each later sync closes an iteration round whose dirty
  pages are the pages found dirty at that sync;
* stop&copy: from the source VM stopping (`vm_state_notify running 0`, else
  `savevm_state_complete_precopy`, else the last sync) to the VM running on the destination
  (`vm_state_notify running 1` of the same VM on another host) = guest-visible downtime;
* the end: `migrate_set_state completed / failed / cancelled`.

Downtime, three ways (QEMU 7.2 migration.c):
* QEMU's own figure (query-migrate `downtime`) is the source's: its clock starts just before
  the source stops the VM (`runstate_set … finish-migrate`, then the vCPUs pause) and stops
  when the source has sent the last byte (`runstate_set … postmigrate`, right after). The same
  interval from the trace is `source_downtime_ns`.
* guest-visible (`downtime_ns`): the vCPUs stopped on the source (`vm_state_notify running
  0`, after they paused) → the VM running on the destination (`vm_state_notify running 1`).
* they differ by the vCPU pause (`vcpu_pause_ns`, in QEMU's figure only) and by the
  destination's hand-over (`handover_ns`: source done → destination running, in the
  guest-visible one only: draining the stream in flight, loading the devices, starting).
  The stream in flight is whatever the socket buffers hold: megabytes with loopback TCP's
  autotuning (hand-over up to 5.5 ms measured), at most ~0.5 MiB in the lab, which bounds
  its buffers (hand-over -0.2 to 1.7 ms measured on the same loaded machine).

QEMU prints at each sync the dirty pages counted since it last computed its rates
(`num_dirty_pages_period`), and resets that count when a sync ends more than 1 s after the
previous reset (ram.c, migration_bitmap_sync). The pages found at one sync are therefore the
difference with the previous value within a period, the value itself after a reset.

Verdict: `converged` (stop&copy and the VM running on the destination); `not converging`
(no stop&copy, and the guest dirties pages at least about as fast as they are sent, or the
dirty pages per round do not shrink); `failed` otherwise. Cancelled attempts are rolled back.
QMP's own figures (total-time, downtime, dirty-sync-count, dirty-pages-rate, mbps,
transferred) are attached for comparison and for the totals the trace lacks (bytes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import duckdb

PERIOD_NS = 1_000_000_000  # QEMU recomputes its rates (and resets its counter) every > 1 s
QEMU_EVENTS = ("migration_bitmap_sync_start", "migration_bitmap_sync_end", "savevm_state_complete_precopy",
               "migrate_set_state", "vm_state_notify", "migration_throttle", "migrate_pending", "runstate_set")
END_STATES = ("completed", "failed", "cancelled")


@dataclass
class Round:
    index: int  # 0: the first pass (precopy)
    start: int
    end: int
    dirty_pages: int  # pages found dirty at the sync that closes the round


@dataclass
class NovaStep:
    name: str  # the step: pre, migration, post, post_dest, rollback, rollback_dest, …
    host: str | None
    start: int | None
    end: int | None
    request_id: str | None


@dataclass
class MigrationAttempt:
    vm: str
    instance: str | None
    source_host: str
    dest_host: str | None
    start: int
    end: int | None
    final_state: str | None  # QEMU's: completed / failed / cancelled / None (trace cut)
    setup_ns: int | None
    precopy_ns: int | None
    rounds: list[Round] = field(default_factory=list)
    syncs: int = 0  # bitmap syncs = QEMU's dirty-sync-count
    stop_copy_start: int | None = None
    stop_copy_end: int | None = None
    downtime_ns: int | None = None  # guest-visible: stopped on source → running on destination
    source_downtime_ns: int | None = None  # QEMU's definition, from the trace (see module doc)
    vcpu_pause_ns: int | None = None  # source: downtime clock started → vCPUs stopped
    handover_ns: int | None = None  # source done → VM running on the destination
    total_ns: int | None = None
    throttle_events: int = 0
    dirty_rate_pps: float | None = None  # pages/s dirtied, from the syncs
    transfer_rate_pps: float | None = None  # pages/s sent, from QMP's mbps
    qmp: dict = field(default_factory=dict)  # QEMU's last query-migrate figures
    verdict: str = "unknown"
    reason: str = ""
    rolled_back: bool = False
    nova_steps: list[NovaStep] = field(default_factory=list)
    request_id: str | None = None

    @property
    def dirty_curve(self) -> list[tuple[int, int]]:
        return [(r.end, r.dirty_pages) for r in self.rounds]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rounds_count"] = len(self.rounds)
        return d


def migration_attempts(con: duckdb.DuckDBPyConnection) -> list[MigrationAttempt]:
    """Every migration attempt in the store, in time order (built once per connection: a new
    list each call, the attempts shared)."""
    from stacklens.models.cache import memo
    return list(memo(con, "migration_attempts", lambda: _migration_attempts(con)))


def _migration_attempts(con: duckdb.DuckDBPyConnection) -> list[MigrationAttempt]:
    names = ", ".join(f"'{n}', 'qemu:{n}'" for n in QEMU_EVENTS)
    rows = con.execute(
        f"SELECT ts, host, coalesce(procname, ''), regexp_replace(name, '^qemu:', ''), fields FROM events "
        f"WHERE layer = 'virt' AND name IN ({names}) ORDER BY host, procname, ts, pos").fetchall()
    by_vm: dict[tuple[str, str], list[tuple[int, str, dict]]] = {}
    for ts, host, vm, name, fields in rows:
        by_vm.setdefault((host, vm), []).append((ts, name, json.loads(fields) if fields else {}))
    attempts = []
    for (host, vm), events in by_vm.items():
        for chunk in _split_attempts(events):
            attempts.append(_attempt(host, vm, chunk, by_vm))
    attempts.sort(key=lambda a: a.start)
    _join_qmp(con, attempts)
    _join_nova(con, attempts)
    for a in attempts:
        _judge(a)
    return attempts


def _split_attempts(events: list[tuple[int, str, dict]]) -> list[list[tuple[int, str, dict]]]:
    """Cut one VM's events on one host into attempts: `setup` opens, an end state closes.
    Only hosts that ran bitmap syncs are migration sources."""
    out, current = [], None
    for ev in events:
        ts, name, f = ev
        if name == "migrate_set_state" and f.get("state") == "setup":
            current = [ev]
            out.append(current)
            continue
        if current is None:
            if name != "migration_bitmap_sync_end":
                continue
            current = []  # trace starts mid-migration (no setup seen)
            out.append(current)
        current.append(ev)
        if name == "migrate_set_state" and f.get("state") in END_STATES:
            current = None
    return [c for c in out if any(n == "migration_bitmap_sync_end" for _, n, _ in c)]


def _attempt(host: str, vm: str, events: list[tuple[int, str, dict]],
             by_vm: dict[tuple[str, str], list[tuple[int, str, dict]]]) -> MigrationAttempt:
    start = events[0][0]
    states = [(ts, f.get("state")) for ts, n, f in events if n == "migrate_set_state"]
    end_state = next(((ts, s) for ts, s in states if s in END_STATES), None)
    active = next((ts for ts, s in states if s == "active"), None)
    setup = next((ts for ts, s in states if s == "setup"), None)
    syncs = [(ts, int(f.get("dirty_pages", 0))) for ts, n, f in events if n == "migration_bitmap_sync_end"]
    a = MigrationAttempt(vm=vm, instance=None, source_host=host, dest_host=None, start=start,
                         end=end_state[0] if end_state else None,
                         final_state=end_state[1] if end_state else None,
                         setup_ns=(active - setup) if active is not None and setup is not None else None,
                         precopy_ns=(syncs[1][0] - syncs[0][0]) if len(syncs) > 1 else None,
                         syncs=len(syncs))
    found = dirty_pages_per_sync(syncs)
    for i in range(1, len(syncs)):
        a.rounds.append(Round(i - 1, syncs[i - 1][0], syncs[i][0], found[i]))
    a.throttle_events = sum(1 for _, n, _ in events if n == "migration_throttle")
    if len(syncs) > 1 and syncs[-1][0] > syncs[0][0]:
        a.dirty_rate_pps = sum(found[1:]) / ((syncs[-1][0] - syncs[0][0]) / 1e9)

    stopped = next((ts for ts, n, f in events if n == "vm_state_notify" and f.get("running") == 0), None)
    complete = next((ts for ts, n, _ in events if n == "savevm_state_complete_precopy"), None)
    if a.final_state == "completed" or complete is not None:
        a.stop_copy_start = stopped or complete or syncs[-1][0]
    # The destination: the same VM on another host starting to run after the source stopped.
    if a.stop_copy_start is not None:
        for (h, v), evs in by_vm.items():
            if v != vm or h == host:
                continue
            run = next((ts for ts, n, f in evs if n == "vm_state_notify" and f.get("running") == 1
                        and ts >= a.stop_copy_start), None)
            if run is not None:
                a.dest_host, a.stop_copy_end = h, run
                a.downtime_ns = run - a.stop_copy_start
                break
    # QEMU's own downtime interval: the source's run states around its clock reads.
    stopping = next((ts for ts, n, f in events
                     if n == "runstate_set" and f.get("new_state") == "finish-migrate"), None)
    # (`postmigrate` comes just after `completed`, which closed this attempt's events)
    done = next((ts for ts, n, f in by_vm[(host, vm)] if n == "runstate_set"
                 and f.get("new_state") == "postmigrate" and stopping is not None and ts >= stopping), None)
    if stopping is not None and done is not None:
        a.source_downtime_ns = done - stopping
        if stopped is not None and stopped >= stopping:
            a.vcpu_pause_ns = stopped - stopping
        if a.stop_copy_end is not None:
            a.handover_ns = a.stop_copy_end - done
    if a.end is not None:
        a.total_ns = a.end - start
    return a


def dirty_pages_per_sync(syncs: list[tuple[int, int]]) -> list[int]:
    """Pages found dirty at each sync from QEMU's per-period counts (see module doc)."""
    out, prev, period_start = [], 0, None
    for ts, value in syncs:
        if period_start is None:
            out.append(value)
            period_start = ts
        else:
            out.append(value if value < prev else value - prev)
        # QEMU resets its count after a sync that ends more than 1 s into the period.
        if ts - period_start > PERIOD_NS:
            period_start, prev = ts, 0
        else:
            prev = value
    return out


def _join_qmp(con: duckdb.DuckDBPyConnection, attempts: list[MigrationAttempt]) -> None:
    rows = con.execute(
        "SELECT ts, host, procname, instance, fields FROM events WHERE source = 'qmp' "
        "AND name = 'query-migrate' ORDER BY ts").fetchall()
    uuids = dict(((h, p), i) for h, p, i in con.execute(
        "SELECT DISTINCT host, procname, instance FROM events WHERE source = 'qmp' AND instance IS NOT NULL").fetchall())
    for a in attempts:
        a.instance = uuids.get((a.source_host, a.vm))
        until = (a.end or a.start) + 5 * PERIOD_NS
        best = None
        for ts, host, vm, _, fields in rows:
            if host != a.source_host or vm != a.vm or ts < a.start or ts > until:
                continue
            f = json.loads(fields)
            if f.get("ram") or "total-time" in f:
                best = f  # the last sample with figures wins
        if best is None:
            continue
        ram = best.get("ram", {})
        a.qmp = {k: v for k, v in {
            "status": best.get("status"), "total-time-ms": best.get("total-time"),
            "downtime-ms": best.get("downtime"), "expected-downtime-ms": best.get("expected-downtime"),
            "setup-time-ms": best.get("setup-time"), "dirty-sync-count": ram.get("dirty-sync-count"),
            "dirty-pages-rate": ram.get("dirty-pages-rate"), "mbps": ram.get("mbps"),
            "transferred": ram.get("transferred"), "remaining": ram.get("remaining"),
            "page-size": ram.get("page-size"), "total": ram.get("total")}.items() if v is not None}
        if ram.get("mbps"):
            a.transfer_rate_pps = ram["mbps"] * 1e6 / 8 / (ram.get("page-size") or 4096)


def _join_nova(con: duckdb.DuckDBPyConnection, attempts: list[MigrationAttempt]) -> None:
    """Nova's live-migration steps of the same instance (the application layer's model),
    joined on the instance uuid and a time window around the attempt."""
    if not any(a.instance for a in attempts):
        return
    from stacklens.models.live_migration import live_migration_steps
    steps = live_migration_steps(con).to_pylist()
    for a in attempts:
        if not a.instance:
            continue
        lo, hi = a.start - 600 * PERIOD_NS, (a.end or a.start) + 600 * PERIOD_NS
        mine = [s for s in steps if s["instance"] == a.instance
                and lo <= (s["start_ts"] or s["end_ts"] or 0) <= hi]
        a.nova_steps = [NovaStep(s["step"], s["host"], s["start_ts"], s["end_ts"], s["request_id"])
                        for s in sorted(mine, key=lambda s: s["start_ts"] or s["end_ts"] or 0)]
        a.request_id = next((s.request_id for s in a.nova_steps if s.request_id), None)


def _judge(a: MigrationAttempt) -> None:
    if a.final_state == "cancelled" or any("rollback" in s.name for s in a.nova_steps):
        a.rolled_back = True
    if a.stop_copy_start is not None and (a.stop_copy_end is not None or a.final_state == "completed"):
        a.verdict, a.reason = "converged", "stop&copy done, VM running on the destination"
        if a.stop_copy_end is None:
            a.reason = "stop&copy done (destination trace missing)"
        return
    dirty = [r.dirty_pages for r in a.rounds[1:]]  # iteration rounds after the first pass
    rate_ratio = (a.dirty_rate_pps / a.transfer_rate_pps
                  if a.dirty_rate_pps and a.transfer_rate_pps else None)
    not_shrinking = len(dirty) >= 2 and dirty[-1] >= 0.8 * dirty[-2]
    if rate_ratio is not None and rate_ratio >= 0.8:
        a.verdict = "not converging"
        a.reason = f"dirty rate {a.dirty_rate_pps:.0f} pages/s vs transfer {a.transfer_rate_pps:.0f} pages/s"
    elif not_shrinking:
        a.verdict = "not converging"
        a.reason = f"dirty pages per round not shrinking ({', '.join(str(d) for d in dirty[-3:])})"
    else:
        a.verdict, a.reason = "failed", f"no stop&copy (QEMU state {a.final_state or 'unknown'})"
    if a.rolled_back:
        a.reason += "; rolled back"


@dataclass
class Preemptor:
    tid: int
    name: str | None  # the thread's name in the kernel trace
    vm: str | None  # the VM the thread belongs to (lab.thread records), if any
    role: str | None  # source / destination / busy-N (the lab's), if known
    ns: int  # time it ran on the CPU while a thread of the migrating VM waited for it


def vm_threads(con: duckdb.DuckDBPyConnection) -> dict[int, tuple[str, str, str]]:
    """tid → (vm, host, role) from the lab's thread records (`lab.thread`, lab.json)."""
    rows = con.execute(
        "SELECT tid, procname, fields->>'host', fields->>'role' FROM events "
        "WHERE source = 'lab.config' AND name = 'lab.thread' AND tid IS NOT NULL").fetchall()
    return {int(tid): (vm, host, role) for tid, vm, host, role in rows}


def migration_preemptors(store, a: MigrationAttempt, top: int = 10) -> list[Preemptor]:
    """Who took the CPU from the migrating VM's threads on its source host during the attempt
    (the kernel layer's preemption ranking over the host's scheduling trace), each named by
    its VM when the lab recorded it. Empty without a kernel trace or thread records."""
    from stacklens.errors import StacklensError
    from stacklens.models.kernel import KernelModel
    threads = vm_threads(store.connect())
    victims = [tid for tid, (vm, host, _) in threads.items() if vm == a.vm and host == a.source_host]
    if not victims:
        return []
    try:
        kernel = KernelModel(store, a.source_host)
    except StacklensError:
        return []  # no kernel events for that host
    ranking = kernel.preemption(victims, a.start, a.end or kernel.span.end).to_pylist()
    out = []
    for row in ranking[:top]:
        vm, _, role = threads.get(row["preemptor_tid"], (None, None, None))
        out.append(Preemptor(row["preemptor_tid"], row["preemptor_name"], vm, role, int(row["ns"])))
    return out
