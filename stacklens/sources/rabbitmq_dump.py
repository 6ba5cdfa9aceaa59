"""RabbitMQ firehose dumps as written by the thesis listener (../data/thesis/rabbitmq-dump).

A dump is a directory of `<routing key>.xml` files, each a series of `<event>` elements with
no root element (not well-formed XML, so no XML parser): every message's JSON was written as
nested tags, a list as repeated tags. Three kinds of message:
- notifications (`event_type`, `payload`, `timestamp`, `_context_*`) — `notifications.info`;
- RPC requests (`method`, `args`, `_context_*`, `_unique_id`; a *call* also has `_msg_id` and
  `_reply_q`, a *cast* has neither) — the routing key is the topic (`conductor`,
  `scheduler`, `compute.HOST`);
- RPC replies (`result`, `failure`, `ending`, `_msg_id`) — `reply_<queue>`.

Timestamps: a notification has its own; an RPC request only has `_context_timestamp` (when
the request context was created, shared by every message of the request); a reply has none
and takes its call's (`ts_inferred` says so). The dump has no capture time.

The directory is one part (read whole) because a reply's timestamp comes from another file.
The `fields` of a notification are the notification itself, as the notification reader
writes them, plus `kind` and `routing_key`, so models read both sources alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader
from stacklens.sources.timefmt import fits_int64

_TOKEN = re.compile(r"<(/?)([A-Za-z_][\w.\-:]*)>|([^<]+)")
_TS = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?")


class RabbitDumpReader(Reader):
    """A directory of firehose `<event>` dumps, one file per routing key."""

    format = "rabbitmq.dump"
    layer = "app"
    unit = "message"
    is_directory = True

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        files = _xml_files(path)
        if not files or any(p.is_dir() for p in path.iterdir() if not p.name.startswith(".")):
            return False
        for f in files[:3]:
            try:
                with open(f, "rb") as fh:
                    if not fh.read(256).lstrip().startswith(b"<event>"):
                        return False
            except OSError:
                return False
        return True

    def tables(self) -> Iterator[pa.Table]:
        rows: list[dict[str, Any]] = []
        pos = 0
        for f in _xml_files(self.path):
            try:
                text = f.read_text("utf-8", "replace")
            except OSError as e:
                raise SourceError(f, f"cannot read: {e.strerror}") from None
            routing_key = f.stem
            for chunk in text.split("<event>")[1:]:
                pos += 1
                body = chunk.rsplit("</event>", 1)[0]
                try:
                    msg = parse_elements(body)
                except ValueError as e:
                    self.report.skip(pos)
                    self.report.notes.append(f"{f.name}: message {pos}: {e}")
                    continue
                rows.append({"pos": pos, "routing_key": routing_key, "msg": msg})
            self.options.progress(f.stat().st_size)
        call_ts = {}
        for r in rows:
            m = r["msg"]
            if "method" in m and m.get("_msg_id"):
                call_ts[m["_msg_id"]] = epoch_ns(m.get("_context_timestamp"))
        out = {k: [] for k in ("ts", "pos", "name", "procname", "request_id", "instance", "fields")}
        for r in rows:
            m, rk = r["msg"], r["routing_key"]
            inferred = False
            if "event_type" in m:
                kind, name = "notification", m["event_type"]
                ts = epoch_ns(m.get("timestamp")) or epoch_ns(m.get("_context_timestamp"))
                payload = m.get("payload") if isinstance(m.get("payload"), dict) else {}
                instance = payload.get("instance_id")
                procname = str(m.get("publisher_id") or "").split(".", 1)[0] or None
            elif "method" in m:
                kind = "call" if m.get("_msg_id") else "cast"
                name = f"rpc.{m['method']}"
                ts = epoch_ns(m.get("_context_timestamp"))
                args = m.get("args") if isinstance(m.get("args"), dict) else {}
                instance = args.get("instance_id") or args.get("instance_uuid")
                procname = None
            elif "_msg_id" in m and ("result" in m or "failure" in m):
                kind, name = "reply", "rpc.reply"
                ts, inferred = call_ts.get(m["_msg_id"]), True
                instance, procname = None, None
            else:
                self.report.skip(r["pos"])
                continue
            if ts is None:
                self.report.skip(r["pos"])
                continue
            if not fits_int64(ts):
                self.report.skip_out_of_range([r["pos"]])
                continue
            fields = dict(m)
            fields["kind"] = kind
            fields["routing_key"] = rk
            if inferred:
                fields["ts_inferred"] = True
            out["ts"].append(ts)
            out["pos"].append(r["pos"])
            out["name"].append(name)
            out["procname"].append(procname)
            out["request_id"].append(m.get("_context_request_id"))
            out["instance"].append(instance)
            out["fields"].append(json.dumps(fields))
        if self.report.skipped > self.report.out_of_range:
            self.report.notes.append("messages without any timestamp (replies to unknown calls) skipped")
        self.report.rows = len(out["ts"])
        if out["ts"]:
            yield pa.table({"ts": pa.array(out["ts"], pa.int64()), "pos": pa.array(out["pos"], pa.int64()),
                            "name": out["name"], "procname": pa.array(out["procname"], pa.string()),
                            "request_id": pa.array(out["request_id"], pa.string()),
                            "instance": pa.array(out["instance"], pa.string()),
                            "fields": out["fields"]})


def _xml_files(path: Path) -> list[Path]:
    """The dump's files: regular files only (a FIFO named *.xml would block the reader)."""
    return sorted(p for p in path.glob("*.xml") if p.is_file())


def parse_elements(text: str) -> Any:
    """Nested `<tag>…</tag>` text → dict (repeated tags → list), leaf text → str/None/bool."""
    stack: list[tuple[str, dict, list[str]]] = [("", {}, [])]
    for close, tag, chars in _TOKEN.findall(text):
        if chars:
            stack[-1][2].append(chars)
        elif not close:
            stack.append((tag, {}, []))
        else:
            if len(stack) == 1 or stack[-1][0] != tag:
                raise ValueError(f"unbalanced </{tag}>")
            name, children, texts = stack.pop()
            value = children if children else _leaf("".join(texts).strip())
            parent = stack[-1][1]
            if name in parent:
                prev = parent[name]
                if isinstance(prev, _Rep):
                    prev.append(value)
                else:
                    parent[name] = _Rep([prev, value])
            else:
                parent[name] = value
    if len(stack) != 1:
        raise ValueError(f"unclosed <{stack[-1][0]}>")
    return _plain(stack[0][1])


class _Rep(list):
    """Values of a repeated tag (a JSON list in the original message)."""


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _leaf(s: str) -> Any:
    if s == "None":
        return None
    if s in ("True", "False"):
        return s == "True"
    return s


def epoch_ns(text: Any) -> int | None:
    """`2015-09-16 15:24:28.485549` / `2015-09-16T15:24:20.967704` (UTC) → ns since the epoch
    (a Python integer: the reader checks it fits int64)."""
    if not isinstance(text, str):
        return None
    m = _TS.match(text.strip())
    if not m:
        return None
    import calendar
    import time
    try:
        t = time.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return calendar.timegm(t) * 1_000_000_000 + int((m.group(3) or "0").ljust(9, "0"))
