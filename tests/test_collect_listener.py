"""The notification listener against a real RabbitMQ and the real oslo.messaging publisher.

Oracle: the publisher's own sequence numbers (payload `seq`, 0..N-1) and request ids; the
listener is killed with SIGKILL and the broker restarted while the publisher is running.
"""

from __future__ import annotations

import collections
import json
import signal
from pathlib import Path

import pytest

from stacklens.collect.broker import LocalRabbit
from stacklens.collect.segments import sealed_segments
from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.collect_helpers import PROGRAMS, need_rabbitmq, newlines_in, python, stop, wait_for

pytestmark = pytest.mark.timeout(240)
N = 2400


@pytest.fixture
def rabbit(tmp_path):
    need_rabbitmq()
    broker = LocalRabbit(tmp_path / "rabbit")
    broker.start()
    yield broker
    broker.close()


def _progress(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _segment_lines(out: Path) -> list[bytes]:
    return [line for seg in sealed_segments(out) for line in seg.read_bytes().splitlines()]


def test_no_loss_no_duplicates_across_kill9_and_broker_restart(rabbit, tmp_path):
    out = tmp_path / "segments"
    config = tmp_path / "listener.json"
    config.write_text(json.dumps({"url": rabbit.url, "out": str(out), "exchanges": ["nova", "neutron"],
                                  "seal_after_s": 1.0}))
    err = open(tmp_path / "listener.err", "ab")
    listener = python("-m", "stacklens.collect.worker", "notifications", str(config), stderr=err)
    publisher = None
    try:
        # the listener's queue exists before the first notification is published
        wait_for(lambda: _queue_declared(rabbit), 30, "the listener's queue")
        progress = tmp_path / "progress"
        publisher = python(str(PROGRAMS / "oslo_notifier.py"), rabbit.oslo_url, str(N),
                           "--progress", str(progress), "--pad", "1500",
                           stderr=open(tmp_path / "publisher.err", "ab"))
        wait_for(lambda: _progress(progress) >= N // 4 and newlines_in(out) > 0, 60, "first quarter")
        listener.send_signal(signal.SIGKILL)
        listener.wait(10)
        listener = python("-m", "stacklens.collect.worker", "notifications", str(config), stderr=err)
        wait_for(lambda: _progress(progress) >= N // 2, 60, "half published")
        rabbit.restart()
        assert publisher.wait(120) == 0, (tmp_path / "publisher.err").read_text()[-2000:]
        wait_for(lambda: newlines_in(out) >= N, 60, f"{N} notifications written", interval=0.3)
    finally:
        stop(publisher)
        stop(listener)
    assert listener.returncode == 0  # SIGTERM: clean stop, open segment sealed
    assert not list(out.glob("*.open"))
    # the second listener run saw the broker go away and come back
    assert json.loads((out / ".status.json").read_text())["reconnects"] >= 1

    lines = _segment_lines(out)
    inner = [json.loads(json.loads(line)["oslo.message"]) for line in lines]
    ids = collections.Counter(m["message_id"] for m in inner)
    assert sum(ids.values()) == N and max(ids.values()) == 1
    assert sorted(m["payload"]["seq"] for m in inner) == list(range(N))

    # the segments are what our notification reader recognises and reads
    store = Store(tmp_path / "store", create=True)
    results = ingest(store, [out])
    assert {r.format for r in results} == {"oslo.notification"}, [r.to_dict() for r in results]
    assert sum(r.skipped for r in results) == 0
    con = store.connect()
    rows = con.execute(
        "SELECT CAST(json_extract(fields, '$.payload.seq') AS BIGINT) AS seq, request_id, procname "
        "FROM events WHERE source = 'oslo.notification'").fetchall()
    assert len(rows) == N
    assert sorted(r[0] for r in rows) == list(range(N))
    assert all(r[1] == f"req-{r[0]:08d}-0000-4000-8000-000000000000" for r in rows)
    # exchanges rotate every two notifications in the publisher
    assert {r[2] for r in rows} == {"nova-compute", "neutron-compute"}


def _queue_declared(broker: LocalRabbit) -> bool:
    import amqp
    c = amqp.Connection(f"127.0.0.1:{broker.port}", userid="guest", password="guest")
    try:
        c.connect()
        ch = c.channel()
        try:
            ch.queue_declare("stacklens.notifications", passive=True)
            return True
        except amqp.exceptions.NotFound:
            return False
    finally:
        c.close()


def test_queue_is_bounded_and_leaves_ceilometer_queue_alone(rabbit, tmp_path):
    """The listener's queue has x-max-length; it never consumes from notifications.info."""
    import amqp
    out = tmp_path / "segments"
    config = tmp_path / "listener.json"
    config.write_text(json.dumps({"url": rabbit.url, "out": str(out), "exchanges": ["nova"],
                                  "max_length": 50}))
    listener = python("-m", "stacklens.collect.worker", "notifications", str(config),
                      stderr=open(tmp_path / "listener.err", "ab"))
    try:
        # its status file is written from the consuming loop, after the queue and all its
        # bindings are declared (a queue alone, not yet bound, would route nothing)
        wait_for(lambda: (out / ".status.json").exists(), 60, "the listener consuming")
    finally:
        stop(listener)
    assert listener.returncode == 0
    # Ceilometer's queue, bound like oslo binds it; then 80 messages while the listener is down.
    # Publisher confirms: the broker confirms a message once every queue it routes to has it
    # (and applied x-max-length), so the lengths read after the last confirm are final.
    conn = amqp.Connection(f"127.0.0.1:{rabbit.port}", userid="guest", password="guest")
    conn.connect()
    try:
        ch = conn.channel()
        ch.exchange_declare("nova", "topic", durable=True, auto_delete=False)
        ch.queue_declare("notifications.info", durable=True, auto_delete=False)
        ch.queue_bind("notifications.info", exchange="nova", routing_key="notifications.info")
        for i in range(80):
            body = json.dumps({"message_id": f"m{i}", "event_type": "x.y", "payload": {},
                               "timestamp": "2024-01-01 00:00:00.000000",
                               "publisher_id": "nova-api:h", "priority": "INFO"})
            # waits for the broker's basic.ack of this message (raises on a nack)
            ch.basic_publish_confirm(amqp.Message(body, delivery_mode=2), exchange="nova",
                                     routing_key="notifications.info", confirm_timeout=30)
        _, ours, _ = ch.queue_declare("stacklens.notifications", passive=True)
        _, theirs, _ = ch.queue_declare("notifications.info", passive=True)
    finally:
        conn.close()
    assert ours == 50       # bounded: the oldest dropped
    assert theirs == 80     # Ceilometer keeps every message
    # the listener drains its own queue (the newest 50) and leaves Ceilometer's untouched
    listener = python("-m", "stacklens.collect.worker", "notifications", str(config),
                      stderr=open(tmp_path / "listener.err", "ab"))
    try:
        wait_for(lambda: newlines_in(out) >= 50, 60, "50 written")
    finally:
        stop(listener)
    seqs = sorted(int(json.loads(l)["message_id"][1:]) for l in _segment_lines(out))
    assert seqs == list(range(30, 80))
    conn = amqp.Connection(f"127.0.0.1:{rabbit.port}", userid="guest", password="guest")
    conn.connect()
    try:
        _, theirs, _ = conn.channel().queue_declare("notifications.info", passive=True)
    finally:
        conn.close()
    assert theirs == 80
