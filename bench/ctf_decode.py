"""CTF: what a user runs, on distinct traces: `stacklens ingest` vs `babeltrace2 -o dummy`.

Input: N distinct copies of the many-threads kernel trace (240,644 events each; default 21 ≈
5.05 M events): each copy has its own trace UUID (metadata text, metadata and stream packet
headers) and hostname (bench/distinct_traces.py), as N hosts' traces would. Symlinks to one
trace would hide the per-trace costs (metadata, decoder set-up) and babeltrace2 would merge
them into one trace.

Figures, each a whole process started the same way (wall time, and CPU time = the child's
user + system over all its threads, from RUSAGE_CHILDREN; per-core rate = events / CPU s):
  - `stacklens ingest -s NEW_STORE T1 … TN` (one command, a fresh store each round);
  - `babeltrace2 TRACE -o dummy` once per trace (N processes, as a user reads N traces one
    by one) and `babeltrace2 T1 … TN -o dummy` (one process muxing all traces by time);
    the ingest ratio is taken against the faster of the two by wall time (printed);
  - in-process typed decode (`open_trace(p).batches()`, per-class Arrow columns, no rows or
    store) in a child process, timed inside it after a warm-up on one trace, CPU time by
    `time.process_time()`: compared per core with babeltrace2's CPU time.
Rounds alternate the variants (default 5); for each variant the fastest wall time and the
smallest CPU time over its rounds count (peak RSS: the largest). On a shared machine
wall times include waiting for a CPU: the CPU-time figures are the steadier ones.
usage: python bench/ctf_decode.py [--copies N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _figures import figure, loadavg, report  # noqa: E402
from distinct_traces import distinct_copies  # noqa: E402

DATA = Path(os.environ.get("STACKLENS_DATA", ROOT.parent / "shared" / "data"))
TRACE = DATA / "tracecompass" / "many-threads"
COPIES_DIR = Path(tempfile.gettempdir()) / "stacklens-bench" / "distinct-many-threads"
TIMEOUT = 1800


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` (list of argv lists run one after the other) in a fresh Python child whose
    RUSAGE_CHILDREN is theirs alone: wall s, CPU s, peak RSS MB."""
    code = ("import json, resource, subprocess, sys, time\n"
            "cmds = json.loads(sys.argv[1])\n"
            "t0 = time.perf_counter()\n"
            "for c in cmds:\n"
            "    subprocess.run(c, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=%d)\n"
            "dt = time.perf_counter() - t0\n"
            "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps({'wall': dt, 'cpu': ru.ru_utime + ru.ru_stime, 'sys': ru.ru_stime, 'rss_mb': ru.ru_maxrss / 1024}))\n"
            % TIMEOUT)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cmd)], capture_output=True, text=True,
                         timeout=TIMEOUT + 60, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0][:3]}…: {out.stderr.strip()[-1500:]}")
    return json.loads(out.stdout)


