"""A private RabbitMQ node on 127.0.0.1 for tests, benches and local experiments.

Everything the node writes (mnesia, logs, cookie, config) lives under one directory; the AMQP
port, the Erlang distribution port and a private epmd are all bound to loopback on free
ports, so it never meets a system broker. Stopped by the PID we started (SIGTERM, then the
process group we created), and its epmd by its own `-kill` on its private port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from stacklens.errors import StacklensError

SERVER_CANDIDATES = ["/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server"]


def rabbitmq_server() -> str | None:
    """The rabbitmq-server script that runs the node in the foreground as the current user."""
    for p in SERVER_CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("rabbitmq-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def queue_exists(url: str, queue: str) -> bool:
    """True once `queue` is declared on the broker at `url` (a listener is bound and ready)."""
    import kombu
    try:
        with kombu.Connection(url, connect_timeout=2) as conn:
            conn.default_channel.queue_declare(queue, passive=True)
        return True
    except Exception:  # not there yet, or the broker not answering: both mean "not ready"
        return False


class LocalRabbit:
    """One RabbitMQ node under `root`; `start()`, `stop()`, `restart()` keep its data."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"stacklens{self.port}@localhost"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def oslo_url(self) -> str:
        return f"rabbit://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        home = self.root / "home"
        for d in ("home", "mnesia", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        conf = self.root / "rabbitmq.conf"
        # loopback only; no disk-space alarm on a nearly full test disk
        conf.write_text("loopback_users.guest = true\ndisk_free_limit.absolute = 10MB\n"
                        f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.root / "enabled_plugins").write_text("[].\n")
        env.update({
            "HOME": str(home),
            "RABBITMQ_HOME": "/usr/lib/rabbitmq",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(conf.with_suffix("")),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "rabbit.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
        })
        return env

    def start(self, timeout: float = 60.0) -> "LocalRabbit":
        server = rabbitmq_server()
        if server is None:
            raise StacklensError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        log = open(self.root / "server.out", "ab") if self.root.exists() else None
        if log is None:
            self.root.mkdir(parents=True, exist_ok=True)
            log = open(self.root / "server.out", "ab")
        env = self._env()
        self.proc = subprocess.Popen([server], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StacklensError(f"rabbitmq-server exited with {self.proc.returncode}; "
                                     f"see {self.root / 'server.out'}")
            if self._amqp_ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise StacklensError(f"rabbitmq-server did not accept AMQP within {timeout:.0f} s")

    def _amqp_ready(self) -> bool:
        import amqp
        try:
            c = amqp.Connection(f"127.0.0.1:{self.port}", userid="guest", password="guest",
                                connect_timeout=1)
            c.connect()
            c.close()
            return True
        except Exception:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop of the node we started (its data stays for a restart)."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the session we created for it
            p.wait(5)
        # the node's beam may outlive the wrapper shell by a moment; the group is ours
        try:
            os.killpg(p.pid, 0)
            time.sleep(0.5)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the node and its private epmd."""
        self.stop()
        epmd = shutil.which("epmd")
        if epmd:
            env = dict(os.environ, ERL_EPMD_ADDRESS="127.0.0.1")
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=env, timeout=10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> "LocalRabbit":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
