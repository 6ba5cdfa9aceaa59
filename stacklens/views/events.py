"""`stacklens events`: a filtered listing of the event table."""

from __future__ import annotations

import json

from stacklens.store.store import Store
from stacklens.views.terminal import emit_json, fmt_ts, print_table

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


def show_events(store: Store, json_out: bool = False, **filters) -> None:  # noqa: ANN003
    rows = query_events(store, **filters)
    if json_out:
        emit_json([{**r, "fields": json.loads(r["fields"]) if r["fields"] else {}} for r in rows])
        return
    print_table(["time (UTC)", "host", "layer", "name", "pid", "tid", "request", "fields"],
                [(fmt_ts(r["ts"]), r["host"], r["layer"], r["name"], r["pid"], r["tid"],
                  r["request_id"], _short(r["fields"])) for r in rows])


def _short(s: str | None, n: int = 160) -> str:
    if not s:
        return ""
    return s if len(s) <= n else s[: n - 1] + "…"
