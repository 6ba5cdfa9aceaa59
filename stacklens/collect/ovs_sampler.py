"""The OvS statistics tracer: `ovs-appctl` output sampled into segments.

Every `interval_s` it runs the lab's `ovs-appctl` commands (datapath lookups/flows/ports,
upcall handler figures, PMD/main-thread counters, coverage) against ovs-vswitchd and writes
one `{"ovs_sample_ns", "appctl": {command: verbatim output}}` line; the Interface table
(`ovs-vsctl list Interface`: names, ofports, external_ids such as vm-id) opens every segment
and is sampled again every `interfaces_every_s`. This is the format the lab writes and
`stacklens.sources.ovs_stats` reads.

Config: unixctl (ovs-vswitchd's control socket; default: ovs-appctl's own default target),
db (ovsdb socket for ovs-vsctl; default: its default), interval_s (1.0),
interfaces_every_s (30), commands (default the lab's), seal_after_s. A command that fails
(vswitchd restarting) is left out of that sample and counted in the status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from stacklens.collect.segments import SegmentWriter
from stacklens.lab.network import APPCTL, _interface_rows


class OvsCommands:
    def __init__(self, unixctl: str | None, db: str | None, env: dict[str, str] | None = None) -> None:
        self.unixctl, self.db, self.env = unixctl, db, env

    def appctl(self, *args: str) -> str:
        target = ["-t", self.unixctl] if self.unixctl else []
        return subprocess.run(["ovs-appctl", *target, "--timeout=5", *args], check=True, capture_output=True,
                              text=True, timeout=10, env=self.env).stdout

    def interfaces(self) -> list[dict]:
        db = [f"--db={self.db}"] if self.db else []
        out = subprocess.run(["ovs-vsctl", *db, "--timeout=5", "--format=json", "list", "Interface"],
                             check=True, capture_output=True, text=True, timeout=10, env=self.env).stdout
        return _interface_rows(out)


def _line(**body: Any) -> bytes:
    return (json.dumps({"ovs_sample_ns": time.time_ns(), **body}) + "\n").encode()


def main(config: dict[str, Any]) -> None:
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    ovs = OvsCommands(config.get("unixctl"), config.get("db"))
    commands = list(config.get("commands") or APPCTL)
    interval = float(config.get("interval_s", 1.0))
    interfaces_every = float(config.get("interfaces_every_s", 30.0))
    segments = SegmentWriter(out, "ovs-stats", ext="jsonl", max_age_s=float(config.get("seal_after_s", 60.0)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    status = {"samples": 0, "failures": 0, "last_error": None, "pid": os.getpid()}
    last_interfaces = float("-inf")
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            data = b""
            if not segments.is_open or t0 - last_interfaces >= interfaces_every:
                try:
                    data += _line(interfaces=ovs.interfaces())
                    last_interfaces = t0
                except (subprocess.SubprocessError, OSError, ValueError) as e:
                    status["failures"] += 1
                    status["last_error"] = f"ovs-vsctl list Interface: {_why(e)}"
            outputs = {}
            for c in commands:
                try:
                    outputs[c] = ovs.appctl(*c.split())
                except (subprocess.SubprocessError, OSError) as e:
                    status["failures"] += 1
                    status["last_error"] = f"ovs-appctl {c}: {_why(e)}"
            if outputs:
                data += _line(appctl=outputs)
                status["samples"] += 1
            if data:
                segments.write_batch(data)
            segments.maybe_seal()
            tmp = out / ".status.json.tmp"
            tmp.write_text(json.dumps(status))
            tmp.replace(out / ".status.json")
            stop.wait(max(0.0, interval - (time.monotonic() - t0)))
    finally:
        segments.close()


def _why(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        lines = (e.stderr or "").strip().splitlines()
        return lines[-1] if lines else f"exit {e.returncode}"
    return str(e)
