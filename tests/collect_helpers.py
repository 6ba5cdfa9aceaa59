"""Helpers for the collection-plane tests: a private RabbitMQ and bounded child processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stacklens.processes import stop_process
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "tests" / "programs"


def need_rabbitmq() -> None:
    from stacklens.collect.broker import rabbitmq_server
    if rabbitmq_server() is None or shutil.which("epmd") is None:
        msg = "rabbitmq-server is not installed (./dev setup installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def newlines_in(directory: Path, pattern: str = "*") -> int:
    """Lines written so far to the segments matching pattern, open or sealed.

    A writer seals a segment by renaming `X.open` to `X` at any moment, so a file listed by
    the glob may be gone when read; take the count again from a fresh listing then.
    """
    while True:
        try:
            return sum(p.read_bytes().count(b"\n") for p in directory.glob(pattern)
                       if not p.name.startswith(".") and not p.name.endswith(".tmp"))
        except FileNotFoundError:
            continue


stop = stop_process  # SIGTERM the process we started, SIGKILL it if it does not go


def python(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, **kw)


def start_agent(conf: Path, ready: Path, err: Path, what: str = "the agent") -> tuple[subprocess.Popen, int]:
    """`stacklens agent --config conf`, and the port it listens on once it has written `ready`
    (the agent is stopped if it never does)."""
    proc = python("-m", "stacklens.cli", "agent", "--config", str(conf), "--ready-file", str(ready),
                  stderr=open(err, "ab"))
    try:
        return proc, int(wait_for(lambda: ready.exists() and ready.read_text(), 30, what))
    except BaseException:
        stop(proc)
        raise
