"""bench: web UI view query latency on a >= 10 M-event store (p50/p95; goal < 200 ms).

Builds a store of N synthetic kernel-like events (2 hosts, sched_switch-shaped rows, sorted by
time within each Parquet file as ingest writes them), then times the UI's time-window query
with level of detail (events per host/layer and pixel, 1000 px) over random windows from 1 ms
to the full span. Wide windows are answered from per-host/layer 1 ms buckets stored next to the
events (built once, timed separately); narrow ones from the events. Each answer's total is
checked against an exact count over the events. Peer: the same aggregation over the whole table with no window (what a
viewer without windowed queries pays for every redraw), measured in the same run.

Kernel view (--part kernel): the many-threads LTTng trace ingested N times (default 21, 5.05 M
kernel events) under distinct host names; the web UI's kernel view (threads + CPUs with
preemption, 1000 px) over random windows, answered from the window (models/kernel_window.py)
vs the whole-model approach it replaced (build the host's KernelModel, then window its tables),
same run, same store.

    python bench/view_query.py [--events 10000000] [--queries 60] [--part all|density|kernel] [--kernel-copies 21]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from stacklens.store import Store
from stacklens.store.schema import EVENT_SCHEMA
from stacklens.views.web.data import WebData

T0 = 1_800_000_000_000_000_000
SPAN_NS = 600 * 1_000_000_000  # ten minutes of trace
PER_FILE = 1_000_000


def build(root: Path, n: int) -> Store:
    store = Store(root, create=True)
    rng = np.random.default_rng(7)
    hosts = ["compute-1", "compute-2"]
    for h, host in enumerate(hosts):
        writer = store.writer(f"bench{h}")  # files are visible once a manifest lists them
        per_host = n // len(hosts)
        ts_all = np.sort(rng.integers(T0, T0 + SPAN_NS, per_host, dtype=np.int64))
        for i in range(0, per_host, PER_FILE):
            ts = ts_all[i:i + PER_FILE]
            m = len(ts)
            cols = {
                "ts": ts, "host": pa.array([host] * m).dictionary_encode(), "layer": pa.array(["kernel"] * m).dictionary_encode(),
                "source": pa.array(["ftrace"] * m).dictionary_encode(),
                "name": pa.array(np.where(rng.random(m) < 0.7, "sched_switch", "sched_wakeup")).dictionary_encode(),
                "cpu": rng.integers(0, 8, m).astype(np.int32), "pid": rng.integers(1, 5000, m), "tid": rng.integers(1, 5000, m),
                "procname": pa.array(["qemu-system-x86"] * m).dictionary_encode(),
                "request_id": pa.nulls(m, pa.string()), "instance": pa.nulls(m, pa.string()),
                "fields": pa.array(['{"prev_state":"R"}'] * m), "src": pa.array([f"bench{h}"] * m).dictionary_encode(),
                "pos": np.arange(i, i + m, dtype=np.int64)}
            table = pa.table({f.name: cols[f.name] for f in EVENT_SCHEMA if f.name in cols})
            writer.write(table)
        writer.commit({"path": "bench", "format": "ftrace", "host": host, "layer": "kernel"})
    return store


def kernel_view(copies: int, queries: int) -> None:
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kernel_analysis import make_copies
    from stacklens.models.kernel import KernelModel, kernel_hosts
    from stacklens.store.ingest import ingest
    with tempfile.TemporaryDirectory(prefix="stacklens-bench-") as tmp:
        t = time.perf_counter()
        store = Store(Path(tmp) / "store", create=True)
        rows = sum(r.rows for r in ingest(store, make_copies(Path(tmp) / "traces", copies)))
        print(f"kernel store: {rows:,} events ({copies} hosts) ingested in {time.perf_counter() - t:.1f} s")
        data = WebData(store)
        host = kernel_hosts(store)[0]
        t0, t1 = data.con.execute("SELECT min(ts), max(ts) FROM events WHERE host = ?", [host]).fetchall()[0]
        span = t1 - t0
        rnd = random.Random(2)
        windows = []
        for _ in range(queries):
            width = int(10 ** rnd.uniform(5, np.log10(span)))  # 100 µs .. the whole trace
            start = rnd.randint(t0, t1 - width)
            windows.append((start, start + width))
        t = time.perf_counter()
        data.view("kernel", *windows[0], 1000)
        first = (time.perf_counter() - t) * 1e3
        lat, bars = [], 0
        for lo, hi in windows:
            t = time.perf_counter()
            out = data.view("kernel", lo, hi, 1000)
            lat.append((time.perf_counter() - t) * 1e3)
            bars = max(bars, len(out["bars"]))
        # peer: the whole-model approach (what _view_kernel did before): build the host's model
        # on first load, then window its tables with the same per-pixel grouping
        t = time.perf_counter()
        k = KernelModel(store, host)
        k._need("states")
        k._need("running")
        peer_first = (time.perf_counter() - t) * 1e3
        peer = []
        for lo, hi in windows:
            bucket = max(1, (hi - lo) // 1000)
            t = time.perf_counter()
            k.con.execute("""SELECT tid, state, min(greatest(start, $1)), max(least("end", $2)), count(*) FROM states
                             WHERE "end" > $1 AND start < $2 AND state IN ('running', 'runnable')
                             GROUP BY tid, state, (greatest(start, $1) - $1) // $3""", [lo, hi, bucket]).fetchall()
            k.con.execute("""SELECT cpu, arg_max(tid, least("end", $2) - greatest(start, $1)), min(greatest(start, $1)),
                             max(least("end", $2)), count(*) FROM running WHERE "end" > $1 AND start < $2 AND tid <> 0
                             GROUP BY cpu, (greatest(start, $1) - $1) // $3""", [lo, hi, bucket]).fetchall()
            peer.append((time.perf_counter() - t) * 1e3)
        p50, p95 = statistics.median(lat), statistics.quantiles(lat, n=20)[18]
        q50, q95 = statistics.median(peer), statistics.quantiles(peer, n=20)[18]
        print(f"kernel view from the window (1000 px, {queries} windows 100 us..whole trace, host {host}): "
              f"first load {first:.0f} ms, p50 {p50:.1f} ms, p95 {p95:.1f} ms, at most {bars} bars "
              f"(goal < 200 ms: {'met' if p95 < 200 else 'NOT met'})")
        print(f"peer (whole-host KernelModel): first load {peer_first:.0f} ms (build), then p50 {q50:.1f} ms, "
              f"p95 {q95:.1f} ms per window; first load peer/ours: {peer_first / first:.1f}x; "
              f"peer first load / our p95: {peer_first / p95:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--part", choices=["all", "density", "kernel"], default="all")
    ap.add_argument("--kernel-copies", type=int, default=21)
    args = ap.parse_args()
    if args.part in ("all", "kernel"):
        kernel_view(args.kernel_copies, args.queries)
    if args.part == "kernel":
        return
    with tempfile.TemporaryDirectory(prefix="stacklens-bench-") as tmp:
        t = time.perf_counter()
        store = build(Path(tmp) / "store", args.events)
        print(f"store: {args.events:,} events built in {time.perf_counter() - t:.1f} s")
        data = WebData(store)
        rnd = random.Random(1)
        t = time.perf_counter()
        data.density(T0, T0 + SPAN_NS)  # builds the stored buckets once and warms the metadata cache
        print(f"first query (stores the 1 ms buckets): {(time.perf_counter() - t) * 1e3:.0f} ms")
        lat = []
        worst = 0.0
        for _ in range(args.queries):
            width = int(10 ** rnd.uniform(6, np.log10(SPAN_NS)))  # 1 ms .. the full span
            start = rnd.randint(T0, T0 + SPAN_NS - width)
            t = time.perf_counter()
            rows = data.density(start, start + width, 1000)
            lat.append((time.perf_counter() - t) * 1e3)
            assert len(rows) <= 2 * (1000 + 2)
            exact = data.con.execute("SELECT count(*) FROM events_raw WHERE ts >= $1 AND ts < $2",
                                     [start, start + width]).fetchall()[0][0]
            got = sum(r[3] for r in rows)
            worst = max(worst, abs(got - exact) / max(exact, 1))
        peer = []
        for _ in range(max(5, args.queries // 10)):
            t = time.perf_counter()
            data.con.execute("SELECT host, layer, (ts - $1) // $2, count(*) FROM events_raw GROUP BY ALL",
                             [T0, SPAN_NS // 1000]).fetchall()
            peer.append((time.perf_counter() - t) * 1e3)
        p50, p95 = statistics.median(lat), statistics.quantiles(lat, n=20)[18]
        peer50, peer95 = statistics.median(peer), max(peer)
        print(f"view query (window + level of detail, 1000 px): p50 {p50:.1f} ms, p95 {p95:.1f} ms "
              f"(goal < 200 ms: {'met' if p95 < 200 else 'NOT met'})")
        print(f"largest error of an answer's total vs an exact count: {worst:.4%}")
        print(f"peer (whole-table aggregation per redraw): p50 {peer50:.1f} ms; ratio peer/ours at p50: {peer50 / p50:.1f}x, peer's worst {peer95:.1f} ms vs our p95: {peer95 / p95:.1f}x")


if __name__ == "__main__":
    main()
