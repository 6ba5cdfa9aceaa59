"""`stacklens lab run --scenario openstack`: a real Nova 34 control plane, captured by the
project's own collection plane, with the ground truth of what happened.

Nova is NOT a dependency of stacklens: it lives in its own virtualenv, created on first use
(`STACKLENS_NOVA_VENV`, default ~/.cache/stacklens/nova-venv; ~1 min from the package index),
and `nova_driver.py` (next to this file) runs with that virtualenv's Python. This module
only orchestrates: a private RabbitMQ (LocalRabbit) when rabbitmq-server is installed, the
notification listener (stacklens.collect) bound to Nova's control exchange for both the
legacy and the versioned topic, the driver, and the bundle:

    OUT/bundle.toml                          hosts of the parts, time zone UTC
    OUT/lab-controller/nova-api.log, .json.log, nova-conductor…, nova-scheduler…, placement-api…
    OUT/lab-compute1/nova-compute.log, nova-compute.json.log     (and lab-compute2)
    OUT/notifications/…                      what the listener captured on the bus (or, on the
                                             fake transport, what the `log` driver wrote)
    OUT/ground_truth.json                    recorded by the driver from Nova itself (not ingested)
    OUT/lab.json                             how the run went: transport, times, counts

The run says which transport it used: `rabbit` (oslo.messaging's rabbit driver through the
private broker: RPC and notifications cross it) or `fake` (no rabbitmq-server, or
--broker none: oslo.messaging's in-process fake driver, notifications through its log driver).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Callable

from stacklens.collect.broker import queue_exists
from stacklens.errors import StacklensError

NOVA_VERSION = "34.0.0"
PLACEMENT_VERSION = "16.0.0"
# what nova.tests.functional imports beyond nova's own requirements; SQLAlchemy < 2.1 as in
# Nova's upper constraints (2.1 deprecates options Nova 34 still uses)
NOVA_PACKAGES = [f"nova=={NOVA_VERSION}", f"openstack-placement=={PLACEMENT_VERSION}", "SQLAlchemy<2.1",
                 "oslotest", "fixtures", "testtools", "wsgi-intercept", "requests-mock", "testscenarios",
                 "testresources", "ddt", "osprofiler", "python-barbicanclient"]
DRIVER = Path(__file__).with_name("nova_driver.py")
HOSTS = {"lab-controller": "lab-controller/*", "lab-compute1": "lab-compute1/*",
         "lab-compute2": "lab-compute2/*"}
LISTENER_HOST = "lab-controller"  # the listener runs next to the controller services


def nova_venv_path() -> Path:
    return Path(os.environ.get("STACKLENS_NOVA_VENV") or Path.home() / ".cache" / "stacklens" / "nova-venv")


def ensure_nova_venv(say: Callable[[str], None] = lambda _m: None) -> Path:
    """The Python of Nova's virtualenv, created and filled on first use."""
    venv = nova_venv_path()
    python = venv / "bin" / "python"
    if python.exists() and _has_nova(python):
        return python
    say(f"openstack lab: installing nova {NOVA_VERSION} + placement {PLACEMENT_VERSION} into {venv} (first use)")
    t0 = time.monotonic()
    if not python.exists():
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
        r = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode != 0:
            raise StacklensError(f"openstack lab: cannot create {venv}: {r.stderr.strip()[-300:]}")
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", *NOVA_PACKAGES], capture_output=True, text=True)
    if r.returncode != 0 or not _has_nova(python):
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise StacklensError(f"openstack lab: pip could not install nova into {venv}: {' / '.join(tail)}")
    say(f"openstack lab: installed in {time.monotonic() - t0:.0f} s")
    return python


def _has_nova(python: Path) -> bool:
    r = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('nova'))"],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == NOVA_VERSION


