"""Notification listener: sustained rate into the store with zero loss, vs the broker's own
publish rate measured in the same run.

A private RabbitMQ on 127.0.0.1; P publisher processes send N persistent 2 KB notifications
in oslo.messaging's AMQP v2 envelope (raw py-amqp in confirm mode) to the
`nova` exchange, topic `notifications.info`, while the listener (a worker process, durable
writes on) consumes. Figures: publish rate (first publish → last broker confirm), listener
rate (first publish → the listener's last durable write, from its own status), their ratio, and the loss
and duplicate counts read back from the segments. Goal: ≥ 5 k notifications/s, 0 lost.
Then a backlog phase: N more published with the listener down (the broker's rate alone), and
a new listener's drain rate, which is the listener's own capacity (the live rate can only
follow the publishers).

usage: python bench/notification_listener.py [--n 60000] [--publishers 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import orjson

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


# py-amqp sets TCP_USER_TIMEOUT to 1 s on its sockets: when RabbitMQ applies flow control it
# stops reading a publisher's socket, the send window stays closed for more than a second and
# the kernel drops the connection ("basic_publish: timed out"), which is why 60 k runs used
# to fail. 0 = the system default (no user timeout).
NO_USER_TIMEOUT = {socket.TCP_USER_TIMEOUT: 0}


def publish(port: int, seqs: range, out: mp.Queue, start: mp.Event) -> None:
    """Publish `seqs` in confirm mode; report (t0, t_last_confirm) in time.time()."""
    try:
        import amqp
        conn = amqp.Connection(f"127.0.0.1:{port}", userid="guest", password="guest",
                               socket_settings=NO_USER_TIMEOUT)
        conn.connect()
        ch = conn.channel()
        bodies = [envelope(s) for s in seqs]  # built before the clock starts
        confirms = Confirms(len(bodies))
        ch.events["basic_ack"].add(confirms.ack)
        ch.events["basic_nack"].add(confirms.nack)
        ch.confirm_select()
        out.put(("ready", len(bodies)))
        start.wait(60)
        t0 = time.time()
        for i, body in enumerate(bodies):
            ch.basic_publish(amqp.Message(body, delivery_mode=2, content_type="application/json",
                                          content_encoding="utf-8"),
                             exchange="nova", routing_key="notifications.info")
            if i % 256 == 255:
                _poll(conn)  # read the confirms as they come (they are counted, not awaited)
        deadline = time.monotonic() + 300
        while not confirms.done() and time.monotonic() < deadline:
            _poll(conn, 0.5)
        t1 = time.time()
        conn.close()
        if not confirms.done():
            raise RuntimeError(f"only {confirms.count()} of {len(bodies)} publishes confirmed")
        if confirms.nacked:
            raise RuntimeError(f"{confirms.nacked} publishes refused (nack) by the broker")
        out.put(("done", t0, t1))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def _poll(conn, timeout: float = 0) -> None:
    try:
        conn.drain_events(timeout=timeout)
    except socket.timeout:
        pass


class Confirms:
    """Publisher confirms of delivery tags 1..n (`multiple` acks cover every tag up to theirs)."""

    def __init__(self, n: int):
        self.n, self.floor, self.singles, self.nacked = n, 0, set(), 0

    def ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.floor = max(self.floor, tag)
            self.singles = {t for t in self.singles if t > self.floor}
        elif tag > self.floor:
            self.singles.add(tag)

    def nack(self, tag: int, multiple: bool, *_) -> None:
        self.nacked += 1
        self.ack(tag, multiple)

    def count(self) -> int:
        return self.floor + len(self.singles)

    def done(self) -> bool:
        return self.count() >= self.n


def _get(q: mp.Queue, timeout: float):
    msg = q.get(timeout=timeout)
    if msg[0] == "error":
        raise SystemExit(f"publisher failed:\n{msg[1]}")
    return msg


def run_publishers(port: int, seqs: range, publishers: int, budget: float) -> tuple[float, float]:
    """Publish `seqs` from `publishers` processes started together; (first publish, last
    confirm) in time.time()."""
    q: mp.Queue = mp.Queue()
    go = mp.Event()
    per = -(-len(seqs) // publishers)
    parts = [seqs[i * per:(i + 1) * per] for i in range(publishers)]
    procs = [mp.Process(target=publish, args=(port, part, q, go)) for part in parts if len(part)]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            _get(q, 120)
        go.set()
        done = [_get(q, budget) for _ in procs]
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    return min(d[1] for d in done), max(d[2] for d in done)


def start_listener(conf: Path, err: Path) -> subprocess.Popen:
    status = Path(json.loads(conf.read_text())["out"]) / ".status.json"
    status.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "stacklens.collect.worker", "notifications", str(conf)],
                            cwd=ROOT, stderr=open(err, "ab"))
    deadline = time.monotonic() + 60
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not status.exists():
        raise SystemExit("the listener did not start: " + err.read_text()[-2000:])
    return proc


def wait_written(status: Path, n: int, budget: float) -> dict:
    """The listener's status once it has written n (its counter is rewritten each second)."""
    deadline = time.monotonic() + budget
    stats: dict = {}
    while time.monotonic() < deadline:
        try:
            stats = json.loads(status.read_text())
        except (OSError, ValueError):
            pass
        if stats.get("written", 0) >= n:
            break
        time.sleep(0.2)
    return stats


