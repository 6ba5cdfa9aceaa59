"""A small service logging through oslo.log's JSONFormatter, for the JSON log reader's tests.

usage: oslo_json_writer.py LOGFILE
"""

import logging
import sys

from oslo_context import context
from oslo_log import formatters

handler = logging.FileHandler(sys.argv[1])
handler.setFormatter(formatters.JSONFormatter())
LOG = logging.getLogger("nova.compute.manager")
LOG.addHandler(handler)
LOG.setLevel(logging.DEBUG)

ctx = context.RequestContext(user_id="user-a", project_id="project-a",
                             global_request_id="req-11111111-2222-3333-4444-555555555555")
LOG.info("service starting")
LOG.info("building instance", extra={"context": ctx})
try:
    raise RuntimeError("disk full")
except RuntimeError:
    LOG.exception("spawn failed", extra={"context": ctx})
LOG.debug("Took 12.34 seconds to spawn the instance on the hypervisor.", extra={"context": ctx})
