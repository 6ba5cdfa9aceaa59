"""Benchmark: oslo.log ingest rate (records/s) against the I/O floor.

The peer is reading the same file line by line in Python without parsing: the least any
Python log reader must spend. Input: the loghub OpenStack log repeated to ≥ 1 M records
(with shifted days so timestamps stay increasing).

usage: python bench/log_ingest.py [--records N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "openstack" / "loghub" / "OpenStack_2k.log"


def make_input(dst: Path, records: int) -> int:
    lines = [ln + "\n" for ln in DATA.read_text().split("\n") if ln]
    n = 0
    with open(dst, "w") as f:
        day = dt.date(2017, 5, 16)
        while n < records:
            stamp = day.isoformat()
            for ln in lines:
                f.write(ln.replace("2017-05-16 ", stamp + " ", 1))
            n += len(lines)
            day += dt.timedelta(days=1)
    return n


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"bench/log_ingest: data missing: {DATA}")
    # "per core": the whole run on one CPU, Arrow's thread pools at one thread
    import os

    import pyarrow as pa
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    from stacklens.sources.base import ReadOptions
    from stacklens.sources.oslo_log import OsloLogReader
    from stacklens.store import Store
    from stacklens.store.ingest import ingest

    tmp = Path(tempfile.mkdtemp(prefix="stacklens-bench-"))
    try:
        path = tmp / "nova-all.log"
        n = make_input(path, args.records)

        def floor() -> None:
            with open(path, encoding="utf-8", errors="replace") as f:
                for _ in f:
                    pass

        def parse() -> None:
            rows = sum(t.num_rows for t in OsloLogReader(path, ReadOptions()).tables())
            assert rows == n, rows

        def full() -> None:
            d = tmp / "store"
            shutil.rmtree(d, ignore_errors=True)
            res = ingest(Store(d, create=True), [path])
            assert res[0].rows == n

        t_floor, t_parse, t_full = best_of(floor), best_of(parse), best_of(full)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"log_ingest: {n:,} records, {path.stat().st_size / 1e6:.0f} MB")
        print(f"log_ingest: I/O floor (python line loop)  {n / t_floor:12,.0f} records/s")
        print(f"log_ingest: stacklens parse               {n / t_parse:12,.0f} records/s  ratio vs floor {t_floor / t_parse:.2f}")
        print(f"log_ingest: stacklens ingest (to Parquet) {n / t_full:12,.0f} records/s  ratio vs floor {t_floor / t_full:.2f}  (goal ≥ 300,000/s per core)")
        print(f"log_ingest: peak RSS {rss:,.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