def stop_listener(proc: subprocess.Popen, status: Path) -> dict:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return json.loads(status.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--publishers", type=int, default=3)
    a = ap.parse_args()
    budget = 60 + a.n / 500  # every wait: 500 msg/s at worst
    with tempfile.TemporaryDirectory(prefix="stacklens-bench-") as tmp:
        tmp = Path(tmp)
        broker = LocalRabbit(tmp / "rabbit").start()
        listener = None
        try:
            out = tmp / "segments"
            conf = tmp / "listener.json"
            conf.write_text(json.dumps({"url": broker.url, "out": str(out), "exchanges": ["nova"]}))
            status = out / ".status.json"
            # 1. live: publishers and listener at the same time
            listener = start_listener(conf, tmp / "listener.err")
            pub0, pub1 = run_publishers(broker.port, range(0, a.n), a.publishers, budget)
            wait_written(status, a.n, budget)
            live = stop_listener(listener, status)
            # 2. backlog: published while the listener is down, then drained by a new one
            bpub0, bpub1 = run_publishers(broker.port, range(a.n, 2 * a.n), a.publishers, budget)
            listener = start_listener(conf, tmp / "listener.err")
            wait_written(status, a.n, budget)
            backlog = stop_listener(listener, status)
        finally:
            if listener and listener.poll() is None:
                listener.kill()
            broker.close()
        counts: dict[int, int] = {}
        for seg in sealed_segments(out):
            for line in seg.read_bytes().splitlines():
                seq = orjson.loads(orjson.loads(line)["oslo.message"])["payload"]["seq"]
                counts[seq] = counts.get(seq, 0) + 1
        lost = sum(1 for s in range(2 * a.n) if s not in counts)
        dups = sum(c - 1 for c in counts.values())
        pub_rate = a.n / (pub1 - pub0)
        lis_rate = a.n / max(live["last_write_at"] - pub0, 1e-9)
        alone_rate = a.n / (bpub1 - bpub0)
        drain_rate = backlog["written"] / max(backlog["last_write_at"] - backlog["first_write_at"], 1e-9)
        print(f"notifications: 2 x {a.n} x {len(envelope(0))} B, {a.publishers} publishers "
              f"(py-amqp, persistent, publisher confirms), listener durable (fdatasync before ack)")
        print("live (publishing and consuming at once):")
        print(f"  broker publish rate      {pub_rate:10.0f} msg/s (first publish → last confirm)")
        print(f"  listener into segments   {lis_rate:10.0f} msg/s (first publish → last durable write)")
        print(f"  ratio listener/publish   {lis_rate / pub_rate:10.2f}")
        print(f"  listener cpu {live.get('cpu_s', 0):.1f} s ({1e6 * live.get('cpu_s', 0) / a.n:.0f} µs/msg), "
              f"{live.get('batches')} durable batches")
        print("backlog (published with the listener down, then drained):")
        print(f"  broker publish rate      {alone_rate:10.0f} msg/s (no consumer)")
        print(f"  listener drain rate      {drain_rate:10.0f} msg/s (first → last durable write)")
        print(f"  ratio drain/publish      {drain_rate / alone_rate:10.2f}")
        clean = lost == 0 and dups == 0
        print(f"lost {lost}, duplicates {dups} (of {2 * a.n})")
        # live, the listener can only follow the publishers (ratio ~1 = it keeps up); its own
        # capacity is the backlog drain rate
        print(f"goal ≥ {GOAL}/s into the store, 0 lost: live {'met' if clean and lis_rate >= GOAL else 'NOT met'}"
              f" ({lis_rate:.0f}/s), backlog drain {'met' if clean and drain_rate >= GOAL else 'NOT met'}"
              f" ({drain_rate:.0f}/s)")


if __name__ == "__main__":
    main()
