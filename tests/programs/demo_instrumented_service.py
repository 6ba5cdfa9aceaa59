"""A small service: oslo.log + oslo.messaging, instrumented by its config files only.

usage: demo_instrumented_service.py CONFIG_FILE N
For i in 0..N-1 it handles a "request" req-<i…> (a RequestContext), logs two records and
emits one notification through its configured notification driver.
"""

import sys

from oslo_config import cfg
from oslo_context import context
from oslo_log import log as logging
import oslo_messaging

LOG = logging.getLogger("demo.service")


def main() -> None:
    conf_file, n = sys.argv[1], int(sys.argv[2])
    conf = cfg.ConfigOpts()
    logging.register_options(conf)
    conf(["--config-file", conf_file], project="demo")
    logging.setup(conf, "demo")
    transport = oslo_messaging.get_notification_transport(conf)
    notifier = oslo_messaging.Notifier(transport, publisher_id="demo-api:node9")
    for i in range(n):
        ctx = context.RequestContext(request_id=f"req-{i:08d}-1111-4000-8000-000000000000",
                                     user_id="u", project_id="p")
        LOG.info("handling request %d", i, context=ctx)
        notifier.info(ctx, "demo.request.end", {"i": i})
        LOG.warning("request %d done", i, context=ctx)
    import logging as std_logging
    std_logging.shutdown()  # flushes our handler's buffer to the agent


if __name__ == "__main__":
    main()
