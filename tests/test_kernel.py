"""Kernel models and commands on real LTTng kernel traces, against independent oracles:
babeltrace2's own text output (per-thread CPU time computed here from its sched_switch lines)
and Trace Compass's syscall-latency count on bug446190."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import need_data, need_program
from stacklens.models.kernel import KernelModel, kernel_hosts
from stacklens.store import Store
from stacklens.store.ingest import ingest

ROOT = Path(__file__).resolve().parent.parent


def _store_of(tmp_path_factory, *parts: str) -> Store:
    trace = need_data(*parts)
    store = Store(tmp_path_factory.mktemp("kstore") / "s", create=True)
    ingest(store, [trace])
    return store


@pytest.fixture(scope="module")
def many_threads(tmp_path_factory) -> Store:
    return _store_of(tmp_path_factory, "tracecompass", "many-threads")


@pytest.fixture(scope="module")
def bug446190(tmp_path_factory) -> Store:
    return _store_of(tmp_path_factory, "tracecompass", "bug446190")


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory) -> Store:
    """many-threads and bug446190 in one store: two hosts with kernel events."""
    store = Store(tmp_path_factory.mktemp("kstore2") / "s", create=True)
    ingest(store, [need_data("tracecompass", "many-threads"), need_data("tracecompass", "bug446190")])
    return store


_LINE = re.compile(r"^\[(\d+)\.(\d{9})\] \S+ \S+ (\S+): \{ cpu_id = (\d+) \}, \{ (.*) \}$")


@functools.cache
def _bt2_cpu_time(trace: Path) -> tuple[dict[int, int], int]:
    """Per-tid CPU time from babeltrace2's text: on each CPU a thread runs from the
    sched_switch that names it next_tid to the next sched_switch on that CPU; the last one
    runs to the last event of the trace, and the first one's prev_tid ran since the first event
    of the trace. Idle (tid 0) is left out."""
    bt2 = need_program("babeltrace2")
    text = subprocess.run([bt2, "--clock-seconds", str(trace)], capture_output=True, text=True,
                          timeout=120, check=True).stdout
    running: dict[int, tuple[int, int]] = {}
    cpu_time: dict[int, int] = defaultdict(int)
    first_ts, last_ts = None, 0
    switches = 0
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        ts = int(m.group(1)) * 1_000_000_000 + int(m.group(2))
        last_ts = max(last_ts, ts)
        first_ts = ts if first_ts is None else min(first_ts, ts)
        if m.group(3) != "sched_switch":
            continue
        switches += 1
        cpu = int(m.group(4))
        next_tid = int(re.search(r"next_tid = (\d+)", m.group(5)).group(1))
        if cpu in running:
            tid, since = running[cpu]
            cpu_time[tid] += ts - since
        else:
            prev_tid = int(re.search(r"prev_tid = (\d+)", m.group(5)).group(1))
            cpu_time[prev_tid] += ts - first_ts
        running[cpu] = (next_tid, ts)
    for tid, since in running.values():
        cpu_time[tid] += last_ts - since
    cpu_time.pop(0, None)
    assert switches == 28325  # the trace's sched_switch count (catalogued with the data)
    return dict(cpu_time), last_ts


def test_many_threads_cpu_time_matches_babeltrace2(many_threads):
    trace = need_data("tracecompass", "many-threads")
    expected, last_ts = _bt2_cpu_time(trace)
    (host,) = kernel_hosts(many_threads)
    model = KernelModel(many_threads, host)
    assert model.span.end == last_ts
    ours = {r["tid"]: r["cpu_ns"] for r in model.cpu_by_thread().to_pylist() if r["cpu_ns"]}
    assert len(expected) > 8000  # the trace's 8,000 short-lived threads and the rest
    assert ours == expected


def test_many_threads_states_never_overlap(many_threads):
    (host,) = kernel_hosts(many_threads)
    model = KernelModel(many_threads, host)
    states = model.thread_states().to_pylist()
    assert {s["state"] for s in states} >= {"running", "runnable", "blocked", "unknown"}
    # one state at a time per thread
    last_end: dict[int, int] = {}
    for s in states:
        assert s["end"] > s["start"]
        assert s["start"] >= last_end.get(s["tid"], s["start"]), s
        last_end[s["tid"]] = s["end"]
    # one running thread at a time per CPU, from the per-thread state machine itself
    per_cpu: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for s in states:
        if s["state"] == "running":
            per_cpu[s["cpu"]].append((s["start"], s["end"], s["tid"]))
    assert len(per_cpu) == 8
    for cpu, spans in per_cpu.items():
        spans.sort()
        for (a0, a1, ta), (b0, b1, tb) in zip(spans, spans[1:]):
            assert b0 >= a1, f"cpu {cpu}: tid {ta} [{a0},{a1}) overlaps tid {tb} [{b0},{b1})"
    # running time from the state machine equals running time from the CPU view
    run_by_tid: dict[int, int] = defaultdict(int)
    for s in states:
        if s["state"] == "running":
            run_by_tid[s["tid"]] += s["end"] - s["start"]
    cpu_view = {r["tid"]: r["cpu_ns"] for r in model.cpu_by_thread().to_pylist() if r["cpu_ns"]}
    assert dict(run_by_tid) == cpu_view


def test_many_threads_cpu_range_and_process(many_threads):
    (host,) = kernel_hosts(many_threads)
    model = KernelModel(many_threads, host)
    lo, hi = model.span.start, model.span.end
    mid = (lo + hi) // 2
    whole = {r["tid"]: r["cpu_ns"] for r in model.cpu_by_thread().to_pylist()}
    first = {r["tid"]: r["cpu_ns"] for r in model.cpu_by_thread(lo, mid).to_pylist()}
    second = {r["tid"]: r["cpu_ns"] for r in model.cpu_by_thread(mid, hi).to_pylist()}
    for tid, ns in whole.items():
        assert first.get(tid, 0) + second.get(tid, 0) == ns
    per_cpu = model.cpu_by_cpu().to_pylist()
    assert len(per_cpu) == 8
    assert sum(c["busy_ns"] for c in per_cpu) == sum(whole.values())
    procs = {r["process"]: r for r in model.cpu_by_process().to_pylist()}
    # the workload's 8,000 threads are forked by one process (pid from sched_process_fork)
    assert procs["multithread"]["threads"] > 8000


def test_bug446190_syscall_segments_match_trace_compass(bug446190):
    (host,) = kernel_hosts(bug446190)
    segs = KernelModel(bug446190, host).syscalls()
    assert segs.num_rows == 1801  # Trace Compass's count on the same trace
    assert min(segs.column("duration").to_pylist()) >= 0


def test_preemption_and_commands(many_threads):
    store = str(many_threads.root)
    out = subprocess.run([sys.executable, "-m", "stacklens.cli", "preemption", "--proc", "multithread",
                          "--store", store, "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["hosts"][0]
    assert report["waited_ns"] > 0
    ranked = [p["ns"] for p in report["preemptors"]]
    assert ranked and ranked == sorted(ranked, reverse=True)
    for cmd in (["cpu"], ["threads", "--proc", "multithread"], ["syscalls"], ["io"]):
        out = subprocess.run([sys.executable, "-m", "stacklens.cli", *cmd, "--store", store, "--json"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, (cmd, out.stderr)
        assert json.loads(out.stdout)["hosts"][0]["host"]
    bad = subprocess.run([sys.executable, "-m", "stacklens.cli", "cpu", "--store", store, "--host", "nohost"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "nohost" in bad.stderr and "Traceback" not in bad.stderr


def _hostname(trace: Path) -> str:
    text = (trace / "metadata").read_bytes().decode("latin-1")
    return re.search(r'hostname = "([^"]+)"', text).group(1)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stacklens.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_two_hosts_selection_and_typed_json(two_hosts):
    store = str(two_hosts.root)
    trace = need_data("tracecompass", "many-threads")
    mt_host = _hostname(trace)
    other = _hostname(need_data("tracecompass", "bug446190"))
    assert sorted(kernel_hosts(two_hosts)) == sorted([mt_host, other])
    # one host's CPU times are unchanged by the other host in the store (oracle: babeltrace2)
    expected, _ = _bt2_cpu_time(trace)
    out = _cli("cpu", "--store", store, "--host", mt_host, "--limit", "0", "--json")
    assert out.returncode == 0, out.stderr
    (h,) = json.loads(out.stdout)["hosts"]
    assert h["host"] == mt_host
    assert {r["tid"]: r["cpu_ns"] for r in h["threads"] if r["cpu_ns"]} == expected
    for r in h["threads"]:
        assert type(r["tid"]) is int and type(r["cpu_ns"]) is int and type(r["wait_cpu_ns"]) is int, r
        assert r["pid"] is None or type(r["pid"]) is int
    for c in h["cpus"]:
        assert all(type(c[k]) is int for k in ("cpu", "busy_ns", "idle_ns", "known_ns")) and type(c["usage"]) is float
    # without --host, every host is reported, each under its name
    out = _cli("cpu", "--store", store, "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(h["host"] for h in json.loads(out.stdout)["hosts"]) == sorted([mt_host, other])
    # a tid means nothing without its host: one line naming the hosts, no traceback
    bad = _cli("threads", "--store", store, "--tid", "1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    (line,) = bad.stderr.strip().splitlines()
    assert mt_host in line and other in line and "--host" in line
    out = _cli("threads", "--store", store, "--tid", "1", "--host", other, "--json")
    assert out.returncode == 0, out.stderr
    (h,) = json.loads(out.stdout)["hosts"]
    assert [t["tid"] for t in h["threads"]] == [1]
    assert all(type(v) is int for v in h["threads"][0]["time_in_state_ns"].values())
    assert h["states"] and all(s["tid"] == 1 and type(s["start"]) is int and type(s["end"]) is int
                               for s in h["states"])
    # preemption over both hosts: the process is on one of them only
    out = _cli("preemption", "--store", store, "--proc", "multithread", "--json")
    assert out.returncode == 0, out.stderr
    hosts = {h["host"]: h for h in json.loads(out.stdout)["hosts"]}
    assert hosts[other]["threads"] == [] and len(hosts[mt_host]["threads"]) > 8000
    assert all(type(p["ns"]) is int and type(p["preemptor_tid"]) is int and
               all(type(v) is int for v in p["victim_tids"]) for p in hosts[mt_host]["preemptors"])
    bad = _cli("preemption", "--store", store, "--proc", "no-such-process")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    (line,) = bad.stderr.strip().splitlines()
    assert "no-such-process" in line and mt_host in line and other in line


def test_many_threads_names_match_babeltrace2(many_threads):
    """Every name a thread had (sched_switch comms, fork, exec, statedump), per tid, equals the
    names babeltrace2's text shows for that tid; the last change is the thread's current name."""
    bt2 = need_program("babeltrace2")
    text = subprocess.run([bt2, str(need_data("tracecompass", "many-threads"))], capture_output=True,
                          text=True, timeout=120, check=True).stdout
    pairs = {"sched_switch": [("prev_tid", "prev_comm"), ("next_tid", "next_comm")],
             "sched_process_fork": [("child_tid", "child_comm")],
             "lttng_statedump_process_state": [("tid", "name")]}
    expected: dict[int, set[str]] = defaultdict(set)
    for line in text.splitlines():
        name = line.split(" ", 4)[3].rstrip(":") if line.startswith("[") else ""
        for tid_key, name_key in pairs.get(name, []):
            tid = re.search(rf"\b{tid_key} = (\d+)", line)
            comm = re.search(rf'\b{name_key} = "([^"]*)"', line)
            if tid and comm and comm.group(1) not in ("<...>", "<idle>"):
                expected[int(tid.group(1))].add(comm.group(1))
        if name == "sched_process_exec":
            tid = re.search(r"\btid = (\d+)", line)
            path = re.search(r'\bfilename = "([^"]*)"', line)
            if tid and path:
                expected[int(tid.group(1))].add(path.group(1).rsplit("/", 1)[-1])
    (host,) = kernel_hosts(many_threads)
    model = KernelModel(many_threads, host)
    ours: dict[int, set[str]] = defaultdict(set)
    last: dict[int, str] = {}
    for r in model.name_changes().to_pylist():  # ordered by tid, since
        ours[r["tid"]].add(r["name"])
        last[r["tid"]] = r["name"]
    assert len(expected) > 8000 and dict(ours) == dict(expected)
    current = {r["tid"]: r["name"] for r in model.threads().to_pylist()}
    assert current == last
