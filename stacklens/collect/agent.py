"""`stacklens agent --config FILE`: one per node, an authenticated HTTP API over its tracers.

The project's ASGI stack (starlette, served by uvicorn — as the web UI): the API is small and
rarely called, the tracers do the work in their own processes. Every request needs
`Authorization: Bearer TOKEN` (compared in constant time) or gets 401; a malformed
Content-Length gets 400 before any body is read; TLS when `tls_cert`/`tls_key` are configured
(each connection's handshake in the event loop, given up after asyncio's 60 s: a silent
client stalls no other); 127.0.0.1 unless `listen` says otherwise. Tracers come from the fixed
registry (`tracers.TRACERS`) with their options from the config file only; a request names a
tracer, never a command.

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

import contextlib
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
from pathlib import Path
from typing import Any, Iterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

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


# A Content-Length longer than this many digits is no length this agent takes (a 400): the
# longest body taken is MAX_SHIP_BYTES (more is a 413, answered before any of it is read).
MAX_LENGTH_DIGITS = 18


def _error(code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=code)


class Guard:
    """ASGI middleware in front of every route: a malformed Content-Length is a 400 and a
    request without the agent's bearer token a 401, both before any of the body is read.
    (uvicorn's own parser already answers 400 to most malformed lengths; this covers what it
    lets through, e.g. lengths too long to be meant.)"""

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])  # (lower-case names); a repeated header: the last
        lengths = [v for k, v in scope["headers"] if k == b"content-length"]
        if lengths and (len(set(lengths)) > 1 or not lengths[0].isdigit() or len(lengths[0]) > MAX_LENGTH_DIGITS):
            shown = b", ".join(lengths).decode("latin-1")[:40]
            return await _error(400, f"bad Content-Length {shown!r}: a length in bytes is expected")(scope, receive, send)
        auth = headers.get(b"authorization", b"")
        given = auth[7:] if auth.startswith(b"Bearer ") else b""
        if not hmac.compare_digest(given, self.token):
            return await _error(401, "missing or wrong token")(scope, receive, send)
        await self.app(scope, receive, send)


def make_app(agent: Agent) -> Starlette:
    """The agent's HTTP API (see the module docstring) as an ASGI app."""
    listed = {*TRACERS, *(d for d, _, _ in SHIPPED.values())}

    def status(request: Request) -> Response:
        return JSONResponse(agent.status())

    def segments(request: Request) -> Response:
        return JSONResponse(agent.segments())

    def segment(request: Request) -> Response:
        tracer, name = request.path_params["tracer"], request.path_params["name"]
        if tracer in listed:
            seg = agent.tracer_dir(tracer) / name
            # only a sealed segment of that tracer, by its plain name (no path tricks)
            if "/" not in name and seg in sealed_segments(agent.tracer_dir(tracer)):
                return Response(seg.read_bytes(), media_type="application/octet-stream")
        return _error(404, f"no such resource: {request.url.path}")

    def tracer_action(request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ("start", "stop"):
            return _error(404, f"no such resource: {request.url.path}")
        if name not in TRACERS:
            return _error(404, f"unknown tracer {name!r}; known: {', '.join(TRACERS)}")
        w = agent.start(name) if action == "start" else agent.stop(name)
        return JSONResponse({"tracer": name, "state": w.state})

    async def ship(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in SHIPPED:
            return _error(404, f"no such resource: {request.url.path}")
        too_big = _error(413, f"at most {MAX_SHIP_BYTES} bytes per request")
        if int(request.headers.get("content-length") or 0) > MAX_SHIP_BYTES:
            return too_big  # answered before the body is read
        body = bytearray()
        async for chunk in request.stream():  # (a chunked body has no length up front)
            body += chunk
            if len(body) > MAX_SHIP_BYTES:
                return too_big
        n = await run_in_threadpool(agent.ship, kind, bytes(body))
        return JSONResponse({"lines": n})

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        return _error(code, f"no such resource: {request.method} {request.url.path}")

    routes = [Route("/v1/status", status), Route("/v1/segments", segments),
              Route("/v1/segments/{tracer}/{name:path}", segment),  # (a name with "/" is refused)
              Route("/v1/tracers/{name:path}/{action}", tracer_action, methods=["POST"]),
              Route("/v1/ship/{kind}", ship, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(Guard, token=agent.cfg.token.encode())],
                     exception_handlers={404: not_found, 405: not_found})


def serve(config_path: Path, ready_file: Path | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT: uvicorn serves the API (TLS handshakes and request
    parsing per connection in its event loop, so a silent or slow client holds up no other);
    the tracers are stopped on the way out."""
    import uvicorn
    cfg = AgentConfig.load(config_path)
    if cfg.tls_cert:  # a bad certificate or key is said in one line, before anything starts
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise StacklensError(f"{config_path}: tls_cert/tls_key cannot be used: {e}") from None
    try:
        family = socket.AF_INET6 if ":" in cfg.listen else socket.AF_INET
        sock = socket.create_server((cfg.listen, cfg.port), family=family)
    except OSError as e:
        raise StacklensError(f"cannot listen on {cfg.listen}:{cfg.port}: {e.strerror or e}") from None
    agent = Agent(cfg)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # SIGTERM/SIGINT stop the agent: a graceful exit (status 0) once the tracers are
            # stopped, not the signal raised again as uvicorn does after its own shutdown
            def stop(sig: int, frame: Any) -> None:
                self.force_exit = self.should_exit and sig == signal.SIGINT
                self.should_exit = True
            before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

    server = Server(uvicorn.Config(
        make_app(agent), log_level="warning", access_log=False, lifespan="off", ssl_certfile=cfg.tls_cert,
        ssl_keyfile=cfg.tls_key, timeout_keep_alive=5, timeout_graceful_shutdown=5))
    threading.Thread(target=agent.watch, daemon=True).start()
    if ready_file:
        ready_file.write_text(str(sock.getsockname()[1]))
    try:
        server.run(sockets=[sock])  # (handles SIGTERM and SIGINT: a graceful stop)
    finally:
        agent.close()
        sock.close()
