"""The LTTng tracer: an LTTng session driven through the `lttng` CLI, rotated into segments.

The session records the Python agent's domain (`--python`: the services' logging records,
through python3-lttngust) and, when LTTng's kernel modules are there, kernel events.
Without them (a container, a kernel without the modules, no /proc/modules) the kernel
domain is skipped and the status says why, in lttng's own words; the Python domain still
records. Every `rotate_s` the session is rotated (`lttng rotate`, which waits until the
chunk is complete): each archived chunk is a self-contained CTF trace, packed as one
segment `lttng-<chunk>.ctf.tar` (written under a hidden name, fsynced, renamed) and the
chunk directory removed. Stopping stops the session, rotates the last chunk and destroys
the session. `stacklens client pull` unpacks these segments and ingests the traces.

Config: session (default stacklens-<hash of out>), python_loggers (default all),
kernel_events (default none), rotate_s (30), lttng_home (LTTNG_HOME of the session daemon
to talk to; default the environment's).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

from stacklens.collect.segments import fsync_dir

CHUNK_SUFFIX = ".ctf.tar"


class LttngError(RuntimeError):
    pass


class Lttng:
    def __init__(self, lttng_home: str | None):
        self.env = dict(os.environ)
        if lttng_home:
            self.env["LTTNG_HOME"] = str(lttng_home)

    def run(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run(["lttng", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            msg = " ".join(ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip())
            raise LttngError(f"lttng {' '.join(args)}: {msg or f'exit {r.returncode}'}")
        return r.stdout


def kernel_domain_problem(lttng: Lttng) -> str | None:
    """Why the kernel domain cannot record here (None when it can)."""
    try:
        lttng.run("list", "--kernel", timeout=30)
    except LttngError as e:
        why = str(e)
        if not Path("/proc/modules").exists():
            why += " (no /proc/modules: LTTng's kernel modules cannot be loaded here)"
        return why
    return None


def pack_chunk(chunk: Path, out: Path) -> Path:
    """One archived trace chunk → one sealed tar segment; the chunk directory removed."""
    final = out / f"lttng-{chunk.name}{CHUNK_SUFFIX}"
    tmp = out / f".{final.name}.tmp"
    with tarfile.open(tmp, "w") as tar:
        tar.add(chunk, arcname=chunk.name)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(out)
    _rmtree(chunk)
    return final


def _rmtree(path: Path) -> None:
    for p in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()


def main(config: dict[str, Any]) -> None:
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    session = config.get("session") or "stacklens-" + hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]
    lttng = Lttng(config.get("lttng_home"))
    trace_dir = out / ".session"
    status: dict[str, Any] = {"session": session, "chunks": 0, "domains": [], "kernel": None, "pid": os.getpid()}

    def save_status() -> None:
        tmp = out / ".status.json.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(out / ".status.json")

    def pack_ready() -> None:
        archives = trace_dir / "archives"
        for chunk in sorted(archives.iterdir()) if archives.is_dir() else []:
            if chunk.is_dir():
                pack_chunk(chunk, out)
                status["chunks"] += 1

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        lttng.run("destroy", session)  # left by a killed run of this tracer
    except LttngError:
        pass
    pack_ready()  # chunks a killed run archived but did not pack
    lttng.run("create", session, f"--output={trace_dir}")
    try:
        loggers = config.get("python_loggers") or []
        if loggers:
            lttng.run("enable-event", "--python", ",".join(loggers), "-s", session)
        else:
            lttng.run("enable-event", "--python", "-a", "-s", session)
        status["domains"].append("python")
        kernel_events = config.get("kernel_events") or []
        if kernel_events:
            problem = kernel_domain_problem(lttng)
            if problem is None:
                lttng.run("enable-event", "--kernel", ",".join(kernel_events), "-s", session)
                status["domains"].append("kernel")
                status["kernel"] = "recording"
            else:
                status["kernel"] = f"unavailable: {problem}"
                print(f"lttng tracer: kernel domain skipped: {problem}", flush=True)
        lttng.run("start", session)
        save_status()
        rotate_s = float(config.get("rotate_s", 30.0))
        while not stop.wait(rotate_s):
            lttng.run("rotate", session)
            pack_ready()
            save_status()
        lttng.run("stop", session)
        lttng.run("rotate", session)
        pack_ready()
    finally:
        try:
            lttng.run("destroy", session)
        except LttngError:
            pass
        pack_ready()
        save_status()
