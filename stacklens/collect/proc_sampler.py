"""The /proc sampler tracer: CPU, memory and I/O per process, VM processes named.

Every `interval_s` it reads /proc/PID/{stat,status,io,cmdline} of every process and writes
one `proc.sample` line per process (cumulative counters, so rates are differences of two
samples: utime/stime in clock ticks, rss in bytes, read/write bytes from /proc/PID/io).
A QEMU process is named by its `-name guest=NAME` and `-uuid` (the `instance` column).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from stacklens.collect.segments import SegmentWriter

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
_GUEST = re.compile(r"(?:^|,)guest=([^,]+)")


def vm_identity(argv: list[str]) -> tuple[str | None, str | None]:
    """(guest name, uuid) from a QEMU command line."""
    name = uuid = None
    for i, a in enumerate(argv[:-1]):
        if a == "-name":
            m = _GUEST.search(argv[i + 1])
            name = m.group(1) if m else argv[i + 1].split(",")[0]
        elif a == "-uuid":
            uuid = argv[i + 1]
    return name, uuid


def sample_process(pid: int, ts: int) -> dict[str, Any] | None:
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
        with open(f"{base}/cmdline", "rb") as f:
            argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None  # the process ended between listing and reading
    # comm is in parentheses and may contain spaces: split after the last ')'
    comm = stat[stat.index("(") + 1: stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2:].split()
    rec: dict[str, Any] = {
        "stacklens": "proc.sample", "ts": ts, "pid": pid, "procname": comm,
        "ppid": int(rest[1]), "state": rest[0],
        "utime_ticks": int(rest[11]), "stime_ticks": int(rest[12]), "ticks_per_s": TICKS,
        "threads": int(rest[17]), "start_ticks": int(rest[19]),
        "vsize_bytes": int(rest[20]), "rss_bytes": int(rest[21]) * PAGE,
        "processor": int(rest[36]) if len(rest) > 36 else None,
    }
    try:
        with open(f"{base}/io") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("read_bytes", "write_bytes", "rchar", "wchar"):
                    rec[k] = int(v)
    except OSError:
        pass  # /proc/PID/io needs privileges for other users' processes
    if argv and "qemu" in os.path.basename(argv[0]):
        name, uuid = vm_identity(argv)
        rec["vm_name"] = name
        if uuid:
            rec["instance"] = uuid
    rec["cmdline"] = " ".join(argv)[:512]
    return rec


def sample_all() -> list[dict[str, Any]]:
    ts = time.time_ns()
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            rec = sample_process(int(entry.name), ts)
            if rec is not None:
                out.append(rec)
    return out


def main(config: dict[str, Any]) -> None:
    interval = float(config.get("interval_s", 1.0))
    writer = SegmentWriter(Path(config["out"]), "proc", max_age_s=float(config.get("seal_after_s", 10.0)))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    next_at = time.monotonic()
    while not stop:
        records = sample_all()
        writer.write_batch("".join(json.dumps(r) + "\n" for r in records).encode())
        writer.maybe_seal()
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    writer.close()
