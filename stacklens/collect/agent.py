"""`stacklens agent --config FILE`: one per node, an authenticated HTTP API over its tracers.

stdlib only (http.server, threads): the API is small and rarely called, the tracers do the
work in their own processes. Every request needs `Authorization: Bearer TOKEN` (compared in
constant time) or gets 401; TLS when `tls_cert`/`tls_key` are configured; 127.0.0.1 unless
`listen` says otherwise. Tracers come from the fixed registry (`tracers.TRACERS`) with their
options from the config file only; a request names a tracer, never a command.

API (JSON):
  GET  /v1/status                         host, tracers (state, pid, exit code, restarts, log tail)
  POST /v1/tracers/NAME/start | /stop
  GET  /v1/segments                       sealed segments [{tracer, name, size}]
  GET  /v1/segments/TRACER/NAME           the segment's bytes

Config (TOML):
  [agent]  host = "node1"  listen = "127.0.0.1"  port = 7700  token = "…" (or token_file)
           data_dir = "…"  tls_cert = "…"  tls_key = "…"  max_restarts = 3
  [tracers.notifications]  url = "amqp://…"  exchanges = [...]
  [tracers.proc]  interval_s = 1.0
  [tracers.oslo_log]  paths = ["/var/log/nova/nova-compute.log"]
  [tracers.qmp]  vms = { instance-0001 = "/run/stacklens/instance-0001.qmp" }
  [tracers.ftrace]  events = ["sched/sched_switch", …]
  [tracers.ovs]  interval_s = 1.0  (unixctl, db: ovs-vswitchd's and ovsdb's sockets)
  [tracers.lttng]  python_loggers = [...]  kernel_events = [...]  rotate_s = 30
  (each tracer module's docstring lists its options)
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from stacklens.collect.config import load_toml
from stacklens.collect.segments import sealed_segments
from stacklens.collect.tracers import TRACERS
from stacklens.errors import StacklensError
from stacklens.processes import stop_process

# Tracers that do one job and exit 0 (an inventory) rather than run until stopped.
ONE_SHOT = {"packages"}
# What the instrumentation in the services ships (stacklens.collect.instrument): kind →
# (segment directory, segment name, extension). Listed and fetched like tracer segments.
SHIPPED = {"notifications": ("notify_driver", "notifications", "jsonl"),
           "logs": ("log_handler", "oslo-log", "log")}
MAX_SHIP_BYTES = 64 << 20


@dataclass
class AgentConfig:
    host: str
    token: str
    data_dir: Path
    listen: str = "127.0.0.1"
    port: int = 7700
    tls_cert: str | None = None
    tls_key: str | None = None
    max_restarts: int = 3
    tracers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "AgentConfig":
        doc = load_toml(path, "agent config")
        a = dict(doc.get("agent", {}))
        token = a.pop("token", None)
        if token is None and "token_file" in a:
            token = Path(a.pop("token_file")).read_text().strip()
        a.pop("token_file", None)
        if not token or len(token) < 16:
            raise StacklensError(f"{path}: [agent] token (or token_file) of at least 16 characters is required")
        unknown = set(doc.get("tracers", {})) - set(TRACERS)
        if unknown:
            raise StacklensError(f"{path}: unknown tracer(s) {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(TRACERS)}")
        try:
            return cls(host=a.pop("host", socket.gethostname()), token=token,
                       data_dir=Path(a.pop("data_dir", "stacklens-agent")),
                       tracers=dict(doc.get("tracers", {})), **a)
        except TypeError as e:
            raise StacklensError(f"{path}: bad [agent] option: {e}") from None


def crash_reason(exit_code: int | None, log_tail: str) -> str:
    """Why a tracer died, in one line: the last line its log ends with (a Python traceback
    ends with `Type: message`), else the signal or exit code."""
    import signal
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    if lines:
        return lines[-1][:300]
    if exit_code is not None and exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit code {exit_code}" if exit_code is not None else "unknown"


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen | None = None
    state: str = "stopped"          # running | stopped | finished | crashed
    exit_code: int | None = None
    restarts: int = 0
    crashes: int = 0
    started_at: float | None = None
    wanted: bool = False


class Agent:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.data = Path(cfg.data_dir)
        self.data.mkdir(parents=True, exist_ok=True)
        self.workers: dict[str, Worker] = {n: Worker(n) for n in TRACERS}
        self.lock = threading.Lock()
        self._closing = threading.Event()
        self._ship_writers: dict[str, Any] = {}
        self._ship_lock = threading.Lock()

    def ship(self, kind: str, data: bytes) -> int:
        """Durable append of whole lines shipped by the instrumentation; returns lines."""
        from stacklens.collect.segments import SegmentWriter
        directory, name, ext = SHIPPED[kind]
        if not data.endswith(b"\n"):
            data += b"\n"
        with self._ship_lock:
            w = self._ship_writers.get(kind)
            if w is None:
                w = self._ship_writers[kind] = SegmentWriter(self.tracer_dir(directory), name, ext=ext,
                                                             max_age_s=2.0)
            w.write_batch(data)
            for other in self._ship_writers.values():
                other.maybe_seal()
        return data.count(b"\n")

    def tracer_dir(self, name: str) -> Path:
        return self.data / "segments" / name

    def _spawn(self, w: Worker) -> None:
        options = dict(self.cfg.tracers.get(w.name, {}))
        options["out"] = str(self.tracer_dir(w.name))
        conf = self.data / "run" / f"{w.name}.json"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(json.dumps(options))
        log = open(self.data / "run" / f"{w.name}.log", "ab")
        w.proc = subprocess.Popen([sys.executable, "-m", "stacklens.collect.worker", w.name, str(conf)],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        w.state, w.exit_code, w.started_at = "running", None, time.time()

    def start(self, name: str) -> Worker:
        with self.lock:
            w = self.workers[name]
            if w.state != "running":
                w.restarts = 0
                w.wanted = True
                self._spawn(w)
            return w

    def stop(self, name: str, timeout: float = 20) -> Worker:
        with self.lock:
            w = self.workers[name]
            w.wanted = False
            p = w.proc
        stop_process(p, timeout)
        with self.lock:
            if w.state == "running":
                w.state, w.exit_code = "stopped", p.returncode if p else None
        return w

    def watch(self) -> None:
        """Notice workers that exit; restart crashed ones a few times, report all."""
        while not self._closing.wait(0.5):
            with self.lock:
                for w in self.workers.values():
                    if w.proc is None or w.state != "running" or w.proc.poll() is None:
                        continue
                    w.exit_code = w.proc.returncode
                    if not w.wanted:  # stopped on request: whoever sees the exit first says so
                        w.state = "stopped"
                        continue
                    if w.exit_code == 0 and w.name in ONE_SHOT:
                        w.state = "finished"
                        continue
                    w.crashes += 1
                    if w.wanted and w.restarts < self.cfg.max_restarts:
                        w.restarts += 1
                        self._spawn(w)
                    else:
                        w.state = "crashed"

    def log_tail(self, name: str, nbytes: int = 1500) -> str:
        p = self.data / "run" / f"{name}.log"
        try:
            with open(p, "rb") as f:
                f.seek(max(0, p.stat().st_size - nbytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        out = {}
        with self.lock:
            for w in self.workers.values():
                s = {"state": w.state, "pid": w.proc.pid if w.proc else None, "exit_code": w.exit_code,
                     "restarts": w.restarts, "crashes": w.crashes, "started_at": w.started_at,
                     "configured": w.name in self.cfg.tracers,
                     "segments": len(sealed_segments(self.tracer_dir(w.name)))}
                if w.crashes:
                    s["log_tail"] = self.log_tail(w.name)
                    s["reason"] = crash_reason(w.exit_code, s["log_tail"])
                out[w.name] = s
        return {"host": self.cfg.host, "pid": os.getpid(), "tracers": out}

    def segments(self) -> list[dict[str, Any]]:
        out = []
        with self._ship_lock:
            for w in self._ship_writers.values():
                w.maybe_seal()
        for name in [*TRACERS, *(d for d, _, _ in SHIPPED.values())]:
            for p in sealed_segments(self.tracer_dir(name)):
                out.append({"tracer": name, "name": p.name, "size": p.stat().st_size})
        return out

    def close(self) -> None:
        self._closing.set()
        for name in TRACERS:
            self.stop(name)
        with self._ship_lock:
            for w in self._ship_writers.values():
                w.close()


def make_handler(agent: Agent):
    token = agent.cfg.token.encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "stacklens-agent"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the agent log is for tracers
            pass

        def _send(self, code: int, body: Any, ctype: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            auth = self.headers.get("Authorization", "")
            given = auth[7:].encode() if auth.startswith("Bearer ") else b""
            if hmac.compare_digest(given, token):
                return True
            self._send(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong token"})
            return False

        def _parts(self) -> list[str]:
            return [unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]

        def do_GET(self):
            if not self._authorised():
                return
            parts = self._parts()
            if parts == ["v1", "status"]:
                return self._send(200, agent.status())
            if parts == ["v1", "segments"]:
                return self._send(200, agent.segments())
            listed = {*TRACERS, *(d for d, _, _ in SHIPPED.values())}
            if len(parts) == 4 and parts[:2] == ["v1", "segments"] and parts[2] in listed:
                name = parts[3]
                seg = agent.tracer_dir(parts[2]) / name
                # only a sealed segment of that tracer, by its plain name (no path tricks)
                if "/" not in name and seg in sealed_segments(agent.tracer_dir(parts[2])):
                    return self._send(200, seg.read_bytes(), "application/octet-stream")
            self._send(404, {"error": f"no such resource: {self.path}"})

        def do_POST(self):
            if not self._authorised():
                return
            length = int(self.headers.get("Content-Length") or 0)
            parts = self._parts()
            if len(parts) == 3 and parts[:2] == ["v1", "ship"] and parts[2] in SHIPPED:
                if length > MAX_SHIP_BYTES:
                    return self._send(413, {"error": f"at most {MAX_SHIP_BYTES} bytes per request"})
                n = agent.ship(parts[2], self.rfile.read(length))
                return self._send(200, {"lines": n})
            if length:
                self.rfile.read(length)  # nothing else is taken from a body
            if len(parts) == 4 and parts[:2] == ["v1", "tracers"] and parts[3] in ("start", "stop"):
                name = parts[2]
                if name not in TRACERS:
                    return self._send(404, {"error": f"unknown tracer {name!r}; known: {', '.join(TRACERS)}"})
                w = agent.start(name) if parts[3] == "start" else agent.stop(name)
                return self._send(200, {"tracer": name, "state": w.state})
            self._send(404, {"error": f"no such resource: {self.path}"})

    return Handler


def serve(config_path: Path, ready_file: Path | None = None) -> None:
    cfg = AgentConfig.load(config_path)
    agent = Agent(cfg)
    server = ThreadingHTTPServer((cfg.listen, cfg.port), make_handler(agent))
    server.daemon_threads = True
    if cfg.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=agent.watch, daemon=True).start()

    def shutdown(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if ready_file:
        ready_file.write_text(str(server.server_address[1]))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        agent.close()
        server.server_close()
