"""Notification listener: sustained rate into the store with zero loss, vs the broker's own
publish rate measured in the same run.

A private RabbitMQ on 127.0.0.1; P publisher processes send N persistent 2 KB notifications
in oslo.messaging's AMQP v2 envelope (raw py-amqp, one publisher confirm at the end) to the
`nova` exchange, topic `notifications.info`, while the listener (a worker process, durable
writes on) consumes. Figures: publish rate (broker-confirmed messages/s), listener rate
(durably written messages/s between its first and last write), their ratio, and the loss
and duplicate counts read back from the segments. Goal: ≥ 5 k notifications/s, 0 lost.

usage: python bench/notification_listener.py [--n 60000] [--publishers 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stacklens.collect.broker import LocalRabbit  # noqa: E402
from stacklens.collect.segments import sealed_segments  # noqa: E402

GOAL = 5000


def envelope(seq: int) -> bytes:
    inner = {"message_id": str(uuid.uuid4()), "publisher_id": "nova-compute:bench",
             "event_type": "compute.instance.update", "priority": "INFO",
             "payload": {"seq": seq, "pad": "x" * 1750}, "timestamp": "2024-05-01 10:00:00.000000",
             "_context_request_id": f"req-{uuid.uuid4()}"}
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()


def publish(port: int, seqs: range, out: mp.Queue) -> None:
    import amqp
    conn = amqp.Connection(f"127.0.0.1:{port}", userid="guest", password="guest")
    conn.connect()
    ch = conn.channel()
    bodies = [envelope(s) for s in seqs]  # built before the clock starts
    out.put(("ready", len(bodies)))
    t0 = time.perf_counter()
    for body in bodies:
        ch.basic_publish(amqp.Message(body, delivery_mode=2, content_type="application/json",
                                      content_encoding="utf-8"),
                         exchange="nova", routing_key="notifications.info")
    # one confirmed message on an unbound key: the broker confirms it after everything the
    # channel sent before it, so t1 is when the broker has taken all of them
    ch.basic_publish_confirm(amqp.Message(b"{}"), exchange="nova", routing_key="bench.sentinel")
    t1 = time.perf_counter()
    conn.close()
    out.put(("done", t0, t1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--publishers", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="stacklens-bench-") as tmp:
        tmp = Path(tmp)
        broker = LocalRabbit(tmp / "rabbit").start()
        listener = None
        try:
            out = tmp / "segments"
            conf = tmp / "listener.json"
            conf.write_text(json.dumps({"url": broker.url, "out": str(out), "exchanges": ["nova"]}))
            listener = subprocess.Popen([sys.executable, "-m", "stacklens.collect.worker", "notifications", str(conf)],
                                        cwd=ROOT, stderr=open(tmp / "listener.err", "ab"))
            status = out / ".status.json"
            deadline = time.monotonic() + 30
            while not status.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            q: mp.Queue = mp.Queue()
            per = -(-a.n // a.publishers)
            procs = [mp.Process(target=publish, args=(broker.port, range(i * per, min(a.n, (i + 1) * per)), q))
                     for i in range(a.publishers)]
            for p in procs:
                p.start()
            for _ in procs:
                q.get(timeout=120)
            # the listener's progress, sampled
            samples = []
            t_end = time.monotonic() + max(60, a.n / 1000)
            written = 0
            while time.monotonic() < t_end:
                try:
                    written = json.loads(status.read_text())["written"]
                except (OSError, ValueError, KeyError):
                    pass
                samples.append((time.perf_counter(), written))
                if written >= a.n:
                    break
                time.sleep(0.05)
            done = [q.get(timeout=120) for _ in procs]
            for p in procs:
                p.join(30)
            listener.send_signal(signal.SIGTERM)
            listener.wait(30)
        finally:
            if listener and listener.poll() is None:
                listener.kill()
            broker.close()
        t_pub0 = min(d[1] for d in done)
        t_pub1 = max(d[2] for d in done)
        first = next(t for t, w in samples if w > 0)
        last = next((t for t, w in samples if w >= a.n), samples[-1][0])
        ids = {}
        for seg in sealed_segments(out):
            for line in seg.read_bytes().splitlines():
                inner = json.loads(json.loads(line)["oslo.message"])
                ids[inner["payload"]["seq"]] = ids.get(inner["payload"]["seq"], 0) + 1
        lost = a.n - len(ids)
        dups = sum(c - 1 for c in ids.values())
        pub_rate = a.n / (t_pub1 - t_pub0)
        # the status file is rewritten once a second: the listener window is ±1 s
        lis_rate = a.n / max(last - t_pub0, 1e-9)
        print(f"notifications: {a.n} x {len(envelope(0))} B, {a.publishers} publishers (py-amqp, confirmed at the end)")
        print(f"broker publish rate      {pub_rate:10.0f} msg/s")
        print(f"listener into segments   {lis_rate:10.0f} msg/s (first publish → last durable write)")
        print(f"ratio listener/publish   {lis_rate / pub_rate:10.2f}")
        print(f"lost {lost}, duplicates {dups}; goal ≥ {GOAL}/s: {'met' if lis_rate >= GOAL and lost == 0 else 'NOT met'}")


if __name__ == "__main__":
    main()
