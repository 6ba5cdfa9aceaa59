"""CTF decoding throughput: our reader vs `babeltrace2 -o dummy`, same input, same run.

Input: the many-threads kernel trace (240,644 events, LTTng 2.8, 8 CPUs) seen N times
through symlinks (default 21 ≈ 5 M events), as one set of traces for both readers.
Figures: typed decode (CtfTrace.batches: per-class Arrow columns), full event rows
(CtfReader.tables: + name/layer/cpu and the JSON `fields`), babeltrace2's C core, and the
peak RSS of each. usage: python bench/ctf_decode.py [COPIES]
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


def ours_typed(paths: list[Path]) -> int:
    from stacklens.sources.ctf import open_trace
    n = 0
    for p in paths:
        t = open_trace(p)
        for _name, batch in t.batches():
            n += batch.num_rows
        t.close()
    return n


def ours_rows(paths: list[Path]) -> int:
    from stacklens.sources.ctf import CtfReader
    n = 0
    for p in paths:
        for tb in CtfReader(p).tables():
            n += tb.num_rows
    return n


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    if not TRACE.is_dir():
        print(f"ctf_decode: data missing: {TRACE}")
        return 1
    bt = shutil.which("babeltrace2")
    tmp = Path(tempfile.mkdtemp(prefix="ctf-bench-"))
    try:
        paths = []
        for i in range(copies):
            p = tmp / f"t{i:02d}"
            p.symlink_to(TRACE)
            paths.append(p)
        ours_typed(paths[:1])  # warm up: numba cache load, metadata parse (memoised)

        t0 = time.perf_counter()
        n_typed = ours_typed(paths)
        d_typed = time.perf_counter() - t0
        rss_typed = rss_mb()

        t0 = time.perf_counter()
        n_rows = ours_rows(paths)
        d_rows = time.perf_counter() - t0
        rss_rows = rss_mb()

        bt_rate = None
        if bt:
            t0 = time.perf_counter()
            subprocess.run([bt, str(tmp), "-o", "dummy"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            d_bt = time.perf_counter() - t0
            bt_rate = n_typed / d_bt
            bt_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    r_typed = n_typed / d_typed
    r_rows = n_rows / d_rows
    print(f"ctf_decode: input {n_typed:,} events ({copies} x many-threads)")
    if bt_rate:
        print(f"ctf_decode: babeltrace2 -o dummy: {bt_rate:,.0f} events/s ({d_bt:.2f} s), peak RSS {bt_rss:.0f} MB")
        print(f"ctf_decode: ours typed columns: {r_typed:,.0f} events/s ({d_typed:.2f} s), "
              f"ratio {r_typed / bt_rate:.2f}x babeltrace2, peak RSS {rss_typed:.0f} MB")
        print(f"ctf_decode: ours event rows + JSON: {r_rows:,.0f} events/s ({d_rows:.2f} s), "
              f"ratio {r_rows / bt_rate:.2f}x babeltrace2, peak RSS {rss_rows:.0f} MB")
    else:
        print(f"ctf_decode: ours typed columns: {r_typed:,.0f} events/s; babeltrace2 not installed")
        print(f"ctf_decode: ours event rows + JSON: {r_rows:,.0f} events/s")
    if n_rows != n_typed:
        print(f"ctf_decode: MISMATCH typed {n_typed} vs rows {n_rows}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
