"""--cluster: embedded vs a Dask LocalCluster of 1 and 2 worker processes, and a cost model for
N machines from the measured per-host task times and result sizes.

Input: N copies of many-threads made distinct (bench/kernel_analysis.make_copies: own trace
UUID and hostname, 240,644 events each, one host each) plus the synctraces pair (VM1, VM3) for
the cross-host step. Per mode, in a fresh store:
  - ingest: one task per part (embedded: the same per-part function in a loop);
  - per-host analysis: `cpu --by process` for every kernel host (one task per host);
  - sync: per-host send/receive events on the workers, matching + convex hull on the client;
  - diagnose: per-host facts (diagnose.rules.host_facts) on the workers, the rules and the
    ranking on the client (its serial part: the application-layer rules, clock sync).
Timed per mode (wall), per task (Dask's task stream: compute start → stop on the worker;
embedded: each call) and per result (pickled bytes that come back to the client). Workers are
warmed first (imports, compiled code loaded), and each mode's cluster start-up is printed
apart. On this 2-CPU machine two workers can at best halve the per-host part, and other jobs
share the CPUs: read the figures as measured under that load.

The cost model (README, "Running on a cluster"): with H hosts (or parts), M machines of w
workers, per-task time t, per-task overhead o (scheduling, transfer, measured as what the
1-worker run adds to the sum of its task times), result bytes b per task over a client link of
B bytes/s and a serial client part S (discovery, host list, the cross-host step):
    T(M) = S + ceil(H / (M w)) * t + H * (o + b / B)
usage: python bench/cluster.py [COPIES] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from kernel_analysis import DATA, TRACE, make_copies  # noqa: E402

LINK_BYTES_S = 125e6  # a 1 Gb/s client link, for the model (loopback here)


def _warm(root: str, part: Path) -> None:
    """Imports and the compiled decoder loaded in this process (a throwaway store)."""
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    import stacklens.views.kernel  # noqa: F401 - the per-host tasks' modules
    import stacklens.views.sync_report  # noqa: F401
    root = f"{root}-{os.getpid()}"
    ingest(Store(root, create=True), [part])
    shutil.rmtree(root, ignore_errors=True)


def run_mode(workers: int, paths: list[Path], work: Path) -> dict:
    from stacklens.cluster import close, partition_hosts, per_host
    from stacklens.cluster.ingest import ingest_on_cluster
    from stacklens.sources.bundle import discover
    from stacklens.store import Store
    from stacklens.store.ingest import ingest_part
    from stacklens.sync import sync_store
    from stacklens.views.kernel import cpu_host
    from stacklens.views.sync_report import sync_inputs_of_host
    import pyarrow as pa

    store_root = work / f"store-{workers}"
    out: dict = {"workers": workers}
    warm_part = DATA / "tracecompass" / "synctraces" / "scp_src"
    if workers == 0:
        _warm(str(work / "warm"), warm_part)
        store = Store(store_root, create=True)
        t0 = time.perf_counter()
        tasks = []
        for part in discover(paths):
            t = time.perf_counter()
            ingest_part(store, part)
            tasks.append(time.perf_counter() - t)
        out["ingest"] = (time.perf_counter() - t0, tasks)
        hosts = partition_hosts(store, "kernel")
        t0 = time.perf_counter()
        tasks, sizes = [], []
        for h in hosts:
            t = time.perf_counter()
            r = cpu_host(str(store_root), h, None, None, "process", 0)
            tasks.append(time.perf_counter() - t)
            sizes.append(len(pickle.dumps(r)))
        out["cpu"] = (time.perf_counter() - t0, tasks, sizes, 0.0)
        t0 = time.perf_counter()
        all_hosts = partition_hosts(store)
        found = [sync_inputs_of_host(str(store_root), h) for h in all_hosts]
        t = time.perf_counter()
        sync_store(store, pa.concat_tables([n for n, _ in found]), {h: s for h, (_, s) in zip(all_hosts, found)})
        out["sync"] = (time.perf_counter() - t0, [], [], time.perf_counter() - t)
        out["diagnose"] = run_diagnose(store, None)
        return out

    from distributed import Client, LocalCluster, get_task_stream
    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as lc, Client(lc) as c:
        c.run(_warm, str(work / "warm-w"), warm_part)
        out["startup"] = time.perf_counter() - t0
        addr = lc.scheduler_address
        store = Store(store_root, create=True)

        def stream_times(ts, prefix: str) -> list[float]:
            return [sum(s["stop"] - s["start"] for s in d["startstops"] if s["action"] == "compute")
                    for d in ts.data if str(d["key"]).startswith(prefix)]

        with get_task_stream(c) as ts:
            t0 = time.perf_counter()
            ingest_on_cluster(addr, store, paths)
            wall = time.perf_counter() - t0
        t = time.perf_counter()
        discover(paths)  # the client's own part of an ingest
        serial = time.perf_counter() - t
        hashing = sum(stream_times(ts, "source-id-"))  # parts of equal size hashed first
        times = stream_times(ts, "ingest-")
        out["ingest"] = (wall, [x + hashing / len(times) for x in times], [300] * len(times), serial)
        t = time.perf_counter()
        hosts = partition_hosts(store, "kernel")
        serial = time.perf_counter() - t
        with get_task_stream(c) as ts:
            t0 = time.perf_counter()
            results = per_host(addr, cpu_host, str(store_root), hosts, None, None, "process", 0)
            wall = time.perf_counter() - t0
        out["cpu"] = (wall, stream_times(ts, "cpu_host-"), [len(pickle.dumps(r)) for r in results], serial)
        with get_task_stream(c) as ts:
            t0 = time.perf_counter()
            all_hosts = partition_hosts(store)
            listing = time.perf_counter() - t0
            found = per_host(addr, sync_inputs_of_host, str(store_root), all_hosts)
            t = time.perf_counter()
            sync_store(store, pa.concat_tables([n for n, _ in found]), {h: s for h, (_, s) in zip(all_hosts, found)})
            wall = time.perf_counter() - t0
            cross = time.perf_counter() - t + listing  # the serial part: host list, matching, hulls
        out["sync"] = (wall, stream_times(ts, "sync_inputs_of_host-"),
                       [len(pickle.dumps(r)) for r in found], cross)
        with get_task_stream(c) as ts:
            wall, _, sizes, serial = run_diagnose(store, addr)
        out["diagnose"] = (wall, stream_times(ts, "host_facts-"), sizes, serial)
        close()
    return out


def run_diagnose(store, addr: str | None) -> tuple:
    """(wall, per-host times (embedded: each call), result sizes, the client's serial part):
    the per-host facts (one task per host on a cluster), then every rule and the ranking."""
    from stacklens.diagnose.findings import rank
    from stacklens.diagnose.rules import RULES, Context, host_facts
    from stacklens.cluster import partition_hosts
    ctx = Context(store, cluster=addr)
    t0 = time.perf_counter()
    times = []
    if addr is None:  # the embedded loop, timed per host (what Context.facts runs)
        facts = {}
        for h in partition_hosts(store):
            t = time.perf_counter()
            facts[h] = host_facts(store, h, bool(ctx.migrations))
            times.append(time.perf_counter() - t)
        ctx.facts = facts
    else:
        ctx.facts
    t = time.perf_counter()
    rank([f for r in RULES for f in r(ctx)])
    return (time.perf_counter() - t0, times, [len(pickle.dumps(f)) for f in ctx.facts.values()],
            time.perf_counter() - t)


def model(s: float, t: float, o: float, b: float, hosts: int, machines: int, w: int) -> float:
    return s + math.ceil(hosts / (machines * w)) * t + hosts * (o + b / LINK_BYTES_S)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("copies", nargs="?", type=int, default=4)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    if not TRACE.exists():
        print("needs the many-threads trace (../shared/data)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        paths = make_copies(work / "traces", args.copies) + [DATA / "tracecompass" / "synctraces"]
        load = os.getloadavg()[0]
        modes = [0] + [int(w) for w in args.workers.split(",")]
        runs = []
        for w in modes:
            with redirect_stdout(io.StringIO()):
                runs.append(run_mode(w, paths, work))
        print(f"input: {args.copies} copies of many-threads (240,644 events each) + synctraces (2 hosts); "
              f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
        print(f"{'mode':22s} {'start-up':>9s} {'ingest':>8s} {'cpu/host':>9s} {'sync':>8s} {'diagnose':>9s}   (wall s)")
        for r in runs:
            name = "embedded" if r["workers"] == 0 else f"{r['workers']} worker(s)"
            print(f"{name:22s} {r.get('startup', 0):9.2f} {r['ingest'][0]:8.2f} {r['cpu'][0]:9.2f} {r['sync'][0]:8.2f}"
                  f" {r['diagnose'][0]:9.2f}")
        print("per task (on the worker), result size back to the client:")
        for r in runs:
            name = "embedded" if r["workers"] == 0 else f"{r['workers']} worker(s)"
            for step in ("ingest", "cpu", "sync", "diagnose"):
                times = r[step][1]
                sizes = r[step][2] if len(r[step]) > 2 else []
                if not times:
                    continue
                print(f"  {name:12s} {step:7s} n={len(times):3d} mean {statistics.mean(times):6.3f} s "
                      f"max {max(times):6.3f} s" + (f"  result mean {statistics.mean(sizes) / 1e3:7.1f} kB "
                                                   f"max {max(sizes) / 1e3:7.1f} kB" if sizes else ""))
        one = next((r for r in runs if r["workers"] == 1), None)
        if one is None:
            return 0
        print(f"cost model T(M) = S + ceil(H/(M w)) t + H (o + b/B), B = {LINK_BYTES_S / 1e6:.0f} MB/s, "
              f"w = 8 workers/machine; inputs measured on the 1-worker run:")
        for step in ("ingest", "cpu", "sync", "diagnose"):
            wall, times, sizes, serial = one[step]
            t, b = statistics.mean(times), statistics.mean(sizes)
            o = max(0.0, (wall - sum(times) - serial) / len(times))
            print(f"  {step:6s}: t = {t:.3f} s/task, o = {o * 1e3:.0f} ms/task, b = {b / 1e3:.1f} kB, "
                  f"S = {serial:.3f} s ({len(times)} tasks, wall {wall:.2f} s; per-host share "
                  f"{sum(times) / wall:.0%}, serial client part {serial / wall:.0%})")
            for hosts in (100, 1000):
                figures = ", ".join(f"M={m}: {model(serial, t, o, b, hosts, m, 8):.1f} s" for m in (1, 10, 100))
                print(f"      H={hosts}: {figures}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
