"""bench: web UI view query latency on a >= 10 M-event store (p50/p95; goal < 200 ms).

Builds a store of N synthetic kernel-like events (2 hosts, sched_switch-shaped rows, sorted by
time within each Parquet file as ingest writes them), then times the UI's time-window query
with level of detail (events per host/layer and pixel, 1000 px) over random windows from 1 ms
to the full span. Wide windows are answered from per-host/layer 1 ms buckets stored next to the
events (built once, timed separately); narrow ones from the events. Each answer's total is
checked against an exact count over the events. Peer: the same aggregation over the whole table with no window (what a
viewer without windowed queries pays for every redraw), measured in the same run.

Kernel view (--part kernel; goal: first load <= 200 ms, p95 <= 50 ms on 5 M events): ONE host
holding N distinct copies of the many-threads LTTng trace one after the other (default 21:
5.05 M kernel events over 10.4 s; the store is built once and reused); the web UI's kernel
view (CPUs, their IRQs, 50 thread lanes with states and system calls; --kernel-px, the UI asks
~500) on its first load (the whole trace) and over random windows, answered from the host's
stored whole-host intervals (models/kernel_intervals.py, built once: build time printed) and
from the window (models/kernel_window.py: the peer, and what the UI answers while the build
runs). Wall and CPU time (this process, all threads) per request: on a shared machine wall time
includes waiting for a CPU. JSON encoding of the first load is printed apart.

    python bench/view_query.py [--events 10000000] [--queries 60] [--part all|density|kernel] [--kernel-copies 21] [--kernel-px 500]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figures import figure, report  # noqa: E402
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


ONE_HOST = "bench-one-host"
COPY_SHIFT_NS = 500_000_000  # many-threads spans 0.43 s: copies 0.5 s apart follow each other


def one_host_store(copies: int) -> Store:
    """One host's kernel trace of copies x 240,644 events (21: 5.05 M events, 10.4 s): distinct
    copies of many-threads (own UUID, bench/distinct_traces.py), copy i's clock moved by
    i x 0.5 s, ingested under one host name. Built once under $TMPDIR/stacklens-bench, reused."""
    import shutil
    import subprocess
    from distinct_traces import distinct_copies
    from kernel_memory import TRACE, WORK, env, stacklens
    root = WORK / "kernel-stores" / f"one-host-s{copies:04d}"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        paths = distinct_copies(TRACE, WORK / "one-host-many-threads", copies, COPY_SHIFT_NS)
        t = time.perf_counter()
        subprocess.run([*stacklens(), "ingest", "-s", str(root), "--host", ONE_HOST, "--json", *map(str, paths)],
                       check=True, stdout=subprocess.DEVNULL, env=env())
        (root / ".complete").write_text(f"{copies} copies, host {ONE_HOST}\n")
        print(f"kernel store: {copies} copies ingested as one host in {time.perf_counter() - t:.1f} s")
    return Store(root)


def _timed(fn) -> tuple[float, float, object]:
    """(wall ms, CPU ms of this process — every thread, DuckDB's included —, result)."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3, out


def kernel_view(copies: int, queries: int, px: int) -> list[dict]:
    """The web UI's kernel view on one host of ~5 M kernel events, as the server computes it
    (WebData.view_json: the bars as columns, times from an origin): first load (the whole trace,
    what the UI asks first; after the UI's start work, and cold) and random windows (100 us .. the whole trace, log-uniform), from
    the host's stored whole-host intervals (what the UI answers once they exist) and from the
    window (what it answers while they are built), same windows, same process. JSON encoding
    (the server's: orjson, in its worker thread) is timed apart."""
    import shutil
    from _figures import figure
    from stacklens.models.kernel_intervals import KernelIntervals
    from stacklens.views.web.app import _json_bytes
    store = one_host_store(copies)
    events = store.connect(host=ONE_HOST, layer="kernel").execute("SELECT count(*) FROM events").fetchall()[0][0]
    shutil.rmtree(store.root / "summaries", ignore_errors=True)
    build_wall, build_cpu, _ = _timed(lambda: KernelIntervals.build(store, ONE_HOST))
    print(f"kernel view: {events:,} kernel events on one host ({copies} copies of many-threads in a row); "
          f"whole-host intervals built and stored in {build_wall / 1e3:.1f} s (CPU {build_cpu / 1e3:.1f} s), "
          f"once per store content, in the UI's background")
    # cold: a fresh WebData asked for the kernel view at once (opens the stored intervals first)
    cold = WebData(store, kernel_source="whole")
    cw, cc, _ = _timed(lambda: cold.view_json("kernel", None, None, px, host=ONE_HOST))
    print(f"kernel view, cold first load (no UI start work): {cw:.0f} ms (CPU {cc:.0f} ms)")
    res = {}
    for mode in ("whole", "window"):
        data = WebData(store, kernel_source=mode)
        if mode == "whole":  # what `stacklens ui` does at start, in the background (prepare_kernel)
            pw, pc, _ = _timed(lambda: (data.prepare_kernel(), data.prepared.join()))
            print(f"kernel view: UI start work (background: open + read the stored intervals, VM threads, "
                  f"processes) {pw:.0f} ms (CPU {pc:.0f} ms)")
        fw, fc, out = _timed(lambda: data.view_json("kernel", None, None, px, host=ONE_HOST))
        assert out["source"] == ("whole host" if mode == "whole" else "window") and out["columns"]["s"]
        ready = data.view_json("kernel", None, None, px, host=ONE_HOST)  # what the server encodes
        jw, jc, _ = _timed(lambda: _json_bytes(ready))
        t0, t1 = int(out["start"]), int(out["end"])  # view_json: strings (53-bit JavaScript numbers)
        rnd = random.Random(2)
        lat, cpu, bars = [], [], 0
        n = queries if mode == "whole" else max(10, queries // 3)  # the peer takes seconds per window
        for _ in range(n):
            width = int(10 ** rnd.uniform(5, np.log10(t1 - t0)))  # 100 us .. the whole trace
            lo = rnd.randint(t0, t1 - width)
            w, c, o = _timed(lambda: data.view_json("kernel", lo, lo + width, px, host=ONE_HOST))
            lat.append(w)
            cpu.append(c)
            bars = max(bars, len(o["columns"]["s"]))
        p95 = statistics.quantiles(lat, n=20)[18]
        c95 = statistics.quantiles(cpu, n=20)[18]
        res[mode] = (fw, fc, p95, c95)
        print(f"kernel view from {out['source']:10s} ({px} px): first load {fw:.0f} ms (CPU {fc:.0f} ms, "
              f"{len(out['columns']['s']):,} bars; + JSON {jw:.0f} ms, CPU {jc:.0f} ms); {n} windows: "
              f"p50 {statistics.median(lat):.1f} ms, p95 {p95:.1f} ms (CPU p50 {statistics.median(cpu):.1f}, "
              f"p95 {c95:.1f} ms), at most {bars:,} bars")
    (fw, fc, p95, c95), (ww, wc, wp95, wc95) = res["whole"], res["window"]
    print(f"kernel view: whole host vs window: first load {ww / fw:.1f}x faster (CPU {wc / fc:.1f}x), "
          f"p95 {wp95 / p95:.1f}x (CPU {wc95 / c95:.1f}x): the UI answers from the whole host once built")
    note = f"{events / 1e6:.2f} M events, one host; wall under load: see CPU"
    return [figure("kernel view first load", round(fw), "ms", 200, "lower", note),
            figure("kernel view first load, CPU", round(fc), "ms", 200, "lower", note),
            figure("kernel view window p95", round(p95, 1), "ms", 50, "lower", note),
            figure("kernel view window p95, CPU", round(c95, 1), "ms", 50, "lower", note),
            figure("kernel view first load, cold (no UI start work)", round(cw), "ms", None, "lower",
                   f"CPU {cc:.0f} ms"),
            figure("kernel view first load from the window (before the build)", round(ww), "ms", None, "lower",
                   f"peer; whole-host build {build_wall / 1e3:.1f} s once")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--part", choices=["all", "density", "kernel"], default="all")
    ap.add_argument("--kernel-copies", type=int, default=21)
    ap.add_argument("--kernel-px", type=int, default=500, help="the UI asks (plot width) / 2: ~500 px")
    args = ap.parse_args()
    figures = []
    if args.part in ("all", "kernel"):
        figures += kernel_view(args.kernel_copies, args.queries, args.kernel_px)
    if args.part == "kernel":
        report("view_query", figures)
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
        figures.append(figure("density view p95", round(p95, 1), "ms", 200, "lower", f"{args.events / 1e6:.0f} M events"))
    report("view_query", figures)


if __name__ == "__main__":
    main()
