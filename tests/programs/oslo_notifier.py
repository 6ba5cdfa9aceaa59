"""A publisher process: N notifications through the real oslo.messaging (rabbit driver).

usage: oslo_notifier.py URL N [--exchanges nova,neutron] [--pace S] [--progress FILE]
Every notification carries `seq` (0..N-1) in its payload: the test's oracle. Even seqs go to
the legacy `notifications` topic, odd ones to `versioned_notifications`; exchanges rotate.
Durable exchanges and persistent messages ([oslo_messaging_rabbit] amqp_durable_queues), as a
deployment that cares about broker restarts configures them.
"""

import argparse
import os
import tempfile
import sys
import time

from oslo_config import cfg
import oslo_messaging


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("n", type=int)
    ap.add_argument("--exchanges", default="nova,neutron")
    ap.add_argument("--pace", type=float, default=0.0, help="seconds between notifications")
    ap.add_argument("--progress", default=None, help="file where the count sent so far is written")
    ap.add_argument("--pad", type=int, default=0, help="bytes of padding in the payload")
    a = ap.parse_args()

    notifiers = []
    for ex in a.exchanges.split(","):
        # configured the way a service is: its config file names the exchange and durability
        conf_file = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
        conf_file.write(f"[DEFAULT]\ncontrol_exchange = {ex}\ntransport_url = {a.url}\n"
                        "[oslo_messaging_rabbit]\namqp_durable_queues = true\n")
        conf_file.close()
        conf = cfg.ConfigOpts()
        conf(["--config-file", conf_file.name], project=ex)
        transport = oslo_messaging.get_notification_transport(conf)
        os.unlink(conf_file.name)
        for topic in ("notifications", "versioned_notifications"):
            notifiers.append(oslo_messaging.Notifier(
                transport, publisher_id=f"{ex}-compute:node1", driver="messagingv2",
                topics=[topic], retry=-1))
    # a real request context (oslo discards plain dict contexts)
    from oslo_context import context as oslo_context
    pad = "x" * a.pad
    for seq in range(a.n):
        notifier = notifiers[seq % len(notifiers)]
        ctx = oslo_context.RequestContext(request_id=f"req-{seq:08d}-0000-4000-8000-000000000000",
                                          user_id="u1", project_id="p1")
        payload = {"seq": seq, "instance_id": f"inst-{seq % 7}", "pad": pad}
        notifier.info(ctx, "compute.instance.update", payload)
        if a.progress and seq % 50 == 0:
            with open(a.progress, "w") as f:
                f.write(str(seq))
        if a.pace:
            time.sleep(a.pace)
    if a.progress:
        with open(a.progress, "w") as f:
            f.write(str(a.n))
    print("sent", a.n, file=sys.stderr)


if __name__ == "__main__":
    main()
