"""A small service that logs through the real oslo.log, for the oslo.log reader's tests.

usage: oslo_log_writer.py LOGFILE
Writes records with and without a request context, an exception with its traceback, and an
instance-scoped warning, exactly as a Nova service configured with oslo.log would.
"""

import sys

from oslo_context import context
from oslo_log import log as logging
from oslo_logging_setup import setup_nova_logging

setup_nova_logging(sys.argv[1], "stacklens-test")
LOG = logging.getLogger("nova.compute.manager")

LOG.info("service starting")  # no context yet: oslo.log writes [-]
ctx = context.RequestContext(user_id="user-a", project_id="project-a",
                             global_request_id="req-11111111-2222-3333-4444-555555555555")
LOG.info("with context", context=ctx)
try:
    {}["missing"]
except KeyError:
    LOG.exception("build failed", context=ctx)
LOG.warning("instance is slow", context=ctx,
            instance={"uuid": "6d2a5a44-7a8f-4a36-9a36-0d6b1c1f3b3e"})
try:
    raise RuntimeError("disk full")
except RuntimeError:
    LOG.exception("spawn failed", context=ctx,
                  instance={"uuid": "6d2a5a44-7a8f-4a36-9a36-0d6b1c1f3b3e"})
print(ctx.request_id)
