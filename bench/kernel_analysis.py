"""Kernel analysis (thread states + CPU usage) on ≥ 5 M events vs `babeltrace2 -o dummy`
(its bare decode of the same input), measured in the same run.

Input: the many-threads kernel trace (240,644 events, 8 CPUs) copied N times (default 21 ≈
5.05 M events) as N distinct traces: each copy gets its own trace UUID (in the metadata and in
every packet header) and host name, because babeltrace2 merges traces sharing a UUID (two
symlinked copies decode as one) and our ingest skips content it already holds.
Figures (each in a fresh child process):
  - babeltrace2 -o dummy over the N traces;
  - ours, analysis only: per host, thread states + CPU usage per thread and per CPU from the
    store (DuckDB over Parquet);
  - ours, ingest + analysis (the whole path from the trace files; ingest is the CTF reader's).
usage: python bench/kernel_analysis.py [COPIES]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("STACKLENS_DATA", ROOT.parent / "shared" / "data"))
TRACE = DATA / "tracecompass" / "many-threads"
UUID = "69861fba-fe44-2b41-b75b-39acaf6930ec"
EVENTS_PER_COPY = 240_644
TIMEOUT = 1800


def make_copies(out: Path, copies: int) -> list[Path]:
    old = bytes.fromhex(UUID.replace("-", ""))
    paths = []
    for i in range(1, copies + 1):
        new_text = UUID[:-2] + f"{i:02x}"
        new = bytes.fromhex(new_text.replace("-", ""))
        d = out / f"mt{i:02d}"
        for f in TRACE.rglob("*"):
            if f.is_dir():
                continue
            data = f.read_bytes().replace(old, new)
            if f.name == "metadata":
                # same length: packetized metadata keeps its packet sizes
                data = data.replace(UUID.encode(), new_text.encode()).replace(
                    b'hostname = "wilbrod";', f'hostname = "wilbr{i:02d}";'.encode())
            target = d / f.relative_to(TRACE)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        paths.append(d)
    return paths


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


def _child(code: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"bench child failed: {out.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0, out.stdout.strip()


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
        t0 = time.perf_counter()
        subprocess.run([bt2, "-o", "dummy", *map(str, paths)], check=True, timeout=TIMEOUT)
        t_bt2 = time.perf_counter() - t0
        t_ingest, n = _child(f"import sys; sys.path.insert(0, 'bench'); from kernel_analysis import ingest_all; "
                             f"print(ingest_all({store!r}, {[str(p) for p in paths]!r}))")
        assert int(n) == events, (n, events)
        t_analysis, _ = _child(f"import sys; sys.path.insert(0, 'bench'); from kernel_analysis import analyse; "
                               f"print(analyse({store!r}))")
        print(f"input: {copies} copies of many-threads = {events:,} events, {copies} hosts")
        print(f"babeltrace2 -o dummy:            {t_bt2:7.2f} s  ({events / t_bt2 / 1e6:.2f} M events/s)")
        print(f"ours, analysis (states + CPU):   {t_analysis:7.2f} s  ratio {t_analysis / t_bt2:.2f}x babeltrace2")
        print(f"ours, ingest + analysis:         {t_ingest + t_analysis:7.2f} s  ratio "
              f"{(t_ingest + t_analysis) / t_bt2:.2f}x babeltrace2 (ingest alone {t_ingest:.2f} s)")
        print("goal: ≤ 2x babeltrace2")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
