"""`stacklens events`: a filtered listing of the event table."""

from __future__ import annotations

import json

from stacklens.store.store import Store
from stacklens.views.terminal import emit_json, fmt_ts

COLUMNS = ["ts", "host", "layer", "source", "name", "cpu", "pid", "tid", "procname", "request_id",
           "instance", "fields"]


def query_events(store: Store, name: str | None = None, host: str | None = None,
                 layer: str | None = None, request: str | None = None, start: int | None = None,
                 end: int | None = None, limit: int = 50) -> list[dict]:
    where, params = [], []
    for col, val in (("host", host), ("layer", layer), ("request_id", request)):
        if val is not None:
            where.append(f"{col} = ?")
            params.append(val)
    if name is not None:
        where.append("name LIKE ?" if "%" in name or "_" in name else "name = ?")
        params.append(name)
    if start is not None:
        where.append("ts >= ?")
        params.append(start)
    if end is not None:
        where.append("ts < ?")
        params.append(end)
    con = store.connect(host=host, layer=layer)
    sql = (f"SELECT {', '.join(COLUMNS)} FROM events"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY ts, src, pos" + (f" LIMIT {int(limit)}" if limit else ""))
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


MESSAGE_KEYS = ("message", "msg", "payload_message")


SUMMARY_CHARS = 160


def event_message(fields: dict) -> str:
    """What an event says in words: its log message when it has one, else its fields as
    `key=value` (kernel, QEMU and OvS events have no message), the oslo.messaging context
    left out and cut at SUMMARY_CHARS (`--fields` prints them whole)."""
    for k in MESSAGE_KEYS:
        v = fields.get(k)
        if isinstance(v, str) and v:
            return " ".join(v.split())  # one line: newlines and runs of blanks folded
    text = " ".join(f"{k}={_value(v)}" for k, v in fields.items() if not k.startswith("_context_"))
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _value(v) -> str:  # noqa: ANN001
    if isinstance(v, (dict, list)):
        v = json.dumps(v, separators=(",", ":"), default=str)
    return " ".join(str(v).split())


def event_line(r: dict, wanted: list[str] | None = None, width: int | None = None) -> str:
    """One line: time, host, layer, name, [pid/tid], request id, message; `wanted` fields as
    key=value after it (`["all"]`: every field)."""
    fields = json.loads(r["fields"]) if r["fields"] else {}
    who = f"[{r['pid'] if r['pid'] is not None else '-'}/{r['tid']}]" if r["tid"] is not None else ""
    head = " ".join(x for x in (fmt_ts(r["ts"]), r["host"], r["layer"], r["name"], who, r["request_id"] or "") if x)
    text = event_message(fields)
    if wanted:
        keys = list(fields) if wanted == ["all"] else wanted
        extra = " ".join(f"{k}={_value(fields[k])}" for k in keys if k in fields and k not in MESSAGE_KEYS)
        text = (text + "  " + extra) if extra and any(k in fields for k in MESSAGE_KEYS) else (extra or text)
    line = f"{head}  {text}" if text else head
    if width and len(line) > width:
        line = line[: width - 1] + "…"
    return line


def show_events(store: Store, json_out: bool = False, fields: str | None = None, **filters) -> None:  # noqa: ANN003
    """One line per event (message, or key=value for events without one); `fields`: a comma
    list of fields to add, or `all`. Lines are cut to the terminal's width, not when piped."""
    import shutil
    import sys
    rows = query_events(store, **filters)
    if json_out:
        emit_json([{**r, "fields": json.loads(r["fields"]) if r["fields"] else {}} for r in rows])
        return
    wanted = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() and not wanted else None
    out = sys.stdout
    for r in rows:
        out.write(event_line(r, wanted, width) + "\n")