def typed_child(paths: list[Path]) -> None:
    """In-process typed decode: events, wall s, CPU s (all threads) after a warm-up."""
    from stacklens.sources.ctf import open_trace

    def run(ps: list[Path]) -> int:
        n = 0
        for p in ps:
            t = open_trace(p)
            for _name, batch in t.batches():
                n += batch.num_rows
            t.close()
        return n
    run(paths[:1])  # warm-up: numba cache load, first metadata parse
    c0, t0 = time.process_time(), time.perf_counter()
    n = run(paths)
    from stacklens.sources.ctf.compiled import kernels
    print(json.dumps({"events": n, "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "kernels": kernels().kind}))


def stacklens_cmd() -> list[str]:
    exe = shutil.which("stacklens", path=str(Path(sys.executable).parent)) or shutil.which("stacklens")
    return [exe] if exe else [sys.executable, "-m", "stacklens.cli"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=21, help="distinct traces (21 ≈ 5 M events)")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("CTF_BENCH_ROUNDS", "5")))
    ap.add_argument("--child-typed", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_typed is not None:
        typed_child([Path(p) for p in args.child_typed])
        return 0
    bt = shutil.which("babeltrace2")
    if not TRACE.is_dir() or not bt:
        print(f"ctf_decode: needs {TRACE} and babeltrace2")
        return 1
    COPIES_DIR.mkdir(parents=True, exist_ok=True)
    paths = distinct_copies(TRACE, COPIES_DIR, args.copies)
    ps = [str(p) for p in paths]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    tmp = Path(tempfile.mkdtemp(prefix="ctf-bench-"))
    best: dict[str, dict] = {}

    def keep(k: str, r: dict) -> None:
        if os.environ.get("CTF_BENCH_VERBOSE"):
            print(f"ctf_decode:   round: {k:9s} wall {r['wall']:.2f} s, CPU {r['cpu']:.2f} s"
                  + (f" (system {r['sys']:.2f} s)" if "sys" in r else ""), flush=True)
        # each figure its best round, the same for every variant: wall time from the fastest
        # round, CPU time from the round that used the least (on a shared machine the two are
        # often different rounds), peak RSS the largest seen
        if k not in best:
            best[k] = dict(r)
        else:
            b = best[k]
            b["wall"], b["cpu"] = min(b["wall"], r["wall"]), min(b["cpu"], r["cpu"])
            b["rss_mb"] = max(b["rss_mb"], r["rss_mb"])
    events = None
    try:
        for rnd in range(args.rounds):
            keep("bt2_each", timed([[bt, p, "-o", "dummy"] for p in ps]))
            store = tmp / f"store{rnd}"
            keep("ingest", timed([[*stacklens_cmd(), "ingest", "-s", str(store), "--json", *ps]], env))
            if rnd == 0:
                events = _store_rows(store, env)
            shutil.rmtree(store, ignore_errors=True)
            keep("bt2_all", timed([[bt, *ps, "-o", "dummy"]]))
            out = subprocess.run([sys.executable, __file__, "--child-typed", *ps], capture_output=True,
                                 text=True, timeout=TIMEOUT, env=env, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if r["events"] != 240_644 * args.copies:
                print(f"ctf_decode: typed decode read {r['events']:,} events, expected {240_644 * args.copies:,}")
                return 1
            keep("typed", r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = 240_644 * args.copies
    if events != n:
        print(f"ctf_decode: ingest stored {events} events, expected {n:,}")
        return 1

    peer_key = min(("bt2_each", "bt2_all"), key=lambda k: best[k]["wall"])
    peer = best[peer_key]
    kind = {"aot": "built ahead of time (./dev setup)", "jit": "numba's JIT (no build for these sources)"}
    print(f"ctf_decode: {n:,} events in {args.copies} distinct traces (many-threads copies), "
          f"best of {args.rounds} alternating rounds; {loadavg()}; CTF kernels {kind[best['typed']['kernels']]}")
    print(f"{'':44s} {'wall s':>7s} {'CPU s':>7s} {'M ev/s':>7s} {'M ev/CPU-s':>10s} {'peak MB':>8s}")
    labels = {"bt2_each": "babeltrace2 -o dummy, one process per trace",
              "bt2_all": "babeltrace2 -o dummy, all traces in one run",
              "ingest": "stacklens ingest (command, new store)",
              "typed": "typed decode in-process (no store)"}
    for k in ("bt2_each", "bt2_all", "ingest", "typed"):
        r = best[k]
        print(f"{labels[k]:44s} {r['wall']:7.2f} {r['cpu']:7.2f} {n / r['wall'] / 1e6:7.2f} "
              f"{n / r['cpu'] / 1e6:10.2f} {r['rss_mb']:8.0f}")
    ing, typ = best["ingest"], best["typed"]
    wall_ratio = peer["wall"] / ing["wall"]
    core_ratio = peer["cpu"] / ing["cpu"]
    typed_core = peer["cpu"] / typ["cpu"]
    print(f"peer: {labels[peer_key]} (the faster by wall time)")
    print(f"ingest command: {wall_ratio:.2f}x babeltrace2 by wall time, {core_ratio:.2f}x per core "
          f"(goal >= 1x floor, >= 2x goal)")
    print(f"typed decode: {typed_core:.2f}x babeltrace2 per core (goal >= 3x)")
    report("ctf_decode", [
        figure("ingest command vs babeltrace2 (wall)", round(wall_ratio, 2), "x", 1.0,
               note=f"floor; goal 2x; peer {peer_key}, {args.copies} distinct traces"),
        figure("ingest command vs babeltrace2 (wall, goal)", round(wall_ratio, 2), "x", 2.0),
        figure("ingest command vs babeltrace2 (per core)", round(core_ratio, 2), "x", 1.0),
        figure("typed decode vs babeltrace2 (per core)", round(typed_core, 2), "x", 3.0),
        figure("ingest command peak RSS", round(ing["rss_mb"]), "MB"),
    ])
    return 0


def _store_rows(store: Path, env: dict) -> int:
    code = ("import sys; from stacklens.store import Store; "
            "print(Store(sys.argv[1]).connect().execute('SELECT count(*) FROM events').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, env=env,
                         check=True)
    return int(out.stdout.strip())


if __name__ == "__main__":
    sys.exit(main())
