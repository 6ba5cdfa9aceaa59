"""Run every benchmark under bench/ and print its figures (each prints its ratio to its peer,
measured in the same run). usage: python bench/run.py [NAME ...]"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONLY_BY_NAME = {"ctf_fuzz"}  # an hour-long fuzz, not a benchmark: run when named


def main() -> int:
    wanted = set(sys.argv[1:])
    benches = sorted(p for p in HERE.glob("*.py") if p.name != "run.py" and not p.name.startswith("_"))
    failed = 0
    for b in benches:
        if wanted and b.stem not in wanted:
            continue
        if not wanted and b.stem in ONLY_BY_NAME:
            continue
        print(f"== {b.stem}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(b)])
        print(f"== {b.stem}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.1f} s\n",
              flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
