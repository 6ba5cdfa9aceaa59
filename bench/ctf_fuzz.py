"""Long mutation fuzz of the CTF reader (issue 15): ≥100 k mutated real traces, each read as
`ingest` reads it (and the small ones dumped) in worker subprocesses; see tests/ctf_fuzzing.py
for the mutations, seeds and outcome classes. The suite runs 2,000 of them; this runs many.

Seeded and resumable: mutations are a pure function of (seed, index), done by batches whose
results go to OUT/batches.jsonl; a rerun with the same OUT skips the batches already done.
Failing inputs (crash, hang, internal error) are written under OUT/failures/ with the
mutation that made them. Prints tries / ok / rejected / internal errors / crashes / hangs /
seconds.

usage: nice python bench/ctf_fuzz.py [--count N] [--seed S] [--jobs J] [--out DIR]
       [--start I]   (rerun one mutation: --start I --count 1)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import ctf_fuzzing as F  # noqa: E402  (the engine lives with the tests that use it too)

BATCH = 2000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without an answer = a hang")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path(tempfile.gettempdir()) / f"stacklens-ctf-fuzz-seed{a.seed}"
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "batches.jsonl"
    done: dict[int, dict] = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            b = json.loads(line)
            if b["seed"] == a.seed:
                done[b["start"]] = b
    batches = [(s, min(s + BATCH, a.start + a.count)) for s in range(a.start, a.start + a.count, BATCH)]
    todo = [b for b in batches if b[0] not in done or done[b[0]]["end"] != b[1]]
    print(f"ctf_fuzz: seed {a.seed}, mutations {a.start}..{a.start + a.count - 1}, {len(batches) - len(todo)} "
          f"batch(es) of {BATCH} already done in {out}", flush=True)
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(b: tuple[int, int]) -> dict:
        work = out / f"work-{b[0]}"
        res = F.run(a.seed, b[0], b[1], work, timeout=a.timeout, keep_failures=out / "failures")
        rec = {"seed": a.seed, "start": b[0], "end": b[1], "seconds": round(res.seconds, 1),
               "restarts": res.restarts, **{o: res.count(o) for o in F.OUTCOMES},
               "failures": [{"index": r.index, "outcome": r.outcome, "detail": r.detail, "mutation": r.mutation}
                            for r in res.failures()]}
        with lock:
            with open(journal, "a") as f:
                f.write(json.dumps(rec) + "\n")
            done[b[0]] = rec
            tries = sum(d["end"] - d["start"] for d in done.values())
            print(f"ctf_fuzz: batch {b[0]}..{b[1] - 1}: " + ", ".join(f"{o} {rec[o]}" for o in F.OUTCOMES)
                  + f" in {rec['seconds']} s ({tries} tries so far, {time.monotonic() - t0:.0f} s)", flush=True)
        import shutil
        shutil.rmtree(work, ignore_errors=True)
        return rec

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        list(pool.map(one, todo))
    recs = [done[s] for s, _ in batches if s in done]
    total = {o: sum(r[o] for r in recs) for o in F.OUTCOMES}
    tries = sum(total.values())
    secs = sum(r["seconds"] for r in recs)
    print(f"ctf_fuzz: {tries} tries, {total['crash']} crashes, {total['hang']} hangs, "
          f"{total['internal']} internal errors ({total['ok']} read, {total['rejected']} rejected on one line) "
          f"in {secs:.0f} s of worker time; failing inputs under {out / 'failures'}", flush=True)
    for r in recs:
        for f in r["failures"][:5]:
            print(f"  {f['outcome']} #{f['index']}: {f['detail'][:160]} [{f['mutation'][:160]}]")
    return 1 if total["crash"] or total["hang"] or total["internal"] else 0


if __name__ == "__main__":
    sys.exit(main())
