"""The streamed kernel aggregates (models/kernel_stream.py) that `cpu`, `threads` and
`preemption` print, on real kernel traces (LTTng: many-threads, the babeltrace corpus' tracefile
rotation trace; ftrace: a recording made here), checked two ways:
  * against an oracle written here: a plain-Python walk over the host's sched_switch /
    sched_wakeup rows (fields parsed with json, prev_state decoded here, intervals and overlaps
    computed with lists and bisect), from the semantics the model documents;
  * against KernelModel (whole-host SQL) table for table, so the commands print what they did.
The fold is also run with tiny batches and a tiny preemption log, so batch boundaries, log
growth and log trimming are all crossed. (`cpu` against babeltrace2's own text: test_kernel.py.)"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import need_data
from stacklens.errors import StacklensError
from stacklens.models import kernel_stream as ks
from stacklens.models.kernel import KernelModel, kernel_hosts
from stacklens.models.kernel_stream import KernelStream
from stacklens.store import Store
from stacklens.store.store import ClockTransform
from stacklens.store.ingest import ingest


def _store(tmp_path_factory, trace: Path, **kw) -> Store:
    store = Store(tmp_path_factory.mktemp("kstream") / "s", create=True)
    ingest(store, [trace], **kw)
    return store


@pytest.fixture(scope="module")
def many_threads(tmp_path_factory) -> Store:
    return _store(tmp_path_factory, need_data("tracecompass", "many-threads"))


@pytest.fixture(scope="module")
def rotation(tmp_path_factory) -> Store:
    return _store(tmp_path_factory, need_data("ctf-conformance", "traces", "succeed", "lttng-tracefile-rotation"))


@pytest.fixture(scope="module")
def ftrace(tmp_path_factory) -> Store:
    """Half a second of this machine's scheduling through ftrace: two loops sharing CPU 0 and a
    sleeper (prev_state as ftrace's letters)."""
    from stacklens.collect.ftrace import FtraceRecorder
    if os.geteuid() != 0:
        pytest.skip("recording ftrace needs root")
    try:
        recorder = FtraceRecorder(f"stacklens-stream-{uuid.uuid4().hex[:8]}")
    except Exception as e:  # noqa: BLE001 - no tracefs here
        pytest.skip(f"tracefs unavailable: {e}")
    tmp = tmp_path_factory.mktemp("ftrace")
    sh, taskset = shutil.which("sh"), shutil.which("taskset")
    procs = [subprocess.Popen([taskset, "-c", "0", sh, "-c", "while :; do :; done"]) for _ in range(2)]
    procs.append(subprocess.Popen([sh, "-c", "while :; do sleep 0.05; done"]))
    try:
        with recorder:
            time.sleep(0.5)
            trace = recorder.stop(tmp / "trace.txt")
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
    return _store(tmp_path_factory, trace, host="here")


# ---- the oracle: plain Python over the rows --------------------------------------------------
def _entered(prev_state: str | None) -> str:
    """The state a switched-out thread entered (kernel task state bits, or ftrace's letters)."""
    if prev_state is None:
        return "unknown"
    if prev_state.lstrip("-").isdigit():
        v = int(prev_state)
        if v & 255 == 0:
            return "runnable"  # TASK_RUNNING, maybe with a preemption bit above the low byte
        if v & (16 | 32 | 64):
            return "exited"
        return "io_wait" if v & 2 else "blocked"
    if prev_state.startswith("R") or prev_state == "W":
        return "runnable"
    if "D" in prev_state:
        return "io_wait"
    if prev_state[:1] in ("X", "Z"):
        return "exited"
    return "blocked"


def _int(v) -> int | None:
    return None if v is None else int(v)


class Oracle:
    """One host's running intervals, thread states and preemption, from plain loops."""

    def __init__(self, store: Store, host: str) -> None:
        con = store.connect(host=host, layer="kernel")
        self.start, self.end = con.execute("SELECT min(ts), max(ts) FROM events").fetchone()
        rows = con.execute("""SELECT ts, src, pos, cpu, name, fields, tid FROM events
                              ORDER BY ts, src, pos""").fetchall()
        con.close()
        # running intervals per CPU: (start, end, tid)
        self.running: dict[int, list[tuple[int, int, int | None]]] = defaultdict(list)
        last: dict[int, tuple[int, int | None]] = {}
        events: dict[int, list[tuple]] = defaultdict(list)  # tid -> (ts, src, pos, kind, state, cpu)
        seen: dict[int, list[tuple[int, int]]] = defaultdict(list)  # cpu -> (ts, task context tid) of its events
        self.missed: list[tuple] = []  # (cpu, ts, at, hidden tid, found tid)
        for ts, src, pos, cpu, name, fields, ctx_tid in rows:
            if name not in ("sched_switch", "sched_wakeup", "sched_wakeup_new"):
                if cpu is not None and ctx_tid is not None:
                    seen[cpu].append((ts, ctx_tid))
                continue
            f = json.loads(fields)
            if name == "sched_switch":
                if cpu is None:
                    continue
                prev = _int(f.get("prev_tid", f.get("prev_pid")))
                nxt = _int(f.get("next_tid", f.get("next_pid")))
                if cpu in last and prev is not None and last[cpu][1] is not None and prev != last[cpu][1] \
                        and last[cpu][0] < ts:
                    # a switch the trace lacks: the hidden thread left right after its last event here
                    since, hidden = last[cpu]
                    left = max([since] + [t for t, c in seen[cpu] if c == hidden and since < t < ts])
                    self.running[cpu].append((since, left, hidden))
                    events[hidden].append((left, src, pos, 0, "unknown", cpu))
                    events[prev].append((left, src, pos, 1, "running", cpu))
                    last[cpu] = (left, prev)
                    self.missed.append((cpu, left, ts, hidden, prev))
                if ctx_tid is not None:
                    seen[cpu].append((ts, ctx_tid))
                if cpu in last:
                    self.running[cpu].append((last[cpu][0], ts, last[cpu][1]))
                elif ts > self.start and prev is not None:
                    self.running[cpu].append((self.start, ts, prev))  # ran since the trace start
                    events[prev].append((self.start, src, pos, 1, "running", cpu))
                last[cpu] = (ts, nxt)
                ps = f.get("prev_state")
                events[prev].append((ts, src, pos, 0, _entered(None if ps is None else str(ps)), cpu))
                events[nxt].append((ts, src, pos, 1, "running", cpu))
            else:
                if cpu is not None and ctx_tid is not None:
                    seen[cpu].append((ts, ctx_tid))
                tid = _int(f.get("tid", f.get("pid")))
                target = f.get("target_cpu", cpu)
                events[tid].append((ts, src, pos, 2, "runnable", None if target is None else int(target)))
        for cpu, (ts, tid) in last.items():
            self.running[cpu].append((ts, self.end, tid))
        # states per tid: (state, start, end, cpu), exited and empty ones left out
        self.states: dict[int, list[tuple[str, int, int, int | None]]] = {}
        for tid, evs in events.items():
            if tid is None or tid == 0:
                continue
            evs.sort(key=lambda e: e[:4])
            runs: list[list] = []
            last_switch = None
            for ts, _, _, kind, state, cpu in evs:
                if kind == 2 and last_switch not in (None, "blocked", "io_wait"):
                    continue
                if kind < 2:
                    last_switch = state
                if runs and runs[-1][0] == state:
                    if runs[-1][3] is None:
                        runs[-1][3] = cpu
                    continue
                if runs:
                    runs[-1][2] = ts
                runs.append([state, ts, None, cpu])
            runs[-1][2] = self.end
            out = [("unknown", self.start, runs[0][1], None)] if runs[0][1] > self.start else []
            out += [tuple(r) for r in runs if r[0] != "exited" and r[2] > r[1]]
            self.states[tid] = out

    def cpu_per_thread(self, lo: int, hi: int) -> dict[int, tuple[int, int]]:
        """tid -> (cpu_ns, wait_cpu_ns) over [lo, hi)."""
        out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for ivs in self.running.values():
            for s, e, tid in ivs:
                if tid and e > lo and s < hi:
                    out[tid][0] += min(e, hi) - max(s, lo)
        for tid, sts in self.states.items():
            for state, s, e, _ in sts:
                if state == "runnable" and e > lo and s < hi:
                    out[tid][1] += min(e, hi) - max(s, lo)
        return {t: tuple(v) for t, v in out.items()}

    def per_cpu(self, lo: int, hi: int) -> dict[int, tuple[int, int, int]]:
        """cpu -> (busy_ns, idle_ns, known_ns) over [lo, hi)."""
        out = {}
        for cpu, ivs in self.running.items():
            busy = idle = known = 0
            seen = False
            for s, e, tid in ivs:
                if e > lo and s < hi:
                    seen = True
                    ns = min(e, hi) - max(s, lo)
                    known += ns
                    busy += ns if tid else 0
                    idle += ns if tid == 0 else 0
            if seen:
                out[cpu] = (busy, idle, known)
        return out

    def time_in_state(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for tid, sts in self.states.items():
            for state, s, e, _ in sts:
                d = out.setdefault(tid, {})
                d[state] = d.get(state, 0) + e - s
        return out

    def preemption(self, victims: list[int], lo: int, hi: int) -> dict[int, tuple[int, list[int]]]:
        """preemptor -> (ns, victims): who ran on the CPU a victim's wait ended on, meanwhile."""
        starts = {cpu: [s for s, _, _ in ivs] for cpu, ivs in self.running.items()}
        switch_in = {(tid, s): cpu for cpu, ivs in self.running.items() for s, _, tid in ivs}
        out: dict[int, list] = {}
        for v in victims:
            for state, s, e, _ in self.states.get(v, []):
                if state != "runnable" or not (e > lo and s < hi) or (v, e) not in switch_in:
                    continue
                cpu, ws, we = switch_in[v, e], max(s, lo), min(e, hi)
                ivs = self.running[cpu]
                for k in range(max(0, bisect.bisect_right(starts[cpu], ws) - 1), len(ivs)):
                    rs, re, tid = ivs[k]
                    if rs >= we:
                        break
                    if re > ws and tid and tid != v:
                        entry = out.setdefault(tid, [0, set()])
                        entry[0] += min(re, we) - max(rs, ws)
                        entry[1].add(v)
        return {t: (ns, sorted(vs)) for t, (ns, vs) in out.items()}


# ---- the checks ------------------------------------------------------------------------------
def _ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    third = (hi - lo) // 3
    return [(lo, hi), (lo + third, hi), (lo + third, lo + 2 * third), (lo - 1000, lo + 1)]


def _check_host(store: Store, host: str, procs: list[str]) -> None:
    oracle = Oracle(store, host)
    model = KernelModel(store, host)
    stream = KernelStream(store, host)
    try:
        for proc in procs:
            victims = stream.thread_tids(proc)
            assert victims and victims == model.thread_tids(proc)
            for lo, hi in _ranges(stream.span.start, stream.span.end):
                agg = stream.aggregates(lo, hi, victims=victims, keep=victims)
                per_thread = agg.cpu_by_thread()
                # the oracle
                assert {r["tid"]: (r["cpu_ns"], r["wait_cpu_ns"]) for r in per_thread.to_pylist()} == \
                    {t: v for t, v in oracle.cpu_per_thread(lo, hi).items()}
                assert {r["cpu"]: (r["busy_ns"], r["idle_ns"], r["known_ns"]) for r in agg.cpu_by_cpu().to_pylist()} \
                    == oracle.per_cpu(lo, hi)
                assert {r["preemptor_tid"]: (r["ns"], r["victim_tids"]) for r in agg.preemption().to_pylist()} \
                    == oracle.preemption(victims, lo, hi)
                # the model, table for table
                assert per_thread.to_pylist() == model.cpu_by_thread(lo, hi).to_pylist()
                assert agg.cpu_by_cpu().to_pylist() == model.cpu_by_cpu(lo, hi).to_pylist()
                assert agg.cpu_by_process().to_pylist() == model.cpu_by_process(lo, hi).to_pylist()
                assert agg.preemption().to_pylist() == model.preemption(victims, lo, hi).to_pylist()
            states = model.thread_states()
            kept = states.filter(pc.is_in(states["tid"], pa.array(victims, pa.int64())))
            assert agg.thread_states().to_pylist() == kept.to_pylist()
            assert [(r["state"], r["start"], r["end"]) for r in agg.thread_states().to_pylist()] == \
                [(s, a, b) for t in sorted(victims) for s, a, b, _ in oracle.states.get(t, [])]
            # names: `how` left out, the model orders a switch and another event naming a thread
            # at the same instant either way
            names = model.name_changes()
            names = names.filter(pc.is_in(names["tid"], pa.array(victims, pa.int64())))
            assert stream.name_changes(victims).drop_columns(["how"]).to_pylist() == \
                names.drop_columns(["how"]).to_pylist()
        assert [(r["cpu"], r["ts"], r["at"], r["prev_tid"], r["next_tid"]) for r in stream.missed_switches().to_pylist()] \
            == sorted(oracle.missed) == [(r["cpu"], r["ts"], r["at"], r["prev_tid"], r["next_tid"])
                                         for r in model.missed_switches().to_pylist()]
        whole = agg.time_in_state()
        assert whole == {t: d for t, d in oracle.time_in_state().items() if d}
        assert stream.threads().to_pylist() == model.threads().to_pylist()
    finally:
        stream.close()
        model.con.close()


def test_many_threads_equals_oracle_and_model(many_threads):
    (host,) = kernel_hosts(many_threads)
    _check_host(many_threads, host, ["multithread", "lttng%"])


def test_tiny_batches_and_log_cross_every_boundary(many_threads, monkeypatch):
    """Batches of 997 rows and a 2-interval preemption log (grown and trimmed thousands of
    times) give the same sums as one batch."""
    (host,) = kernel_hosts(many_threads)
    stream = KernelStream(many_threads, host)
    victims = stream.thread_tids("multithread")
    ref = stream.aggregates(victims=victims)
    monkeypatch.setattr(ks, "BATCH_ROWS", 997)
    monkeypatch.setattr(ks, "LOG_START", 2)
    small = stream.aggregates(victims=victims)
    for table in ("cpu_by_cpu", "cpu_by_thread", "preemption"):
        assert getattr(small, table)().to_pylist() == getattr(ref, table)().to_pylist(), table
    assert small.time_in_state() == ref.time_in_state()
    stream.close()


def test_rotation_trace_equals_oracle_and_model(rotation):
    (host,) = kernel_hosts(rotation)
    _check_host(rotation, host, ["%"])
    # synchronized time (a clock transform with drift, as `stacklens sync` stores): the stream
    # is ordered and clipped on the transformed timestamps like everything else
    rotation.set_clocks({host: ClockTransform(offset_ns=-12_345_678, drift=-3.7e-5, base_ns=1_571_261_796_000_000_000,
                                              quality="accurate", reference="elsewhere")})
    try:
        _check_host(rotation, host, ["%"])
    finally:
        (rotation.root / "clocks.json").unlink()


def test_ftrace_equals_oracle_and_model(ftrace):
    (host,) = kernel_hosts(ftrace)
    _check_host(ftrace, host, ["sh", "%"])


def test_bad_ids_never_reach_compiled_code():
    n = 3
    ok = dict(ts=np.arange(n, dtype=np.int64), kind=np.zeros(n, np.int8), cpu_i=np.zeros(n, np.int64),
              cpu_raw=np.zeros(n, np.int32), cpu_ok=np.ones(n, np.uint8), a=np.ones(n, np.int64),
              b=np.zeros(n, np.int64), entered=np.zeros(n, np.int8))
    ks._check(n, *ok.values(), tid_room=2, cpu_room=1)
    for key, bad in [("a", np.array([1, 2, 1])), ("b", np.array([-2, 0, 0])), ("cpu_i", np.array([0, 1, 0])),
                     ("kind", np.array([0, 3, 0], np.int8)), ("entered", np.array([0, 6, 0], np.int8)),
                     ("ts", np.zeros(2, np.int64))]:
        with pytest.raises(StacklensError):
            ks._check(n, *{**ok, key: bad}.values(), tid_room=2, cpu_room=1)


def test_sort_out_of_memory_is_one_line(many_threads, monkeypatch):
    """The ordered stream failing (here DuckDB's sort given 4 MB) is one error naming the host."""
    (host,) = kernel_hosts(many_threads)
    monkeypatch.setattr(ks, "SORT_MEMORY", "4MB")
    stream = KernelStream(many_threads, host)
    try:
        with pytest.raises(StacklensError, match=f"host '{host}'.*Out of Memory") as e:
            stream.aggregates()
        assert "\n" not in str(e.value)
    finally:
        stream.close()


def test_names_given_at_one_instant_follow_the_trace(tmp_path):
    """ftrace's times are microseconds: a thread can be switched in as `sh` and exec `sleep`
    within one (CI's recording had such a pair, and the model's order of the two was DuckDB's
    choice). Names given at one instant are ordered as the trace gives them, in the
    whole-host model and in the stream alike. The real thing cannot be asked for such a
    tie: these lines are written in the format of this machine's recordings."""
    head = ("# tracer: nop\n#\n# entries-in-buffer/entries-written: 5/5   #P:2\n#\n"
            "#           TASK-PID       TGID    CPU#  |||||  TIMESTAMP  FUNCTION\n"
            "#              | |           |       |   |||||     |         |\n")
    body = [
        "          <idle>-0       (-------) [000] d..2.  100.000001: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=sh next_pid=700 next_prio=120",
        "           sleep-700     (    700) [000] .....  100.000001: sched_process_exec: filename=/usr/bin/sleep pid=700 old_pid=700",
        "          <idle>-0       (-------) [001] d..2.  100.000002: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=sh next_pid=701 next_prio=120",
        "           sleep-700     (    700) [000] d..2.  100.000009: sched_switch: prev_comm=sleep prev_pid=700 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120",
        "              sh-701     (    701) [001] d..2.  100.000009: sched_switch: prev_comm=sh prev_pid=701 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120",
    ]
    trace = tmp_path / "tie" / "trace.txt"
    trace.parent.mkdir()
    trace.write_text(head + "\n".join(body) + "\n")
    store = Store(tmp_path / "s", create=True)
    res = ingest(store, [trace], host="here")
    assert [r.status for r in res] == ["ingested"] and res[0].rows == 5, res
    x = store.connect().execute("SELECT min(ts) FROM events").fetchone()[0]
    model = KernelModel(store, "here")
    names = [(r["name"], r["since"] - x) for r in model.name_changes().to_pylist() if r["tid"] == 700]
    stream = KernelStream(store, "here")
    try:
        streamed = [(r["name"], r["since"] - x) for r in stream.name_changes([700]).to_pylist()]
    finally:
        stream.close()
    assert names == [("sh", 0), ("sleep", 0)]  # switched in as sh, then the exec, same µs
    assert streamed == names
