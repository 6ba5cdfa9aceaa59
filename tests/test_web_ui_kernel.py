"""The kernel view's data on Trace Compass's many-threads trace (LTTng 2.8, 8 CPUs, thousands
of short-lived threads, syscall_entry_*/exit_*, irq_softirq_*): system-call and interrupt
intervals begin and end on the trace's own entry/exit events, threads are grouped by the
process the trace's fork events give them, and paging reaches every thread that ran.
Oracles: the trace's events read here with a fresh DuckDB over the store's Parquet files."""

from __future__ import annotations

import re

import duckdb
import pytest

from conftest import need_data
from stacklens.store import Store
from stacklens.store.ingest import ingest
from stacklens.views.web.data import KERNEL_THREAD_LANES, WebData

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("webk") / "s", create=True)
    ingest(s, [need_data("tracecompass", "many-threads")])
    return s


def _q(store, sql: str, args: list | None = None) -> list[tuple]:
    with duckdb.connect() as con:
        src = f"read_parquet('{store.root}/events/**/*.parquet', union_by_name=true, hive_partitioning=false)"
        return con.execute(sql.replace("EVENTS", src), args or []).fetchall()


def test_kernel_view_syscalls_irqs_processes_and_paging(store):
    t0, t1 = _q(store, "SELECT min(ts), max(ts) FROM EVENTS")[0]
    lo = t0 + (t1 - t0) // 2
    hi = lo + 20_000_000  # 20 ms in the middle: at 4000 px, 5 µs per pixel
    data = WebData(store)
    out = data.view("kernel", lo, hi, 4000, host="wilbrod")
    bars = out["bars"]
    lane_tid = {}
    for b in bars:
        if b["tid"] is not None and not b["lane"].startswith("CPU "):
            lane_tid[b["lane"]] = b["tid"]

    # system calls: an unmerged interval starts on a syscall_entry_X and ends on a syscall_exit_X
    entries = dict(_q(store, "SELECT ts, name FROM EVENTS WHERE name LIKE 'syscall_entry_%' AND ts >= ? AND ts < ?", [lo, hi]))
    exits = dict(_q(store, "SELECT ts, name FROM EVENTS WHERE name LIKE 'syscall_exit_%' AND ts >= ? AND ts < ?", [lo, hi]))
    sys_bars = [b for b in bars if b["state"] == "syscall" and b["merged"] == 1]
    assert len(sys_bars) > 20
    for b in sys_bars:
        call = b["label"].removeprefix("system call ")
        assert entries.get(b["start"]) == f"syscall_entry_{call}", b
        assert exits.get(b["end"]) == f"syscall_exit_{call}", b
        # the thread was running (not blocked) when it entered the call
        assert any(s["tid"] == b["tid"] and s["state"] == "running" and s["start"] <= b["start"] < s["end"]
                   for s in bars if s["lane"] == b["lane"]), b
    # interrupts: on the CPU's IRQ lane, from an *_entry to the next *_exit of that CPU
    irq_ev = _q(store, "SELECT ts, cpu, name FROM EVENTS WHERE name LIKE 'irq_%' AND ts >= ? AND ts < ?", [lo, hi])
    irq_entry = {(ts, cpu) for ts, cpu, n in irq_ev if n.endswith("_entry")}
    irq_exit = {(ts, cpu) for ts, cpu, n in irq_ev if n.endswith("_exit")}
    irq_bars = [b for b in bars if b["state"] in ("irq", "softirq") and b["merged"] == 1]
    assert irq_bars
    for b in irq_bars:
        assert b["lane"] == f"CPU {b['cpu']} IRQ"
        assert (b["start"], b["cpu"]) in irq_entry and (b["end"], b["cpu"]) in irq_exit, b
    # thread states beyond running/preempted: blocked shows up
    assert {"running", "blocked"} <= {b["state"] for b in bars}

    # grouping by process: a forked thread's lane names the pid its fork event gives it
    forks = {int(c): int(p) for c, p in _q(store, "SELECT fields->>'tid', fields->>'pid' FROM EVENTS "
                                                   "WHERE name = 'lttng_statedump_process_state' ORDER BY ts")}
    forks.update({int(c): int(p) for c, p in _q(store, "SELECT fields->>'child_tid', fields->>'child_pid' FROM EVENTS "
                                                        "WHERE name = 'sched_process_fork' ORDER BY ts")})
    checked = 0
    for lane, tid in lane_tid.items():
        m = re.search(r"\[(\d+)\] › .* \((\d+)\)$", lane)
        assert m and int(m.group(2)) == tid, lane
        if tid in forks:
            assert int(m.group(1)) == forks[tid], lane
            checked += 1
    assert checked > 0

    # paging: every thread switched in during the window appears on some page, in (pid, tid) order
    switched_in = {r[0] for r in _q(store, "SELECT DISTINCT CAST(fields->>'next_tid' AS BIGINT) FROM EVENTS "
                                           "WHERE name = 'sched_switch' AND ts >= ? AND ts < ?", [lo, hi])} - {0}
    total = out["threads_total"]
    assert total >= len(switched_in) > KERNEL_THREAD_LANES  # more than one page
    seen: list[int] = []
    for offset in range(0, total, KERNEL_THREAD_LANES):
        page = data.view("kernel", lo, hi, 200, host="wilbrod", offset=offset)
        thread_lanes = [x for x in page["lanes"] if not x.startswith("CPU ")]
        seen += [int(re.search(r"\((\d+)\)$", x).group(1)) for x in thread_lanes]
    assert switched_in <= set(seen) and len(seen) == len(set(seen)) == total
    keys = [(forks.get(t, t), t) for t in seen]
    assert keys == sorted(keys)
