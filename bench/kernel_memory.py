"""Kernel models at scale: peak RSS and time of `stacklens cpu`, `threads` and `preemption`
on stores of 5, 10, 25 and 50 M kernel events.

Input: distinct copies of the many-threads trace (240,644 events each, its own trace UUID:
bench/distinct_traces.py), ingested into one store per size, in two layouts:
  * hosts: each copy its own host (many hosts, each of 240 k events);
  * single: every copy under ONE host, the copies' clocks shifted (the CTF clock offset in
    their metadata, same length) so that they follow one another in time: one host whose
    sched_switch history is as long as the whole store (the case where a command's memory
    depends on how it handles one host's events, not on how many hosts there are).
Stores are built once under $TMPDIR/stacklens-bench/kernel-stores and reused; each size starts
from the next smaller one of its layout (Parquet files hard-linked, metadata copied) and
ingests the copies it lacks.
Each command runs as a user runs it (a fresh process, --json to /dev/null); its peak RSS and
CPU time come from RUSAGE_CHILDREN of a Python parent that runs nothing else. Goals: peak RSS
<= 1 GB at 50 M events; time linear in events (CPU s per M events at the largest size within
1.3x of the smallest's).
usage: python bench/kernel_memory.py [--sizes 5,10,25,50] [--commands cpu,threads,preemption]
                                    [--layouts hosts,single]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _figures import figure, loadavg, report  # noqa: E402
from distinct_traces import distinct_copies  # noqa: E402

DATA = Path(os.environ.get("STACKLENS_DATA", ROOT.parent / "shared" / "data"))
TRACE = DATA / "tracecompass" / "many-threads"
EVENTS_PER_COPY = 240_644
WORK = Path(tempfile.gettempdir()) / "stacklens-bench"
COMMANDS = {"cpu": ["cpu"], "threads": ["threads"], "preemption": ["preemption", "--proc", "lttng%"]}
RSS_GOAL_MB = 1024
LINEAR_TOLERANCE = 1.3
TIMEOUT = 7200
SINGLE_HOST = "bench-one-host"
SHIFT_NS = 500_000_000  # each copy's clock 0.5 s after the previous one (the trace lasts 0.43 s)


def stacklens() -> list[str]:
    exe = shutil.which("stacklens", path=str(Path(sys.executable).parent)) or shutil.which("stacklens")
    return [exe] if exe else [sys.executable, "-m", "stacklens.cli"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _link_or_copy(src: str, dst: str) -> None:
    if src.endswith(".parquet"):  # never rewritten in place: sharing them is safe
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def shifted_copies(copies: list[Path], root: Path) -> list[Path]:
    """The distinct `copies`, copy i with its clock offset moved i * SHIFT_NS later (the offset's
    digits rewritten in place, same length, so packetized metadata stays valid; stream files
    hard-linked, unchanged)."""
    out = []
    for i, src in enumerate(copies):
        d = root / src.name
        if not (d / "metadata").is_file():
            tmp = root / f".{src.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, copy_function=os.link)
            meta = (src / "metadata").read_bytes()
            m = re.search(rb"\boffset = (\d+);", meta)
            if m is None:
                raise ValueError(f"{src}/metadata: no clock offset")
            new = str(int(m.group(1)) + i * SHIFT_NS).encode()
            if len(new) != len(m.group(1)):
                raise ValueError(f"{src}/metadata: shifted clock offset changes length")
            (tmp / "metadata").unlink()
            (tmp / "metadata").write_bytes(meta[:m.start(1)] + new + meta[m.end(1):])
            tmp.rename(d)
        out.append(d)
    return out


def build_store(copies: int, layout: str = "hosts") -> Path:
    """A store holding `copies` distinct many-threads traces (built once, then reused): each its
    own host (layout "hosts"), or all under SINGLE_HOST one after another (layout "single")."""
    root = WORK / "kernel-stores"
    root.mkdir(parents=True, exist_ok=True)
    prefix = "s" if layout == "hosts" else "single-s"
    store = root / f"{prefix}{copies:04d}"
    if (store / ".complete").is_file():
        return store
    shutil.rmtree(store, ignore_errors=True)
    smaller = sorted(int(p.name[len(prefix):]) for p in root.glob(f"{prefix}[0-9]*")
                     if (p / ".complete").is_file() and int(p.name[len(prefix):]) < copies)
    have = 0
    if smaller:
        have = smaller[-1]
        shutil.copytree(root / f"{prefix}{have:04d}", store, copy_function=_link_or_copy)
        (store / ".complete").unlink()
    paths = distinct_copies(TRACE, WORK / "distinct-many-threads", copies)
    extra: list[str] = []
    if layout == "single":
        paths = shifted_copies(paths, WORK / "shifted-many-threads")
        extra = ["--host", SINGLE_HOST]
    paths = paths[have:]
    for i in range(0, len(paths), 40):
        subprocess.run([*stacklens(), "ingest", "-s", str(store), "--json", *extra, *map(str, paths[i:i + 40])],
                       check=True, stdout=subprocess.DEVNULL, env=env(), timeout=TIMEOUT)
    (store / ".complete").write_text(f"{copies} copies\n")
    return store


def measure(cmd: list[str]) -> dict:
    code = ("import json, resource, subprocess, sys, time\n"
            "t0 = time.perf_counter()\n"
            "p = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
            "dt = time.perf_counter() - t0\n"
            "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps({'rc': p.returncode, 'err': p.stderr[-800:], 'wall': dt, "
            "'cpu': ru.ru_utime + ru.ru_stime, 'rss_mb': ru.ru_maxrss / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cmd)], capture_output=True, text=True,
                         env=env(), timeout=TIMEOUT, check=True)
    r = json.loads(out.stdout)
    if r["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd[-4:])}: exit {r['rc']}: {r['err']}")
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5,10,25,50", help="M events, comma-separated")
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--layouts", default="hosts,single", help="hosts (a host per copy), single (one host)")
    args = ap.parse_args()
    if not TRACE.is_dir():
        print(f"kernel_memory: data missing: {TRACE}")
        return 1
    sizes = [float(s) for s in args.sizes.split(",")]
    cmds = args.commands.split(",")
    layouts = args.layouts.split(",")
    rows: dict[tuple[str, str], list[tuple[int, dict]]] = {(l, c): [] for l in layouts for c in cmds}
    for layout in layouts:
        for m in sizes:
            copies = max(1, round(m * 1e6 / EVENTS_PER_COPY))
            store = build_store(copies, layout)
            where = f"{copies} hosts" if layout == "hosts" else "one host"
            for c in cmds:
                r = measure([*stacklens(), *COMMANDS[c], "-s", str(store), "--json"])
                rows[layout, c].append((copies * EVENTS_PER_COPY, r))
                print(f"kernel_memory: {c:10s} {copies * EVENTS_PER_COPY / 1e6:6.2f} M events ({where}): "
                      f"wall {r['wall']:7.1f} s, CPU {r['cpu']:7.1f} s "
                      f"({1e9 * r['cpu'] / (copies * EVENTS_PER_COPY):.0f} ns/event), "
                      f"peak RSS {r['rss_mb']:6.0f} MB", flush=True)
    print(f"kernel_memory: {loadavg()} (wall times include waiting for a CPU; CPU and RSS do not)")
    figures = []
    for (layout, c), rs in rows.items():
        label = c if layout == "hosts" else f"{c}, one host"
        (n0, r0), (n1, r1) = rs[0], rs[-1]
        per0, per1 = r0["cpu"] / (n0 / 1e6), r1["cpu"] / (n1 / 1e6)
        growth = per1 / per0
        peak = max(r["rss_mb"] for _, r in rs)
        linear = growth <= LINEAR_TOLERANCE
        print(f"kernel_memory: {label}: CPU {per0:.2f} s/M events at {n0 / 1e6:.1f} M, {per1:.2f} s/M at {n1 / 1e6:.1f} M "
              f"({growth:.2f}x: {'linear' if linear else 'NOT linear'}); peak RSS {peak:.0f} MB at "
              f"{n1 / 1e6:.1f} M ({'met' if peak <= RSS_GOAL_MB else 'not met'}: goal <= {RSS_GOAL_MB} MB at 50 M)")
        figures.append(figure(f"{label}: peak RSS at {n1 / 1e6:.0f} M events", round(peak), "MB",
                              RSS_GOAL_MB if n1 >= 45e6 else None, better="lower",
                              note="" if n1 >= 45e6 else "goal is for 50 M events"))
        figures.append(figure(f"{label}: CPU per event at {n1 / 1e6:.0f} M events", round(1e3 * per1), "ns",
                              better="lower", note="CPU time of the whole command"))
        figures.append(figure(f"{label}: CPU per event, {n1 / 1e6:.0f} M vs {n0 / 1e6:.0f} M", round(growth, 2), "x",
                              LINEAR_TOLERANCE if len(rs) > 1 else None, better="lower",
                              note="linear in events"))
    report("kernel_memory", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
