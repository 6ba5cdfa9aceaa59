"""OpenStack instrumentation without patching: enabled in a service's config files only.

- oslo.messaging notification driver `stacklens` (entry point in pyproject.toml):
    [oslo_messaging_notifications]
    driver = stacklens
    [stacklens]
    agent_url = http://127.0.0.1:7700
    token_file = /etc/stacklens/token
  Each notification is POSTed, as the JSON line oslo.messaging's own drivers build, to the
  local agent (which makes it durable in a segment before answering).
- oslo.log handler, through the service's logging config (`log_config_append`):
    [handler_stacklens]
    class = stacklens.collect.instrument.AgentLogHandler
    args = ('http://127.0.0.1:7700', '/etc/stacklens/token')
    formatter = json        # [formatter_json] class = oslo_log.formatters.JSONFormatter
  Records (with the request context: request_id, global_request_id, …) are batched and
  POSTed by a background thread; a full buffer drops the oldest and counts them, so a slow
  agent never blocks the service.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections import deque
from pathlib import Path

SHIP_PATHS = {"notifications": "/v1/ship/notifications", "logs": "/v1/ship/logs"}


def _post(url: str, token: str, path: str, body: bytes, timeout: float = 10) -> None:
    req = urllib.request.Request(url.rstrip("/") + path, data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()


class AgentNotifyDriver:
    """oslo.messaging notify driver shipping each notification to the local agent."""

    def __init__(self, conf, topics, transport):
        from oslo_config import cfg
        conf.register_opts([cfg.StrOpt("agent_url", default="http://127.0.0.1:7700"),
                            cfg.StrOpt("token_file", default="/etc/stacklens/token")],
                           group="stacklens")
        self.url = conf.stacklens.agent_url
        self.token = Path(conf.stacklens.token_file).read_text().strip()
        self.topics = topics

    def notify(self, ctxt, message, priority, retry):
        # the same shape oslo's messaging/log drivers emit: the message plus _context_* keys
        msg = dict(message)
        # a RequestContext (its redacted copy) or an already serialized dict
        context = ctxt.to_dict() if hasattr(ctxt, "to_dict") else dict(ctxt or {})
        msg.update((f"_context_{k}", v) for k, v in context.items())
        line = json.dumps(msg, default=str, separators=(",", ":")).encode() + b"\n"
        _post(self.url, self.token, SHIP_PATHS["notifications"], line)


class AgentLogHandler(logging.Handler):
    """Ships formatted records (one JSON line each) to the local agent in batches."""

    def __init__(self, url: str = "http://127.0.0.1:7700", token_file: str = "/etc/stacklens/token",
                 max_buffer: int = 100_000, flush_interval_s: float = 0.5):
        super().__init__()
        self.url = url
        self.token = Path(token_file).read_text().strip()
        self.buffer: deque[str] = deque()
        self.max_buffer = max_buffer
        self.dropped = 0
        self.interval = flush_interval_s
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._ship_loop, name="stacklens-log-ship", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).replace("\n", "\\n")
        except Exception:
            self.handleError(record)
            return
        if len(self.buffer) >= self.max_buffer:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(line)

    def _ship_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._ship()

    def _ship(self) -> None:
        lines = []
        while self.buffer:
            lines.append(self.buffer.popleft())
        if not lines:
            return
        try:
            _post(self.url, self.token, SHIP_PATHS["logs"], ("\n".join(lines) + "\n").encode())
        except OSError:
            # agent away: put them back (bounded) and try on the next round
            for line in reversed(lines[-self.max_buffer:]):
                self.buffer.appendleft(line)

    def flush(self) -> None:
        self._ship()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(5)
        self._ship()
        super().close()
