"""A small scheduler service that logs through the real oslo.log in nova-scheduler's message
formats, and emits scheduler.select_destinations.start/.end through real oslo.messaging.

This is NOT Nova: nova is not pip-installable cheaply here. The filtering and weighing below
is a few lines of arithmetic; what is faithful is the log output — logger names, levels and
message formats copied from Nova's source (nova/filters.py get_filtered_objects: "Starting
with %d host(s)", "Filter %(cls_name)s returned %(obj_len)d host(s)", "Filter %s returned 0
hosts", "Filtering removed all hosts for the request with instance ID '%(inst_uuid)s'. Filter
results: %(str_results)s"; nova/scheduler/filter_scheduler.py: "Filtered %(hosts)s",
"Weighed %(hosts)s", "Selected host: %(host)s"; HostState.__repr__ "(%(host)s, %(node)s) ram:
%(free_ram)sMB disk: %(free_disk)sMB io_ops: %(num_io_ops)s instances: %(num_instances)s";
WeighedHost.__repr__ "WeighedHost [host: %r, weight: %s]"; nova/scheduler/utils.py
set_vm_state_and_notify "Failed to %(service)s_%(method)s: %(ex)s" with NoValidHost's text).

usage: nova_scheduler_log.py SCENARIO.json LOGFILE NOTIFICATIONS.jsonl
SCENARIO: {"hosts": [{"host", "free_ram_mb", "free_disk_mb", "vcpus_free", "enabled"}],
           "filters": ["ComputeFilter", "RamFilter", "DiskFilter", "CoreFilter"],
           "requests": [{"request_id", "instance_uuid", "memory_mb", "root_gb", "vcpus"}]}
A chosen host's resources are consumed, as Nova's HostState.consume_from_request does.
"""

import json
import logging as pylogging
import sys
import time
import warnings

from oslo_context import context
from oslo_log import log as logging
from oslo_logging_setup import setup_nova_logging

warnings.simplefilter("ignore")
import oslo_messaging  # noqa: E402

scenario_path, log_path, notifications_path = sys.argv[1:4]
scenario = json.loads(open(scenario_path).read())

CONF = setup_nova_logging(log_path)
FILTERS_LOG = logging.getLogger("nova.filters")
SCHED_LOG = logging.getLogger("nova.scheduler.filter_scheduler")
UTILS_LOG = logging.getLogger("nova.scheduler.utils")

# notifications: oslo.messaging's log driver hands each envelope as JSON to a Python logger
notify_logger = pylogging.getLogger("oslo.messaging.notification")
notify_handler = pylogging.FileHandler(notifications_path, mode="w")
notify_handler.setFormatter(pylogging.Formatter("%(message)s"))
notify_logger.addHandler(notify_handler)
notify_logger.setLevel(pylogging.DEBUG)
notify_logger.propagate = False
transport = oslo_messaging.get_notification_transport(CONF, url="fake:/")
notifier = oslo_messaging.Notifier(transport, publisher_id="nova-scheduler:controller",
                                   driver="log", topics=["versioned_notifications"])


class HostState:
    def __init__(self, h):
        self.host = self.nodename = h["host"]
        self.free_ram_mb, self.free_disk_mb = h["free_ram_mb"], h["free_disk_mb"]
        self.vcpus_free, self.enabled = h.get("vcpus_free", 8), h.get("enabled", True)
        self.num_io_ops = self.num_instances = 0

    def __repr__(self):  # Nova's HostState.__repr__
        return ("(%(host)s, %(node)s) ram: %(free_ram)sMB disk: %(free_disk)sMB io_ops: "
                "%(num_io_ops)s instances: %(num_instances)s"
                % {"host": self.host, "node": self.nodename, "free_ram": self.free_ram_mb,
                   "free_disk": self.free_disk_mb, "num_io_ops": self.num_io_ops,
                   "num_instances": self.num_instances})


class WeighedHost:
    def __init__(self, obj, weight):
        self.obj, self.weight = obj, weight

    def __repr__(self):  # Nova's WeighedHost.__repr__
        return "WeighedHost [host: %r, weight: %s]" % (self.obj, self.weight)


