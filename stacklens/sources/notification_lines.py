"""oslo.messaging notification envelopes, one JSON object per line (SPEC §3).

    {"message_id": "…", "publisher_id": "nova-compute:lab-dst", "event_type":
     "instance.live_migration_pre.start", "priority": "INFO", "payload": {…}, "timestamp":
     "2026-11-21 15:12:00.753535"}

This is what oslo.messaging's `log` notification driver writes (the lab captures it so), and
what a listener dumping envelopes writes. Rows: name = event_type, request_id and instance
from the payload (versioned `nova_object.data` or legacy flat payload), procname = the
publishing service; fields keep publisher_id, priority, message_id and the payload.

Minimal on purpose: the application layer's full notification handling (AMQP wrapping,
RabbitMQ dumps, $ref samples) belongs to the Nova notification readers (issue 4).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader


class NotificationLinesReader(Reader):
    format = "notification.jsonl"
    layer = "app"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        lines = [ln for ln in head.splitlines()[:10] if ln.strip()]
        if len(head) == 16384 and len(lines) > 1:
            lines = lines[:-1]
        good = 0
        for ln in lines:
            try:
                msg = json.loads(ln)
            except ValueError:
                continue
            if isinstance(msg, dict) and {"event_type", "publisher_id", "payload"} <= msg.keys():
                good += 1
        return good >= 1 and good >= (len(lines) + 1) // 2

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        lines = data.split(b"\n")
        ts, names, req, inst, proc, fields, pos = [], [], [], [], [], [], []
        for i, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                msg = json.loads(raw)
                stamp = dt.datetime.fromisoformat(str(msg["timestamp"]))
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=dt.timezone.utc)
                t = int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1000
                event_type = str(msg["event_type"])
                payload = msg.get("payload") or {}
            except (ValueError, KeyError, TypeError):
                self.report.skip(i)
                if i == len(lines) and not data.endswith(b"\n"):
                    self.report.notes.append(f"line {i} cut short (no newline): dropped")
                continue
            body = payload.get("nova_object.data", payload) if isinstance(payload, dict) else {}
            body = body if isinstance(body, dict) else {}
            publisher = str(msg.get("publisher_id") or "")
            ts.append(t)
            names.append(event_type)
            req.append(body.get("request_id") or msg.get("_context_request_id"))
            inst.append(body.get("uuid") or body.get("instance_id"))
            proc.append(publisher.split(":", 1)[0] or None)
            fields.append(json.dumps({
                "publisher_id": publisher, "publisher_host": publisher.split(":", 1)[1] if ":" in publisher else None,
                "priority": msg.get("priority"), "message_id": msg.get("message_id"),
                "host": body.get("host"), "state": body.get("state"), "task_state": body.get("task_state"),
                "payload": payload}))
            pos.append(i)
        self.options.progress(len(data))
        if ts:
            self.report.rows += len(ts)
            yield pa.table({"ts": pa.array(ts, pa.int64()), "name": pa.array(names, pa.string()),
                            "procname": pa.array(proc, pa.string()), "request_id": pa.array(req, pa.string()),
                            "instance": pa.array(inst, pa.string()), "fields": pa.array(fields, pa.string()),
                            "pos": pa.array(pos, pa.int64())})