def run_openstack(out: Path, broker: str | None = "auto", progress: Callable[[str], None] | None = None) -> dict:
    """Run the scenarios on real Nova; write the bundle to `out` (replaced if it is a lab bundle).
    `broker`: "auto" (a private RabbitMQ when rabbitmq-server is installed, else the fake
    transport), an amqp:// URL of a broker on loopback, or None (fake transport)."""
    say = progress or (lambda _m: None)
    if out.exists():
        if not (out / "bundle.toml").exists() and any(out.iterdir()):
            raise StacklensError(f"lab: {out} exists and is not a lab bundle; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    python = ensure_nova_venv(say)
    t0 = time.monotonic()
    info: dict = {"scenario": "openstack", "out": str(out), "notes": []}
    rabbit = None
    listener = None
    tmp = Path(tempfile.mkdtemp(prefix="stacklens-oslab-"))
    try:
        amqp_url = None
        if broker == "auto":
            from stacklens.collect.broker import LocalRabbit, rabbitmq_server
            if rabbitmq_server() is not None:
                say("openstack lab: starting a private RabbitMQ on 127.0.0.1")
                rabbit = LocalRabbit(tmp / "rabbit").start()
                amqp_url = rabbit.url
            else:
                info["notes"].append("rabbitmq-server is not installed: fake transport")
        elif broker:
            amqp_url = broker
        if amqp_url:
            from stacklens.lab.control import oslo_url
            transport = oslo_url(amqp_url)
            listener = _Listener(amqp_url, out / "notifications", tmp)
            info["transport"] = "rabbit"
            info["control_plane"] = (f"oslo.messaging rabbit driver via {amqp_url.split('@')[-1]} "
                                     "(RPC and notifications on the broker; the notification listener "
                                     "captures both topics)")
        else:
            transport = "fake:/"
            info["transport"] = "fake"
            info["control_plane"] = ("oslo.messaging fake driver (in-process RPC); notifications captured "
                                     "by an oslo.messaging notification listener on the fake bus")
        say(f"openstack lab: nova {NOVA_VERSION} on the {info['transport']} transport")
        env = dict(os.environ, TZ="UTC", PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)  # nova's venv must not see stacklens's packages
        with open(tmp / "driver.out", "wb") as log:
            # -I: the script's directory (stacklens/lab, with its openstack.py) must not shadow packages
            proc = subprocess.Popen([str(python), "-I", str(DRIVER), "--out", str(out), "--transport", transport],
                                    stdout=subprocess.PIPE, stderr=log, env=env, cwd=tmp, start_new_session=True)
            try:
                for line in proc.stdout:
                    say("openstack " + line.decode(errors="replace").rstrip())
                rc = proc.wait(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if rc != 0:
            tail = (tmp / "driver.out").read_text(errors="replace").strip().splitlines()[-6:]
            raise StacklensError("openstack lab: the Nova driver failed: " + " / ".join(tail)[-800:])
        truth = json.loads((out / "ground_truth.json").read_text())
        if listener is not None:
            info["listener"] = listener.close()
            listener = None
        info["nova_version"] = truth.get("nova_version")
        info["placement_version"] = truth.get("placement_version")
        info["wall_s"] = round(time.monotonic() - t0, 3)
        info["driver_wall_s"] = round((truth["ended_ns"] - truth["started_ns"]) / 1e9, 3)
        _write_bundle_toml(out, info["transport"])
        (out / "lab.json").write_text(json.dumps(info, indent=1))
        say(f"openstack lab: done in {info['wall_s']:.1f} s; bundle in {out}")
        return info
    finally:
        if listener is not None:
            listener.close()
        if rabbit is not None:
            rabbit.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _write_bundle_toml(out: Path, transport: str) -> None:
    parts = list(HOSTS.items()) + [(LISTENER_HOST, "notifications/*"), (LISTENER_HOST, "lab.json")]
    (out / "bundle.toml").write_text(
        f"# written by stacklens lab run --scenario openstack (transport: {transport})\n"
        'tz = "UTC"\n' + "".join(f'\n[[parts]]\npath = "{path}"\nhost = "{host}"\n' for host, path in parts))


class _Listener:
    """The project's notification listener (a child process stopped by its pid) on its own
    bounded queue bound to exchange `nova`, topics `notifications` and `versioned_notifications`."""

    def __init__(self, url: str, out: Path, tmp: Path) -> None:
        self.url, self.out = url, out
        out.mkdir(parents=True, exist_ok=True)
        self.queue = f"stacklens-oslab-{uuidlib.uuid4().hex[:12]}"
        config = tmp / "listener.json"
        config.write_text(json.dumps({
            "url": url, "out": str(out), "exchanges": ["nova"],
            "topics": ["notifications", "versioned_notifications"], "queue": self.queue,
            "durable_exchanges": False,  # oslo's amqp_durable_queues default
            "max_length": 100_000, "seal_after_s": 3600.0}))
        self.err = open(tmp / "listener.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "stacklens.collect.worker", "notifications", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = time.monotonic() + 30
        while not queue_exists(self.url, self.queue):  # publish only once the queue is bound
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise StacklensError(f"openstack lab: the notification listener did not come up on {url}")
            time.sleep(0.1)


    def _depth(self) -> int | None:
        import kombu
        try:
            with kombu.Connection(self.url, connect_timeout=2) as conn:
                return conn.default_channel.queue_declare(self.queue, passive=True).message_count
        except Exception:
            return None

    def close(self) -> dict:
        from stacklens.processes import stop_process
        if self.proc is None:
            return {}
        # drain: the queue empty and the listener's written count steady for a second
        deadline, last, steady = time.monotonic() + 20, -1, 0
        while time.monotonic() < deadline and self.proc.poll() is None:
            status = self._status()
            written = status.get("written", 0)
            if self._depth() == 0 and written == last:
                steady += 1
                if steady >= 2:
                    break
            else:
                steady = 0
            last = written
            time.sleep(0.6)
        stop_process(self.proc, 15)
        self.proc = None
        self.err.close()
        import kombu
        try:
            with kombu.Connection(self.url, connect_timeout=2) as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception:
            pass
        status = self._status()
        (self.out / ".status.json").unlink(missing_ok=True)
        return {k: status.get(k) for k in ("received", "written", "duplicates", "unreadable")}

    def _status(self) -> dict:
        try:
            return json.loads((self.out / ".status.json").read_text())
        except (OSError, ValueError):
            return {}
