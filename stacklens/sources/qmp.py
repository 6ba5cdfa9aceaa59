"""QMP records: what a QEMU monitor said, one JSON message per line (SPEC §3).

    {"timestamp": {"seconds": 1795273826, "microseconds": 12854}, "event": "MIGRATION", "data": {"status": "active"}}
    {"return": {"status": "active", "total-time": 7935, "ram": {...}}, "command": "query-migrate",
     "timestamp": {"seconds": 1795273826, "microseconds": 12854}}

Events carry QEMU's timestamp. Replies carry none in QMP itself: the recorder (the lab's
client, the agent's QMP poller) adds the reception time in the same form and the name of
the command (`command`). Events become rows named after the event (MIGRATION,
MIGRATION_PASS, STOP, RESUME, …) with `data` as fields; replies become rows named after the
command with the reply as fields. The VM is named by the file (`qemu-<vm>.qmp.jsonl`) or by a
`query-name` reply; a `query-uuid` reply gives the instance uuid of every row.

QMP traffic is a few messages per second, so lines are decoded one by one with `json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader
from stacklens.sources.qemu_trace import vm_from_filename
from stacklens.sources.timefmt import fits_int64

NULL_UUID = "00000000-0000-0000-0000-000000000000"


class QmpReader(Reader):
    """JSON lines of QMP events and timestamped command replies."""

    format = "qmp"
    layer = "virt"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        lines = [ln for ln in head.splitlines()[:20] if ln.strip()]
        if len(head) == 16384 and len(lines) > 1:
            lines = lines[:-1]
        good = 0
        for ln in lines:
            try:
                msg = json.loads(ln)
            except ValueError:
                continue
            if isinstance(msg, dict) and _is_qmp(msg):
                good += 1
        return good >= 1 and good >= (len(lines) + 1) // 2

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines and lines[-1].strip():
            cut_at = len(lines)
            try:
                json.loads(lines[-1])
            except ValueError:
                lines.pop()
                self.report.skip(cut_at)
                self.report.notes.append(f"line {cut_at} cut short (no newline, not complete JSON): dropped")
        vm = vm_from_filename(self.path.name)
        uuid = None
        ts, names, fields, pos = [], [], [], []
        for i, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                msg = json.loads(raw)
                stamp = msg["timestamp"]
                usec = int(stamp["microseconds"])
                t = int(stamp["seconds"]) * 1_000_000_000 + usec * 1000
                if not 0 <= usec < 1_000_000:
                    raise ValueError("microseconds")
            except (ValueError, KeyError, TypeError, OverflowError):
                self.report.skip(i)
                continue
            if not fits_int64(t):
                self.report.skip_out_of_range([i])
                continue
            if "event" in msg:
                name, body = str(msg["event"]), msg.get("data", {})
            elif "return" in msg or "error" in msg:
                name = str(msg.get("command") or "reply")
                body = msg["return"] if "return" in msg else {"error": msg["error"]}
                if name == "query-name" and isinstance(body, dict) and body.get("name"):
                    vm = vm or body["name"]
                if name == "query-uuid" and isinstance(body, dict) and body.get("UUID") not in (None, NULL_UUID):
                    uuid = body["UUID"]
            elif "QMP" in msg:
                name, body = "QMP", msg["QMP"]
            else:
                self.report.skip(i)
                continue
            ts.append(t)
            names.append(name)
            # Replies are nested objects; keep them whole (DuckDB reads fields->'ram'->>'…').
            fields.append(json.dumps(body if isinstance(body, dict) else {"value": body}))
            pos.append(i)
        self.options.progress(len(data))
        if not ts:
            return
        n = len(ts)
        self.report.rows += n
        yield pa.table({
            "ts": pa.array(ts, pa.int64()),
            "name": pa.array(names, pa.string()),
            "procname": pa.repeat(pa.scalar(vm, pa.string()), n),
            "instance": pa.repeat(pa.scalar(uuid, pa.string()), n),
            "fields": pa.array(fields, pa.string()),
            "pos": pa.array(pos, pa.int64()),
        })


def _is_qmp(msg: dict) -> bool:
    stamp = msg.get("timestamp")
    if not isinstance(stamp, dict) or "seconds" not in stamp or "microseconds" not in stamp:
        return "QMP" in msg
    return "event" in msg or "return" in msg or "error" in msg
