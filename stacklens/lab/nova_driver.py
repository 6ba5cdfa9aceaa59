"""The OpenStack lab's driver: real Nova 34 (its in-process functional environment) driven
through its REST API. NOT imported by stacklens: `stacklens.lab.openstack` runs this file
with the Python of Nova's own virtualenv, whose site-packages hold nova, placement and
their test fixtures.

    python nova_driver.py --out DIR --transport rabbit://guest:guest@127.0.0.1:PORT/ | fake:/

What runs (one process, as nova's functional tests do): nova-api (the WSGI app through the
fixture's client), nova-conductor, nova-scheduler and two nova-compute services on the fake
virt driver (`MediumFakeDriver`: 10 vCPUs, 8 GiB each), placement (in-process, SQLite),
wired to oslo.messaging's transport given here — on `rabbit://` every RPC cast/call and
every notification crosses the real broker. Notifications go out in both formats
(`[notifications] notification_format = both`, driver messagingv2). The controller
services run on host `lab-controller`, the computes on `lab-compute1` / `lab-compute2`.

Logs: every record goes to the log of the service that emitted it, as oslo.log text
(ContextFormatter, nova's default format with the debug suffix) and as oslo.log JSON
(JSONFormatter whose `hostname` is the service's host), under DIR/HOST/. Which service
emitted a record is known because the lab tags each thread when a service's RPC server
dispatches a message, when its periodic tasks or start-up run, and when nova spawns work
on its executors (the tag follows the spawn); the API runs on the driver's own thread.

Ground truth (DIR/ground_truth.json), recorded from Nova itself and never from stacklens:
every fake-driver call (method, the driver's host, instance uuid/name, start/end, the
exception raised), every API request and answer (method, path, status, request id,
times), per instance its uuid, display name, libvirt-style name, final host, vm_state,
fault, instance actions with their request ids and events, and the migration records.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
import time
import traceback

os.environ["TZ"] = "UTC"
time.tzset()

# nova's functional package monkey-patches (eventlet) on import, as its tests do
import nova.tests.functional  # noqa: E402,F401
import fixtures  # noqa: E402
import logging  # noqa: E402
from unittest import mock  # noqa: E402

import nova.conf  # noqa: E402
from nova import exception, rpc, service, test, thread_pool_factory  # noqa: E402
from nova.tests import fixtures as nova_fixtures  # noqa: E402
from nova.tests.functional import fixtures as func_fixtures  # noqa: E402
from nova.tests.functional import integrated_helpers  # noqa: E402
from nova.tests.functional.api import client as api_client  # noqa: E402
from nova.virt import fake  # noqa: E402
import oslo_messaging as messaging  # noqa: E402
from oslo_messaging import conffixture as messaging_conffixture  # noqa: E402
from oslo_log import formatters  # noqa: E402

CONF = nova.conf.CONF
CONTROLLER, COMPUTES = "lab-controller", ["lab-compute1", "lab-compute2"]
_tag = threading.local()  # green-thread local once eventlet has patched threading
_lock = threading.Lock()
TRUTH: dict = {"driver_calls": [], "api": [], "instances": {}, "scenarios": [], "migrations": []}
INJECT_PRECHECK_FAILURE: dict[str, str] = {}
ROUTER: logging.Handler | None = None  # instance uuid → destination host that refuses it


def now_ns() -> int:
    return time.time_ns()


# -- which service emitted a log record ---------------------------------------------------------
def set_service(binary: str, host: str):
    prev = getattr(_tag, "svc", None)
    _tag.svc = (binary, host)
    return prev


def current_service():
    return getattr(_tag, "svc", None)


_LOGGER_SERVICE = [("nova.scheduler", "nova-scheduler"), ("nova.filters", "nova-scheduler"),
                   ("nova.conductor", "nova-conductor"), ("nova.api", "nova-api"),
                   ("placement", "placement-api"), ("nova.compute.api", "nova-api")]


class ServiceLogRouter(logging.Handler):
    """Writes each record to the text and JSON log of the service that emitted it."""

    def __init__(self, out: str, version: str):
        super().__init__(logging.DEBUG)
        self.out, self.version = out, version
        self.handlers: dict[tuple[str, str], list[logging.Handler]] = {}
        self.notifications = None

    def _for(self, svc: tuple[str, str]) -> list[logging.Handler]:
        hs = self.handlers.get(svc)
        if hs is None:
            binary, host = svc
            os.makedirs(os.path.join(self.out, host), exist_ok=True)
            text = logging.FileHandler(os.path.join(self.out, host, f"{binary}.log"), encoding="utf-8")
            text.setFormatter(formatters.ContextFormatter(project="nova", version=self.version,
                                                          datefmt="%Y-%m-%d %H:%M:%S", config=CONF))
            js = logging.FileHandler(os.path.join(self.out, host, f"{binary}.json.log"), encoding="utf-8")
            jf = formatters.JSONFormatter()
            jf.hostname = host  # the service's host, as it would be on its own machine
            js.setFormatter(jf)
            hs = self.handlers[svc] = [text, js]
        return hs

    def emit(self, record: logging.LogRecord) -> None:
        svc = current_service()
        if svc is None or record.name.startswith("placement"):
            binary = next((b for prefix, b in _LOGGER_SERVICE if record.name.startswith(prefix)), "lab-driver")
            svc = (binary, CONTROLLER)
        with _lock:
            hs = self._for(svc)
        for h in hs:
            h.handle(record)

    def close(self) -> None:
        if self.notifications is not None:
            self.notifications.close()
        for hs in self.handlers.values():
            for h in hs:
                h.close()
        super().close()


def install_tagging() -> None:
    """Tag threads with the service they work for (see the module docstring)."""
    orig_spawn_on = thread_pool_factory.spawn_on

    def spawn_on(executor_type, func, *args, **kwargs):
        svc = current_service()

        @functools.wraps(func)
        def run(*a, **k):
            if svc is not None:
                _tag.svc = svc
            return func(*a, **k)
        return orig_spawn_on(executor_type, run, *args, **kwargs)
    thread_pool_factory.spawn_on = spawn_on

    # every other way of starting work (threads, eventlet's spawn) carries the tag along too
    def carry(fn):
        svc = current_service()
        if svc is None:
            return fn

        @functools.wraps(fn)
        def run(*a, **k):
            _tag.svc = svc
            return fn(*a, **k)
        return run
    import eventlet
    import eventlet.greenthread as gt
    for mod in (eventlet, gt):
        for name in ("spawn", "spawn_n", "spawn_after"):
            orig = getattr(mod, name, None)
            if orig is None:
                continue
            if name == "spawn_after":
                setattr(mod, name, (lambda orig: lambda seconds, fn, *a, **k: orig(seconds, carry(fn), *a, **k))(orig))
            else:
                setattr(mod, name, (lambda orig: lambda fn, *a, **k: orig(carry(fn), *a, **k))(orig))
    orig_thread_start = threading.Thread.start

    def thread_start(self):
        self._stacklens_svc = current_service()
        return orig_thread_start(self)
    orig_thread_run = threading.Thread.run

    def thread_run(self):
        svc = getattr(self, "_stacklens_svc", None)
        if svc is not None:
            _tag.svc = svc
        return orig_thread_run(self)
    threading.Thread.start = thread_start
    threading.Thread.run = thread_run

    orig_start, orig_periodic = service.Service.start, service.Service.periodic_tasks

    def start(self, *a, **k):
        prev = set_service(self.binary, self.host)
        try:
            return orig_start(self, *a, **k)
        finally:
            _tag.svc = prev
            for attr in ("rpcserver", "rpcserver_alt"):
                server = getattr(self, attr, None)
                if server is not None:
                    tag_dispatcher(server, self.binary, self.host)

    def periodic_tasks(self, *a, **k):
        prev = set_service(self.binary, self.host)
        try:
            return orig_periodic(self, *a, **k)
        finally:
            _tag.svc = prev
    service.Service.start = start
    service.Service.periodic_tasks = periodic_tasks

    # Each real service reads its own nova.conf, whose `host` is its machine: Nova's
    # exception notifications, instance faults and several notification publishers take
    # CONF.host. In this one process CONF.host answers the host of the service the thread
    # works for (the tag), so those name the host that really ran the code.
    from oslo_config import cfg
    orig_get = cfg.ConfigOpts._get

    def _get(self, name, group=None, namespace=None):
        if name == "host" and group is None and self is CONF:
            svc = current_service()
            if svc is not None:
                return svc[1]
        return orig_get(self, name, group, namespace)
    cfg.ConfigOpts._get = _get


def tag_dispatcher(server, binary: str, host: str) -> None:
    # _process_incoming: the dispatch and the server's own "Exception during message handling"
    orig = server._process_incoming

    def process(*a, **k):
        prev = set_service(binary, host)
        try:
            return orig(*a, **k)
        finally:
            _tag.svc = prev
    server._process_incoming = process


# -- ground truth: the fake virt driver's calls ---------------------------------------------------
DRIVER_METHODS = ["spawn", "destroy", "check_can_live_migrate_destination", "check_can_live_migrate_source",
                  "pre_live_migration", "live_migration", "post_live_migration",
                  "post_live_migration_at_source", "post_live_migration_at_destination",
                  "rollback_live_migration_at_destination", "cleanup_live_migration_destination_check",
                  "migrate_disk_and_power_off", "finish_migration", "confirm_migration",
                  "finish_revert_migration", "power_off", "power_on"]


def _instance_of(args, kwargs):
    inst = kwargs.get("instance")
    if inst is None:
        inst = next((a for a in args if hasattr(a, "uuid") and hasattr(a, "display_name")), None)
    return inst


def hook_driver() -> None:
    for name in DRIVER_METHODS:
        orig = getattr(fake.FakeDriver, name, None)
        if orig is None:
            continue

        def make(name, orig):
            @functools.wraps(orig)
            def call(self, *args, **kwargs):
                inst = _instance_of(args, kwargs)
                rec = {"method": name, "host": self._host, "start_ns": now_ns(),
                       "instance": getattr(inst, "uuid", None), "name": getattr(inst, "name", None),
                       "display_name": getattr(inst, "display_name", None), "error": None}
                with _lock:
                    TRUTH["driver_calls"].append(rec)
                try:
                    if (name == "check_can_live_migrate_destination" and inst is not None
                            and INJECT_PRECHECK_FAILURE.get(inst.uuid) == self._host):
                        raise exception.MigrationPreCheckError(
                            reason=f"lab: {self._host} refuses {inst.uuid} (injected pre-check failure)")
                    return orig(self, *args, **kwargs)
                except Exception as e:
                    rec["error"] = {"class": type(e).__name__, "message": str(e)}
                    raise
                finally:
                    rec["end_ns"] = now_ns()
            return call
        setattr(fake.FakeDriver, name, make(name, orig))


def hook_api_client() -> None:
    orig = api_client.TestOpenStackClient.request

    def request(self, url, method="GET", body=None, headers=None):
        start = now_ns()
        resp = orig(self, url, method=method, body=body, headers=headers)
        path = url.split("/", 3)[-1] if "://" in url else url
        rec = {"method": method, "path": "/" + path, "status": resp.status_code,
               "request_id": resp.headers.get("x-openstack-request-id") or resp.headers.get("x-compute-request-id"),
               "start_ns": start, "end_ns": now_ns()}
        if method != "GET":
            try:
                rec["body"] = json.loads(body) if body else None
            except ValueError:
                rec["body"] = body
            rec["answer"] = resp.text[:2000]
        with _lock:
            TRUTH["api"].append(rec)
        return resp
    api_client.TestOpenStackClient.request = request


_OBJECTS: dict[str, object] = {}


def pass_cell_connections_by_reference() -> None:
    """nova's CellDatabases fixture serializes the cell's db/mq connection objects into every
    RPC context (CheatingSerializer: all services share one process and per-cell SQLite
    databases). The fake transport carries Python objects; a real broker carries JSON. So the
    objects stay in this process and the message carries a reference to them."""
    cheat = nova_fixtures.CheatingSerializer

    def ref(obj):
        if obj is None:
            return None
        key = f"lab-object:{id(obj)}"
        _OBJECTS[key] = obj
        return key

    def serialize_context(self, context):
        values = rpc.RequestContextSerializer.serialize_context(self, context)
        values["db_connection"] = ref(context.db_connection)
        values["mq_connection"] = ref(context.mq_connection)
        return values

    def deserialize_context(self, values):
        db, mq = values.pop("db_connection", None), values.pop("mq_connection", None)
        ctxt = rpc.RequestContextSerializer.deserialize_context(self, values)
        ctxt.db_connection = _OBJECTS.get(db) if db else None
        ctxt.mq_connection = _OBJECTS.get(mq) if mq else None
        return ctxt
    cheat.serialize_context = serialize_context
    cheat.deserialize_context = deserialize_context


class RealTransportRPC(fixtures.Fixture):
    """nova.tests.fixtures.RPCFixture, but on the transport URL given (rabbit:// or fake:/) and
    with real notification drivers: every cell's transport collapses to this one bus."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self._transport = None

    def _create_transport(self, url):
        if self._transport is None:
            self._transport = messaging.get_rpc_transport(CONF, url=None,
                                                          allowed_remote_exmods=rpc.get_allowed_exmods())
        return self._transport

    def setUp(self):
        super().setUp()
        self.addCleanup(rpc.cleanup)
        conf = messaging_conffixture.ConfFixture(CONF)
        conf.transport_url = self.url
        self.useFixture(conf)
        # messagingv2 as deployed; on the real bus the project's listener captures them, on
        # the fake transport an oslo.messaging notification listener in this process does
        CONF.set_override("driver", ["messagingv2"], group="oslo_messaging_notifications")
        CONF.set_override("notification_format", "both", group="notifications")
        CONF.set_override("notify_on_state_change", "vm_and_task_state", group="notifications")
        self.useFixture(fixtures.MonkeyPatch("nova.rpc.create_transport", self._create_transport))
        with mock.patch("nova.rpc.get_transport_url") as gtu:
            gtu.return_value = None
            rpc.init(CONF)
        if not self.url.startswith("rabbit"):
            self._capture_fake_bus()

    def _capture_fake_bus(self) -> None:
        """oslo.messaging's own notification listener on the fake bus, both topics, writing
        each notification as messagingv2 puts it on a real bus (the message with its
        `_context_*` keys), one per line: what the project's listener writes on RabbitMQ."""
        os.makedirs(os.path.join(OpenStackLab.out, "notifications"), exist_ok=True)
        path = os.path.join(OpenStackLab.out, "notifications", "notifications.jsonl")
        sink = open(path, "a", encoding="utf-8")

        class Writer:
            def _write(self, priority, ctxt, publisher_id, event_type, payload, metadata):
                doc = {"message_id": metadata.get("message_id"), "publisher_id": publisher_id,
                       "event_type": event_type, "priority": priority.upper(), "payload": payload,
                       "timestamp": metadata.get("timestamp")}
                doc.update({f"_context_{k}": v for k, v in (ctxt or {}).items()})
                line = json.dumps(doc, default=str)
                with _lock:
                    sink.write(line + "\n")
                    sink.flush()

        endpoint = Writer()
        for prio in ("audit", "debug", "info", "warn", "error", "critical", "sample"):
            setattr(endpoint, prio, functools.partial(endpoint._write, prio))
        targets = [messaging.Target(topic=t) for t in ("notifications", "versioned_notifications")]
        listener = messaging.get_notification_listener(rpc.NOTIFICATION_TRANSPORT, targets, [endpoint],
                                                       executor="threading")
        listener.start()

        def stop():
            time.sleep(1.0)  # the listener polls the fake bus: let it take the last ones
            listener.stop()
            listener.wait()
            sink.close()
        self.addCleanup(stop)


class OpenStackLab(test.TestCase, integrated_helpers.PlacementInstanceHelperMixin):
    REQUIRES_LOCKING = True
    transport_url = "fake:/"
    out = "."

    def setUp(self):
        self.flags(compute_driver="fake.MediumFakeDriver")
        # nova.test.TestCase sets its RPC up at this fixture's place: ours instead
        # (and its WarningsFixture turns library deprecation warnings into errors: a lab
        # must run Nova, not fail on a newer SQLAlchemy's warning)
        with mock.patch.object(nova_fixtures, "RPCFixture", lambda *exmods: RealTransportRPC(self.transport_url)), \
                mock.patch.object(nova_fixtures, "WarningsFixture", fixtures.Fixture):
            super().setUp()
        # nova's StandardLogging fixture replaced the root handlers: the lab's goes on now,
        # before any service starts
        logging.getLogger().addHandler(ROUTER)
        self.addCleanup(logging.getLogger().removeHandler, ROUTER)
        self.policy = self.useFixture(nova_fixtures.RealPolicyFixture())
        self.neutron = self.useFixture(nova_fixtures.NeutronFixture(self))
        self.glance = self.useFixture(nova_fixtures.GlanceFixture(self))
        self.useFixture(nova_fixtures.CinderFixture(self))
        self.placement = self.useFixture(func_fixtures.PlacementFixture()).api
        self.useFixture(nova_fixtures.AllServicesCurrent())
        # scheduler debug records (filters, weighers) are what `stacklens scheduling` reads
        self.flags(debug=True)
        # the wheel installs Nova's paste pipeline under the virtualenv's etc/
        self.flags(api_paste_config=os.path.join(sys.prefix, "etc", "nova", "api-paste.ini"), group="wsgi")
        for host in COMPUTES:
            self._start_compute(host)
        self.flags(host=CONTROLLER)
        self.start_service("conductor", host=CONTROLLER)
        self.start_service("scheduler", host=CONTROLLER)
        self.api_fixture = self.useFixture(nova_fixtures.OSAPIFixture(api_version="v2.1"))
        # The fixture's stand-in for keystone builds contexts without the request id the
        # request-id middleware assigned; real Nova (RequestContext.from_environ) takes it,
        # so the id in the API's answer is the one its logs and notifications carry.
        from nova import context as nova_context

        def keystone_context(env, **kwargs):
            user_id = env["HTTP_X_AUTH_USER"]
            return nova_context.RequestContext(
                user_id, env["HTTP_X_AUTH_PROJECT_ID"], is_admin=user_id == "admin",
                roles=env["HTTP_X_ROLES"].split(","), request_id=env.get("openstack.request_id"),
                global_request_id=env.get("openstack.global_request_id"), **kwargs)
        self.useFixture(fixtures.MonkeyPatch("nova.api.auth.NovaKeystoneContext._create_context", keystone_context))
        self.admin_api = self.api_fixture.admin_api
        self.admin_api.microversion = "latest"
        self.api = self.admin_api
        set_service("nova-api", CONTROLLER)  # the API runs on this thread (wsgi-intercept)

    # -- helpers -------------------------------------------------------------------------------
    def wait_server(self, server_id: str, states: set[str], timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            s = self.api.get_server(server_id)
            if s["status"] in states and not s.get("OS-EXT-STS:task_state"):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"server {server_id} still {s['status']}/{s.get('OS-EXT-STS:task_state')}")
            time.sleep(0.05)

    def wait_migration(self, server_id: str, statuses: set[str], timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            migs = self.api.api_get(f"/os-migrations?instance_uuid={server_id}").body["migrations"]
            live = [m for m in migs if m["migration_type"] == "live-migration"]
            if live and max(live, key=lambda m: m["id"])["status"] in statuses:
                return max(live, key=lambda m: m["id"])
            if time.monotonic() > deadline:
                raise AssertionError(f"live migration of {server_id} never reached {statuses}: {migs}")
            time.sleep(0.05)

    def wait_deleted(self, server_id: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api.get_server(server_id)
            except api_client.OpenStackApiNotFoundException:
                return
            time.sleep(0.05)
        raise AssertionError(f"server {server_id} not deleted after {timeout:.0f} s")

    def scenario(self, name: str, **info) -> dict:
        rec = {"name": name, "start_ns": now_ns(), **info}
        TRUTH["scenarios"].append(rec)
        print(f"lab: {name}", flush=True)
        return rec

    def boot(self, name: str, flavor: str, host: str | None, expect: str) -> dict:
        body = {"name": name, "imageRef": self.glance.image1["id"], "flavorRef": flavor, "networks": "none"}
        if host:
            body["host"] = host
        server = self.api.post_server({"server": body})
        server = self.wait_server(server["id"], {expect})
        return server

    # -- the run ---------------------------------------------------------------------------------
    def test_run(self):
        flavors = {f["name"]: f["id"] for f in self.api.get_flavors()}
        small = flavors["m1.small"]
        medium = flavors["m1.medium"]
        big = self.api.post_flavor({"flavor": {"name": "lab.toobig", "ram": 16384, "vcpus": 1, "disk": 1}})["id"]
        qemu_only = self.api.post_flavor({"flavor": {"name": "lab.qemu-only", "ram": 512, "vcpus": 1, "disk": 1}})["id"]
        self.api.post_extra_spec(qemu_only, {"extra_specs": {"capabilities:hypervisor_type": "QEMU"}})

        sc = self.scenario("boot", vm="lab-vm-a", host=COMPUTES[0])
        a = self.boot("lab-vm-a", small, COMPUTES[0], "ACTIVE")
        sc["end_ns"], sc["instance"] = now_ns(), a["id"]
        sc = self.scenario("boot", vm="lab-vm-b", host=COMPUTES[1])
        b = self.boot("lab-vm-b", small, COMPUTES[1], "ACTIVE")
        sc["end_ns"], sc["instance"] = now_ns(), b["id"]

        sc = self.scenario("boot_no_allocation_candidates", vm="lab-vm-toobig", flavor="lab.toobig",
                           memory_mb=16384, vcpus=1, disk_gb=1)
        t = self.boot("lab-vm-toobig", big, None, "ERROR")
        sc["end_ns"], sc["instance"] = now_ns(), t["id"]
        sc = self.scenario("boot_filtered", vm="lab-vm-qemu-only", flavor="lab.qemu-only",
                           filter="ComputeCapabilitiesFilter", extra_spec={"capabilities:hypervisor_type": "QEMU"})
        q = self.boot("lab-vm-qemu-only", qemu_only, None, "ERROR")
        sc["end_ns"], sc["instance"] = now_ns(), q["id"]

        sc = self.scenario("live_migration", vm="lab-vm-a", source=COMPUTES[0], destination=COMPUTES[1])
        self.api.post_server_action(a["id"], {"os-migrateLive": {"host": COMPUTES[1], "block_migration": "auto"}})
        self.wait_migration(a["id"], {"completed", "error", "failed"})
        self.wait_server(a["id"], {"ACTIVE"})
        sc["end_ns"], sc["instance"] = now_ns(), a["id"]

        sc = self.scenario("live_migration_precheck_failure", vm="lab-vm-b", source=COMPUTES[1],
                           destination=COMPUTES[0])
        INJECT_PRECHECK_FAILURE[b["id"]] = COMPUTES[0]
        self.api.post_server_action(b["id"], {"os-migrateLive": {"host": COMPUTES[0], "block_migration": "auto"}})
        self.wait_migration(b["id"], {"error", "failed", "completed"})
        self.wait_server(b["id"], {"ACTIVE"})
        INJECT_PRECHECK_FAILURE.clear()
        sc["end_ns"], sc["instance"] = now_ns(), b["id"]

        sc = self.scenario("resize", vm="lab-vm-b", flavor="m1.medium")
        self.api.post_server_action(b["id"], {"resize": {"flavorRef": medium}})
        self.wait_server(b["id"], {"VERIFY_RESIZE"})
        self.api.post_server_action(b["id"], {"confirmResize": None})
        self.wait_server(b["id"], {"ACTIVE"})
        sc["end_ns"], sc["instance"] = now_ns(), b["id"]

        # the record of every instance before deleting them: final host, state, fault, actions
        servers = {"a": a, "b": b, "toobig": t, "qemu-only": q}
        for s in servers.values():
            self.record_instance(s["id"])
        TRUTH["migrations"] = self.api.api_get("/os-migrations").body["migrations"]

        sc = self.scenario("delete", vms=[s["name"] for s in servers.values()])
        for s in servers.values():
            self.api.delete_server(s["id"])
        for s in servers.values():
            self.wait_deleted(s["id"])
        sc["end_ns"] = now_ns()
        for s in servers.values():
            self.record_actions(s["id"])

    def record_instance(self, uuid: str) -> None:
        s = self.api.get_server(uuid)
        TRUTH["instances"][uuid] = {
            "uuid": uuid, "display_name": s["name"], "name": s.get("OS-EXT-SRV-ATTR:instance_name"),
            "host": s.get("OS-EXT-SRV-ATTR:host"), "status": s["status"],
            "vm_state": s.get("OS-EXT-STS:vm_state"), "fault": s.get("fault"),
            "flavor": (s.get("flavor") or {}).get("original_name"),
        }

    def record_actions(self, uuid: str) -> None:
        actions = self.api.api_get(f"/servers/{uuid}/os-instance-actions").body["instanceActions"]
        detailed = []
        for act in actions:
            d = self.api.api_get(f"/servers/{uuid}/os-instance-actions/{act['request_id']}").body["instanceAction"]
            detailed.append(d)
        TRUTH["instances"][uuid]["actions"] = detailed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--transport", default="fake:/")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import importlib.metadata as md
    version = md.version("nova")
    TRUTH.update({"nova_version": version, "placement_version": md.version("openstack-placement"),
                  "transport": "rabbit" if args.transport.startswith("rabbit") else "fake",
                  "controller": CONTROLLER, "computes": COMPUTES, "started_ns": now_ns()})
    pass_cell_connections_by_reference()
    messaging_conffixture.ConfFixture(CONF)  # registers the transport options (cells read them)
    install_tagging()
    hook_driver()
    hook_api_client()
    global ROUTER
    router = ROUTER = ServiceLogRouter(args.out, version)
    OpenStackLab.transport_url = args.transport
    OpenStackLab.out = args.out
    case = OpenStackLab("test_run")
    import unittest
    result = unittest.TestResult()
    case.run(result)
    TRUTH["ended_ns"] = now_ns()
    problems = [(str(t), tb) for t, tb in result.errors + result.failures]
    TRUTH["errors"] = [tb for _, tb in problems]
    router.close()
    with open(os.path.join(args.out, "ground_truth.json"), "w") as f:
        json.dump(TRUTH, f, indent=1, default=str)
    for _, tb in problems:
        print(tb, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
