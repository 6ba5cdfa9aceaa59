"""bench: web UI view query latency on a >= 10 M-event store (p50/p95; goal < 200 ms).

Builds a store of N synthetic kernel-like events (2 hosts, sched_switch-shaped rows, sorted by
time within each Parquet file as ingest writes them), then times the UI's time-window query
with level of detail (events per host/layer and pixel, 1000 px) over random windows from 1 ms
to the full span. Wide windows are answered from per-host/layer 1 ms buckets stored next to the
events (built once, timed separately); narrow ones from the events. Each answer's total is
checked against an exact count over the events. Peer: the same aggregation over the whole table with no window (what a
viewer without windowed queries pays for every redraw), measured in the same run.

    python bench/view_query.py [--events 10000000] [--queries 60]
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
import pyarrow.parquet as pq

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
        d = root / "events" / f"host={host}" / "layer=kernel"
        d.mkdir(parents=True)
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
            pq.write_table(table, d / f"bench{h}-{i // PER_FILE:05d}.parquet", row_group_size=131_072)
    return store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=60)
    args = ap.parse_args()
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
