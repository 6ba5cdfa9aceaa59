"""The QMP poller tracer: running migrations as QEMU itself reports them.

Config: `vms` = {name: QMP socket path} (a monitor the poller may use alone: QEMU serves one
client per `-qmp` socket, so a VM gets a second `-qmp unix:…,server=on,wait=off` for it),
`interval_s` (0.5). One thread per VM connects (again and again while the VM is absent or
restarting), asks `query-name`/`query-uuid` once, then `query-migrate` every interval.

What is written, per VM, as QMP JSON lines (`stacklens.sources.qmp` reads them; the record
form is the lab's QmpClient's: replies get the reception time and the command name):
- every QMP event the monitor sends (QEMU's own timestamps: MIGRATION, STOP, RESUME, …);
- `query-migrate` replies while a migration is in progress, and the one where the status
  changes (so the final `completed`/`failed`/`cancelled` figures are always there), never
  the idle `{}` replies of a VM that is not migrating;
- the identity lines (greeting, query-name, query-uuid) at the start of every segment, so
  each segment names its VM on its own.
The poller is passive: it never changes a migration parameter or capability.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
from pathlib import Path
from typing import Any

from stacklens.collect.segments import SegmentWriter
from stacklens.lab.qmp import QmpClient, QmpError

log = logging.getLogger("stacklens.collect.qmp")

# query-migrate statuses of a migration that has not ended (QAPI MigrationStatus)
IN_PROGRESS = {"setup", "active", "pre-switchover", "device", "postcopy-active",
               "postcopy-paused", "postcopy-recover-setup", "postcopy-recover", "cancelling",
               "wait-unplug", "colo"}


class _Capture:
    """QmpClient's record: the timestamped lines of the last exchange, kept or dropped by
    the poller once it has seen the reply."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        pass

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class VmPoller(threading.Thread):
    def __init__(self, vm: str, socket_path: Path, out: Path, interval_s: float,
                 seal_after_s: float, stop: threading.Event, status: dict[str, Any]) -> None:
        super().__init__(name=f"qmp-{vm}", daemon=True)
        self.vm, self.socket_path, self.interval_s, self.stop_event = vm, socket_path, interval_s, stop
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", vm)
        # not named `qemu-VM…`: the reader would take the segment's whole stem for the VM name;
        # the query-name reply at the top of each segment names it
        self.segments = SegmentWriter(out, f"qmp-{safe}", ext="qmp.jsonl", max_age_s=seal_after_s)
        self.identity: list[str] = []
        self.status = status.setdefault(vm, {"connected": False, "polls": 0, "written": 0,
                                             "migrations": 0, "last_status": None, "error": None})

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        if not self.segments.is_open:
            lines = self.identity + lines
        self.segments.write_batch("".join(lines).encode())
        self.status["written"] += len(lines)

    def run(self) -> None:
        while not self.stop_event.is_set():
            capture = _Capture()
            try:
                client = QmpClient(self.socket_path, capture, connect_timeout=self.interval_s)
            except (QmpError, OSError, ValueError) as e:
                self.status.update(connected=False, error=str(e))
                self.stop_event.wait(self.interval_s)
                continue
            try:
                client.command("query-name")
                client.command("query-uuid")
                self.identity = capture.take()
                self.status.update(connected=True, error=None)
                self._poll(client, capture)
            except (QmpError, OSError, ValueError) as e:
                # the VM ended or restarted: keep what it said, then look for it again
                self._write([ln for ln in capture.take() if '"event"' in ln])
                self.status.update(connected=False, error=str(e))
            finally:
                client.close()
            self.segments.maybe_seal()
            self.stop_event.wait(self.interval_s)
        self.segments.close()

    def _poll(self, client: QmpClient, capture: _Capture) -> None:
        last_status = None
        while not self.stop_event.is_set():
            info = client.command("query-migrate") or {}
            lines = capture.take()
            status = info.get("status")
            self.status["polls"] += 1
            keep_reply = status in IN_PROGRESS or (status != last_status and last_status is not None)
            if status in IN_PROGRESS and last_status not in IN_PROGRESS:
                self.status["migrations"] += 1
            # lines before the reply are the events QEMU sent since the last poll
            self._write(lines if keep_reply else lines[:-1])
            last_status = status
            self.status["last_status"] = status
            self.segments.maybe_seal()
            self.stop_event.wait(self.interval_s)


def main(config: dict[str, Any]) -> None:
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    vms = config.get("vms") or {}
    if not isinstance(vms, dict) or not vms:
        raise SystemExit("qmp tracer: `vms` = {name = \"/path/to/qmp.sock\", …} is required")
    interval = float(config.get("interval_s", 0.5))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    status: dict[str, Any] = {}
    pollers = [VmPoller(vm, Path(path), out, interval, float(config.get("seal_after_s", 10.0)), stop, status)
               for vm, path in vms.items()]
    for p in pollers:
        p.start()
    while not stop.wait(1.0):
        _write_status(out, status)
    for p in pollers:
        p.join(30)
    _write_status(out, status)


def _write_status(out: Path, status: dict[str, Any]) -> None:
    tmp = out / ".status.json.tmp"
    tmp.write_text(json.dumps(status))
    tmp.replace(out / ".status.json")
