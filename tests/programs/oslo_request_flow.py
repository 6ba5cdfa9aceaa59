"""One OpenStack-like service handling requests, logging through the real oslo.log as Nova does:
each request arrives with the caller's global_request_id and gets its own local request id
(oslo.context), and a failing request logs its exception with LOG.exception.

usage: oslo_request_flow.py LOGFILE SCENARIO.json SERVICE
SCENARIO: {"requests": [{"global_request_id", "instance", "fail_in": SERVICE or null,
                         "error": "text of the exception"}]}
Prints {global_request_id: local request id} as JSON (what this service logged for each).
"""

import json
import sys

from oslo_context import context
from oslo_log import log as logging
from oslo_logging_setup import setup_nova_logging

log_path, scenario_path, service = sys.argv[1:4]
scenario = json.loads(open(scenario_path).read())

setup_nova_logging(log_path)
LOG = logging.getLogger("nova.api.openstack.wsgi" if service == "nova-api" else "nova.compute.manager")


class BuildAbortException(Exception):
    pass


local_ids = {}
LOG.info("%s starting", service)
for req in scenario["requests"]:
    ctx = context.RequestContext(user_id="user-a", project_id="project-a",
                                 global_request_id=req["global_request_id"])
    local_ids[req["global_request_id"]] = ctx.request_id
    instance = {"uuid": req["instance"]}
    if service == "nova-api":
        LOG.info("POST /v2.1/servers accepted", context=ctx)
    else:
        LOG.debug("Starting instance...", context=ctx, instance=instance)
    if req.get("fail_in") == service:
        try:
            raise BuildAbortException(req["error"])
        except BuildAbortException:
            LOG.exception("Build of instance aborted: %s", req["error"], context=ctx, instance=instance)
    else:
        LOG.info("request done", context=ctx, instance=instance)
print(json.dumps(local_ids))
