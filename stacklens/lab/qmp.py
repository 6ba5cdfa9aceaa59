"""A small QMP client for the lab: commands, events, and a JSON-lines record of both.

Every message the QEMU monitor sends is written to the record as one JSON line. Events
carry QEMU's own timestamp; command replies have none, so the client adds one in the same
form (`timestamp: {seconds, microseconds}`, host clock at reception) and the name of the
command in `command`. `stacklens.sources.qmp` reads such records.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import IO, Any


class QmpError(RuntimeError):
    pass


class QmpClient:
    def __init__(self, socket_path: Path, record: IO[str] | None = None, connect_timeout: float = 10.0) -> None:
        self.record = record
        self.events: list[dict] = []
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(socket_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"{socket_path}: QEMU monitor did not come up in {connect_timeout:.0f} s")
                time.sleep(0.05)
        self.sock.settimeout(30.0)
        self.file = self.sock.makefile("rwb", buffering=0)
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"{socket_path}: not a QMP greeting: {greeting}")
        self.command("qmp_capabilities")

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise QmpError("QEMU closed the monitor connection")
        now = time.time_ns()
        msg = json.loads(line)
        if self.record is not None:
            out = dict(msg)
            if "timestamp" not in out:
                out["timestamp"] = {"seconds": now // 1_000_000_000, "microseconds": now % 1_000_000_000 // 1000}
            if self._pending is not None and ("return" in msg or "error" in msg):
                out["command"] = self._pending
            self.record.write(json.dumps(out) + "\n")
            self.record.flush()
        return msg

    _pending: str | None = None

    def command(self, name: str, **arguments: Any) -> Any:
        return self._request(name, arguments, None)

    def command_with_fd(self, name: str, fd: int, **arguments: Any) -> Any:
        """A command that takes a file descriptor (getfd, add-fd): the fd rides along with the
        request as SCM_RIGHTS ancillary data."""
        return self._request(name, arguments, fd)

    def _request(self, name: str, arguments: dict[str, Any], fd: int | None) -> Any:
        req: dict[str, Any] = {"execute": name}
        if arguments:
            req["arguments"] = arguments
        self._pending = name
        payload = json.dumps(req).encode() + b"\n"
        if fd is None:
            self.file.write(payload)
        else:
            socket.send_fds(self.sock, [payload], [fd])
        try:
            while True:
                msg = self._read()
                if "event" in msg:
                    self.events.append(msg)
                    continue
                if "error" in msg:
                    raise QmpError(f"{name}: {msg['error'].get('desc', msg['error'])}")
                return msg.get("return")
        finally:
            self._pending = None

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass
