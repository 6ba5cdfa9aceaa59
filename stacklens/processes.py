"""Stopping a process this program started (by its PID only, never by name)."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen | None, timeout: float = 15, kill_timeout: float = 5) -> None:
    """SIGTERM `proc` if it still runs, wait up to `timeout` s, then SIGKILL it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(kill_timeout)
