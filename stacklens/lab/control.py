"""The lab's control plane: Nova's live-migration steps as versioned notifications.

The notifications go through real oslo.messaging. With no RabbitMQ on 127.0.0.1 (the usual
case on a lab machine) the notifier uses oslo.messaging's `log` driver, which hands each
notification envelope (message_id, publisher_id, event_type, priority, payload, timestamp)
as JSON to a Python logger; a handler writes those lines to the bundle. The payloads follow
Nova's InstanceActionPayload (nova_object.name/namespace/version/data) with the fields the
analyses use: uuid, host, request_id, state, task_state, action_initiator_*.

With a RabbitMQ on 127.0.0.1 (`broker_url()`: STACKLENS_LAB_RABBIT, else guest@127.0.0.1:5672
if it answers) the notifier uses the rabbit driver (`messagingv2`, control exchange `nova`,
topic `versioned_notifications`) as Nova does, and the project's notification listener
(stacklens.collect, a child process stopped by its pid) captures them from its own bounded
queue into segments in the same directory; the queue is deleted afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid as uuidlib
import warnings
from pathlib import Path

from stacklens.collect.broker import queue_exists
from stacklens.errors import StacklensError
from stacklens.processes import stop_process

PUBLISHER = "nova-compute"


DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def broker_url(timeout: float = 1.0) -> str | None:
    """The AMQP URL of a RabbitMQ on loopback to publish through, or None."""
    url = os.environ.get("STACKLENS_LAB_RABBIT") or DEFAULT_BROKER
    try:
        import kombu
        with kombu.Connection(url, connect_timeout=timeout) as conn:
            conn.connect()
    except Exception:  # nothing listening, refused login, no kombu: the log driver then
        return None
    return url


def oslo_url(amqp_url: str) -> str:
    """amqp://user:pw@host:port/vhost → oslo.messaging's rabbit://user:pw@host:port/vhost."""
    rest = amqp_url.split("://", 1)[1]
    return "rabbit://" + (rest[:-1] if rest.endswith("//") else rest)


class ControlPlane:
    def __init__(self, path: Path, broker: str | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eventlet deprecation noise on import
            try:
                import oslo_messaging
                from oslo_config import cfg
            except ImportError as e:
                raise StacklensError(f"lab: oslo.messaging is needed for the control plane ({e}); "
                                     "pip install oslo.messaging") from None
        self.path = path
        self.emitted = 0
        self.queue: str | None = None  # the listener's queue on the broker
        self._listener: subprocess.Popen | None = None
        self._transport = None
        if broker is not None:
            self._start_listener(broker)
            oslo_messaging.set_transport_defaults(control_exchange="nova")
            conf = cfg.ConfigOpts()
            conf([], project="stacklens-lab")
            self._transport = oslo_messaging.get_notification_transport(conf, url=oslo_url(broker))
            self._make = lambda host: oslo_messaging.Notifier(
                self._transport, publisher_id=f"{PUBLISHER}:{host}", driver="messagingv2",
                topics=["versioned_notifications"])
            self._notifiers: dict[str, object] = {}
            self.driver = f"oslo.messaging rabbit driver via {broker.split('@')[-1]}"
            self._handler = None
            return
        self._logger = logging.getLogger("oslo.messaging.notification")
        self._handler = logging.FileHandler(path, mode="w", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.DEBUG)
        self._logger.propagate = False
        conf = cfg.ConfigOpts()
        conf([], project="stacklens-lab")
        transport = oslo_messaging.get_notification_transport(conf, url="fake:/")
        self._notifiers: dict[str, object] = {}
        self._make = lambda host: oslo_messaging.Notifier(
            transport, publisher_id=f"{PUBLISHER}:{host}", driver="log", topics=["versioned_notifications"])
        self.driver = "oslo.messaging log driver"

    def emit(self, event_type: str, instance: str, request_id: str, host: str, state: str = "active") -> None:
        notifier = self._notifiers.get(host) or self._notifiers.setdefault(host, self._make(host))
        phase = event_type.rsplit(".", 1)[-1]
        payload = {
            "nova_object.name": "InstanceActionPayload",
            "nova_object.namespace": "nova",
            "nova_object.version": "1.8",
            "nova_object.data": {
                "uuid": instance, "host": host, "node": host, "state": state,
                "task_state": "migrating" if phase == "start" or "rollback" not in event_type else None,
                "power_state": "running", "request_id": request_id,
                "action_initiator_user": "admin", "action_initiator_project": "admin",
            },
        }
        ctxt = {"request_id": request_id, "global_request_id": None}
        notifier.info(ctxt, event_type, payload)
        self.emitted += 1

    # -- capture through the broker ----------------------------------------------------------
    def _start_listener(self, broker: str) -> None:
        out = self.path.parent
        self._queue = self.queue = f"stacklens-lab-{uuidlib.uuid4().hex[:12]}"
        self._broker = broker
        config = out.parent / f".{self._queue}.json"  # outside the part, removed at close
        config.write_text(json.dumps({
            "url": broker, "out": str(out), "exchanges": ["nova"], "topics": ["versioned_notifications"],
            "queue": self._queue, "durable_exchanges": False,  # oslo's amqp_durable_queues default
            "max_length": 10_000, "seal_after_s": 3600.0}))
        self._config = config
        self._listener_err = open(out.parent / f".{self._queue}.err", "wb")
        self._listener = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "stacklens.collect.worker", "notifications", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._listener_err)
        # publish only once the listener's queue is bound, or the first steps would be lost
        deadline = time.monotonic() + 30
        while not queue_exists(self._broker, self._queue):
            if self._listener.poll() is not None or time.monotonic() > deadline:
                self._stop_listener()
                raise StacklensError(f"lab: the notification listener did not come up on {broker}")
            time.sleep(0.1)


    def _written(self) -> int:
        try:
            return json.loads((self.path.parent / ".status.json").read_text())["written"]
        except (OSError, ValueError, KeyError):
            return 0

    def _stop_listener(self) -> None:
        if self._listener is None:
            return
        stop_process(self._listener, 15)
        self._listener_err.close()
        self._config.unlink(missing_ok=True)
        err = Path(self._listener_err.name)
        if err.exists() and err.stat().st_size == 0:
            err.unlink()
        import kombu
        try:  # our queue goes with the run
            with kombu.Connection(self._broker, connect_timeout=2) as conn:
                conn.default_channel.queue_delete(self._queue)
        except Exception:
            pass

    def close(self) -> None:
        if self._listener is not None:
            # the listener writes its counters every second: wait for every notification
            deadline = time.monotonic() + 10
            while self._written() < self.emitted and time.monotonic() < deadline:
                time.sleep(0.2)
            self._stop_listener()
            if self._transport is not None:
                self._transport.cleanup()
            return
        self._logger.removeHandler(self._handler)
        self._handler.close()