PASSES = {
    "ComputeFilter": lambda h, r: h.enabled,
    "RamFilter": lambda h, r: h.free_ram_mb >= r["memory_mb"],
    "DiskFilter": lambda h, r: h.free_disk_mb >= r["root_gb"] * 1024,
    "CoreFilter": lambda h, r: h.vcpus_free >= r.get("vcpus", 1),
}


def filtered_hosts(hosts, request, ctx):
    objs = list(hosts)
    FILTERS_LOG.debug("Starting with %d host(s)", len(objs), context=ctx)
    part, full = [], []
    for cls_name in scenario["filters"]:
        start = len(objs)
        objs = [h for h in objs if PASSES[cls_name](h, request)]
        part.append("%(cls_name)s: (start: %(start)s, end: %(end)s)"
                    % {"cls_name": cls_name, "start": start, "end": len(objs)})
        if objs:
            full.append((cls_name, [(h.host, h.nodename) for h in objs]))
        else:
            FILTERS_LOG.info("Filter %s returned 0 hosts", cls_name, context=ctx)
            full.append((cls_name, None))
            break
        FILTERS_LOG.debug("Filter %(cls_name)s returned %(obj_len)d host(s)",
                          {"cls_name": cls_name, "obj_len": len(objs)}, context=ctx)
    if not objs:
        msg = ("Filtering removed all hosts for the request with instance ID '%(inst_uuid)s'. "
               "Filter results: %(str_results)s")
        FILTERS_LOG.debug(msg % {"inst_uuid": request["instance_uuid"], "str_results": str(full)}, context=ctx)
        FILTERS_LOG.info(msg % {"inst_uuid": request["instance_uuid"], "str_results": str(part)}, context=ctx)
    return objs


def weighed_hosts(hosts):
    # RAMWeigher, normalised to [0, 1] over the candidates (Nova's weights.normalize)
    rams = [h.free_ram_mb for h in hosts]
    lo, hi = min(rams), max(rams)
    weights = [0.0 if hi == lo else (r - lo) / (hi - lo) for r in rams]
    return sorted((WeighedHost(h, w) for h, w in zip(hosts, weights)), key=lambda w: w.weight, reverse=True)


hosts = [HostState(h) for h in scenario["hosts"]]
for req in scenario["requests"]:
    ctx = context.RequestContext(request_id=req["request_id"], user_id="admin", project_id="admin")
    payload = {"nova_object.name": "RequestSpecPayload", "nova_object.namespace": "nova",
               "nova_object.version": "1.1",
               "nova_object.data": {"instance_uuid": req["instance_uuid"], "num_instances": 1,
                                    "flavor": {"nova_object.name": "FlavorPayload",
                                               "nova_object.data": {"memory_mb": req["memory_mb"],
                                                                    "root_gb": req["root_gb"],
                                                                    "vcpus": req.get("vcpus", 1)}}}}
    notifier.info(ctx.to_dict(), "scheduler.select_destinations.start", payload)
    candidates = filtered_hosts(hosts, req, ctx)
    if candidates:
        SCHED_LOG.debug("Filtered %(hosts)s", {"hosts": candidates}, context=ctx)
        weighed = weighed_hosts(candidates)
        SCHED_LOG.debug("Weighed %(hosts)s", {"hosts": weighed}, context=ctx)
        chosen = weighed[0].obj
        SCHED_LOG.debug("Selected host: %(host)s", {"host": chosen}, context=ctx)
        chosen.free_ram_mb -= req["memory_mb"]
        chosen.free_disk_mb -= req["root_gb"] * 1024
        chosen.vcpus_free -= req.get("vcpus", 1)
        chosen.num_instances += 1
        time.sleep(0.002)
        notifier.info(ctx.to_dict(), "scheduler.select_destinations.end", payload)
    else:
        SCHED_LOG.debug("There are %(hosts)d hosts available but %(num_instances)d instances "
                        "requested to build.", {"hosts": 0, "num_instances": 1}, context=ctx)
        UTILS_LOG.warning("Failed to %(service)s_%(method)s: %(ex)s",
                          {"service": "compute_task", "method": "build_instances",
                           "ex": "No valid host was found. There are not enough hosts available."},
                          context=ctx, instance={"uuid": req["instance_uuid"]})
        # Nova raises NoValidHost here: no .end notification is sent
