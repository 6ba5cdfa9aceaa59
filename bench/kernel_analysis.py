"""Kernel analysis (thread states + CPU usage) on ≥ 5 M events vs `babeltrace2 -o dummy`
(its bare decode of the same input), measured in the same run.

Input: the many-threads kernel trace (240,644 events, 8 CPUs) copied N times (default 21 ≈
5.05 M events) as N distinct traces: each copy gets its own trace UUID (in the metadata and in
every packet header) and host name, because babeltrace2 merges traces sharing a UUID (two
symlinked copies decode as one) and our ingest skips content it already holds.
Figures (each in a fresh child process):
  - babeltrace2 -o dummy once per trace, summed (the peer), and over the N traces in one run
    (printed for reference: muxing N x 8 streams makes it several times slower);
  - ours, analysis only: per host, thread states + CPU usage per thread and per CPU from the
    store (DuckDB over Parquet);
  - ours, ingest + analysis (the whole path from the trace files; ingest is the CTF reader's).
Each is timed by wall clock and by CPU time (the child's user + system, all its threads): on
this shared 2-CPU machine wall time includes waiting for the CPUs, CPU time does not. The
verdict is printed for both, for analysis only and for ingest + analysis.
usage: python bench/kernel_analysis.py [COPIES]
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("STACKLENS_DATA", ROOT.parent / "shared" / "data"))
TRACE = DATA / "tracecompass" / "many-threads"
EVENTS_PER_COPY = 240_644
TIMEOUT = 1800


def make_copies(out: Path, copies: int) -> list[Path]:
    """N distinct traces (own UUID and host each): bench/distinct_traces.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from distinct_traces import distinct_copies
    return distinct_copies(TRACE, out, copies)


def analyse(store_root: str) -> int:
    from stacklens.models.kernel import KernelModel, kernel_hosts
    from stacklens.store import Store
    store = Store(store_root)
    rows = 0
    for host in kernel_hosts(store):
        m = KernelModel(store, host)
        rows += m.thread_states().num_rows + m.cpu_by_thread().num_rows + m.cpu_by_cpu().num_rows
    return rows


def ingest_all(store_root: str, paths: list[str]) -> int:
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    return sum(r.rows for r in ingest(Store(store_root, create=True), [Path(p) for p in paths]))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(argv: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child and its threads, stdout). CPU time is what the comparison
    can rely on when other work shares the machine's CPUs: wall time then includes waiting."""
    c0, t0 = _children_cpu(), time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if out.returncode != 0:
        raise SystemExit(f"bench child failed: {out.stderr.strip()[-2000:]}")
    return wall, cpu, out.stdout.strip()


def _child(code: str) -> tuple[float, float, str]:
    return _timed([sys.executable, "-c", code])


def main() -> int:
    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    bt2 = shutil.which("babeltrace2")
    if bt2 is None or not TRACE.exists():
        print("needs babeltrace2 and the many-threads trace (../shared/data)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kernel-bench-"))
    try:
        paths = make_copies(work / "traces", copies)
        events = copies * EVENTS_PER_COPY
        store = str(work / "store")
        load_before = os.getloadavg()[0]
        # babeltrace2 given the N traces at once muxes all N x 8 streams into one timeline, and
        # that costs it far more than N separate decodes (measured: 0.23 s CPU for one copy,
        # 33 s for 21 together); the stricter peer is the sum of one run per trace
        w_bt2_together, c_bt2_together, _ = _timed([bt2, "-o", "dummy", *map(str, paths)])
        w_bt2 = c_bt2 = 0.0
        for p in paths:
            w, c, _ = _timed([bt2, "-o", "dummy", str(p)])
            w_bt2, c_bt2 = w_bt2 + w, c_bt2 + c
        w_ingest, c_ingest, n = _child(f"import sys; sys.path.insert(0, 'bench'); from kernel_analysis import ingest_all; "
                                       f"print(ingest_all({store!r}, {[str(p) for p in paths]!r}))")
        assert int(n) == events, (n, events)
        w_analysis, c_analysis, _ = _child(f"import sys; sys.path.insert(0, 'bench'); from kernel_analysis import analyse; "
                                           f"print(analyse({store!r}))")
        goal = 2.0

        def verdict(ratio: float) -> str:
            return "MEETS the goal" if ratio <= goal else "does NOT meet the goal"

        print(f"input: {copies} copies of many-threads = {events:,} events, {copies} hosts; "
              f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
        print(f"{'':37s} {'wall s':>8s} {'ratio':>7s}   {'CPU s':>8s} {'ratio':>7s}")
        print(f"{'babeltrace2, all traces in one run':37s} {w_bt2_together:8.2f} {w_bt2_together / w_bt2:6.2f}x   "
              f"{c_bt2_together:8.2f} {c_bt2_together / c_bt2:6.2f}x   (muxes every stream: not the peer)")
        rows = [("babeltrace2, one run per trace (peer)", w_bt2, c_bt2),
                ("ours, analysis only (states + CPU)", w_analysis, c_analysis),
                ("ours, ingest alone", w_ingest, c_ingest),
                ("ours, ingest + analysis", w_ingest + w_analysis, c_ingest + c_analysis)]
        for label, w, c in rows:
            print(f"{label:37s} {w:8.2f} {w / w_bt2:6.2f}x   {c:8.2f} {c / c_bt2:6.2f}x")
        print(f"babeltrace2: {events / w_bt2 / 1e6:.2f} M events/s wall, {events / c_bt2 / 1e6:.2f} M events/s CPU")
        print(f"goal: kernel analysis <= {goal:g}x babeltrace2's bare decode of the same events (peer: one run per trace)")
        for label, w, c in rows[1:4:2]:
            print(f"  {label}: {verdict(w / w_bt2)} by wall time ({w / w_bt2:.2f}x), "
                  f"{verdict(c / c_bt2)} by CPU time ({c / c_bt2:.2f}x)")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _figures import figure, report
        report("kernel_analysis", [
            figure(f"{label} / babeltrace2 ({how})", round(v, 2), "x", goal, better="lower")
            for label, w, c in rows[1:4:2] for how, v in (("wall", w / w_bt2), ("CPU", c / c_bt2))])
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
