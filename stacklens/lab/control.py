"""The lab's control plane: Nova's live-migration steps as versioned notifications.

The notifications go through real oslo.messaging. With no RabbitMQ on 127.0.0.1 (the usual
case on a lab machine) the notifier uses oslo.messaging's `log` driver, which hands each
notification envelope (message_id, publisher_id, event_type, priority, payload, timestamp)
as JSON to a Python logger; a handler writes those lines to the bundle. The payloads follow
Nova's InstanceActionPayload (nova_object.name/namespace/version/data) with the fields the
analyses use: uuid, host, request_id, state, task_state, action_initiator_*.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from stacklens.errors import StacklensError

PUBLISHER = "nova-compute"


class ControlPlane:
    def __init__(self, path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eventlet deprecation noise on import
            try:
                import oslo_messaging
                from oslo_config import cfg
            except ImportError as e:
                raise StacklensError(f"lab: oslo.messaging is needed for the control plane ({e}); "
                                     "pip install oslo.messaging") from None
        self.path = path
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

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
