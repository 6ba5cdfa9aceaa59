"""Run every benchmark under bench/ and print one table of every figure against its goal.

Each bench prints its own lines (shown as they come) and hands its figures over as one
`BENCH-FIGURES {json}` line (bench/_figures.py); the table at the end lists each figure, its
goal and `met` / `not met`, with the machine's load average when the bench ended (on a shared
machine wall-time figures include waiting for a CPU). Helper modules (`_*.py`, and modules
declaring `IS_HELPER = True`) are not benches.
usage: python bench/run.py [NAME ...] [--json FILE]   (NAME: a bench's file stem)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _figures import MARK, met  # noqa: E402


def benches() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if p.name != "run.py" and not p.name.startswith("_")
                  and "\nIS_HELPER = True" not in p.read_text())


def run_one(b: Path) -> tuple[int, list[dict], str]:
    proc = subprocess.Popen([sys.executable, str(b)], stdout=subprocess.PIPE, text=True, bufsize=1)
    figures: list[dict] = []
    load = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(MARK):
            payload = json.loads(line[len(MARK):])
            figures += payload["figures"]
            load = payload.get("load", "")
        else:
            print(line, end="", flush=True)
    return proc.wait(), figures, load


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:,.0f} {unit}" if abs(v) >= 100 else f"{v:g} {unit}"


ONLY_BY_NAME = {"ctf_fuzz"}  # an hour-long fuzz, not a benchmark: run when named


def main() -> int:
    args = sys.argv[1:]
    out_json = None
    if "--json" in args:
        i = args.index("--json")
        out_json = Path(args[i + 1])
        del args[i:i + 2]
    wanted = set(args)
    rows: list[tuple[str, dict | None, str]] = []
    failed = 0
    for b in benches():
        if wanted and b.stem not in wanted:
            continue
        if not wanted and b.stem in ONLY_BY_NAME:
            continue
        print(f"== {b.stem}", flush=True)
        t0 = time.perf_counter()
        rc, figures, load = run_one(b)
        print(f"== {b.stem}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.1f} s\n",
              flush=True)
        failed += rc != 0
        if rc != 0:
            rows.append((b.stem, None, f"FAILED (exit {rc})"))
        elif not figures:
            rows.append((b.stem, None, "no structured figures (see its output above)"))
        for f in figures:
            rows.append((b.stem, f, load))
    w = max([len(f["name"]) for _, f, _ in rows if f] + [10])
    print(f"{'bench':16s} {'figure':{w}s} {'value':>14s} {'goal':>14s}  verdict")
    for stem, f, load in rows:
        if f is None:
            print(f"{stem:16s} {load}")
            continue
        goal = "-" if f.get("goal") is None else ("≥ " if f.get("better", "higher") == "higher" else "≤ ") + \
            fmt(f["goal"], f["unit"])
        note = f"  ({f['note']})" if f.get("note") else ""
        print(f"{stem:16s} {f['name']:{w}s} {fmt(f['value'], f['unit']):>14s} {goal:>14s}  {met(f)}{note}")
    loads = sorted({load for _, f, load in rows if f and load})
    if loads:
        print("measured with: " + "; ".join(loads))
    if out_json:
        out_json.write_text(json.dumps([{"bench": s, **(f or {"error": load})} for s, f, load in rows], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
