"""Request flow (SPEC §4): for one request id (or global_request_id), every task span and log
record on every service and host, the RPC hops seen on the bus, the waits between services,
the critical path, and the warnings and errors attached to the request.

RPC hops come from RabbitMQ firehose dumps: each request message goes to a topic (the routing
key: `conductor`, `scheduler`, `compute.HOST`); a call's reply is joined by `_msg_id`. The dump
has no capture time (an RPC message carries only its request context's creation time, shared
by every message of the request), so hops of one request are ordered by that time, then by
Nova's pipeline (api → conductor → scheduler → compute → network), then by position; the
caller of a hop is the target of the hop before it (DB-proxy `object_*` calls excepted, which
go from a compute node to the conductor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from stacklens.models.app_logs import log_records_sql
from stacklens.models.service_tasks import service_tasks

PIPELINE = ["api", "conductor", "scheduler", "compute", "network"]


@dataclass
class RequestFlow:
    request_id: str
    spans: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    hops: list[dict[str, Any]] = field(default_factory=list)
    waits: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    critical_path: list[dict[str, Any]] = field(default_factory=list)
    # the services the request went through, in the order it reached them (API → conductor →
    # scheduler → compute…), each with its host and the interval it was there
    path: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start_ts(self) -> int | None:
        ts = [s["start_ts"] for s in self.spans] + [r["ts"] for r in self.records]
        return min(ts) if ts else None

    @property
    def end_ts(self) -> int | None:
        ts = [s["end_ts"] or s["start_ts"] for s in self.spans] + [r["ts"] for r in self.records]
        return max(ts) if ts else None

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "start_ts": self.start_ts, "end_ts": self.end_ts,
                "spans": self.spans, "hops": self.hops, "waits": self.waits,
                "duration_ns": (self.end_ts - self.start_ts) if self.start_ts is not None else None,
                "path": self.path, "problems": self.problems, "critical_path": self.critical_path,
                "records": self.records}


def request_flow(con: duckdb.DuckDBPyConnection, request_id: str) -> RequestFlow:
    flow = RequestFlow(request_id)
    service_tasks(con)
    flow.spans = _dicts(con.execute(
        "SELECT task, worker, service, host, node, vmname, instance, volume, start_ts, end_ts,"
        " duration_ns, outcome FROM tasks WHERE request_id = ? ORDER BY start_ts", [request_id]))
    # oslo.log records once each (text and JSON copies: app_logs), other sources as they are;
    # the notifications are in the spans, except an error with no start (the conductor's
    # compute_task.*.error, a destination's compute.exception): those are records too
    logs = log_records_sql("request_id = $rid OR fields->>'$.global_request_id' = $rid")
    flow.records = _dicts(con.execute(f"""
        SELECT ts, host, source, logger AS name, procname, pid, instance, level, message, error_summary
        FROM ({logs}) l
        UNION ALL
        SELECT ts, host, source, name, procname, pid, instance, fields->>'$.level' AS level,
               coalesce(fields->>'$.message', fields->>'$.msg') AS message, NULL AS error_summary
        FROM events WHERE (request_id = $rid OR fields->>'$.global_request_id' = $rid)
          AND source NOT IN ('rabbitmq.dump', 'oslo.notification', 'oslo.log', 'oslo.log.json')
        UNION ALL
        SELECT ts, host, source, event_type AS name, service AS procname, NULL AS pid, instance,
               'ERROR' AS level, event_type || coalesce(': ' || fault, '') AS message,
               regexp_extract(fault, '^[^\n]*') AS error_summary
        FROM ops WHERE request_id = $rid
          AND (ends_with(event_type, '.error') OR event_type = 'compute.exception')
          AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.request_id = $rid AND t.end_ts = ops.ts
                          AND t.outcome = 'error' AND t.worker = ops.worker)
        ORDER BY ts""", {"rid": request_id}))
    flow.hops = _hops(con, request_id)
    flow.problems = [r for r in flow.records if (r.get("level") or "") in
                     ("WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")]
    flow.problems += [dict(s, level="ERROR", message=f"{s['task']} ended in error")
                      for s in flow.spans if s["outcome"] == "error"]
    # waits: between the end of one service's span and the start of the next service's span
    closed = sorted((s for s in flow.spans if s["end_ts"] is not None), key=lambda s: s["start_ts"])
    for a, b in zip(closed, closed[1:]):
        if a["worker"] != b["worker"] and b["start_ts"] > a["end_ts"]:
            flow.waits.append({"from": a["worker"], "to": b["worker"], "after": a["task"],
                               "before": b["task"], "wait_ns": b["start_ts"] - a["end_ts"]})
    flow.critical_path = critical_path(flow.spans)
    flow.path = service_path(flow)
    return flow


_SERVICE_OF_PUBLISHER = {"api": "nova-api", "compute": "nova-compute", "scheduler": "nova-scheduler",
                         "conductor": "nova-conductor", "compute_task": "nova-conductor"}


def service_path(flow: RequestFlow) -> list[dict[str, Any]]:
    """Where the request went: one entry per (service, host), ordered by first appearance,
    from its spans (the publisher's service) and its log records (the process)."""
    seen: dict[tuple, dict[str, Any]] = {}

    def visit(service: str | None, host: str | None, lo: int, hi: int, what: str) -> None:
        if not service:
            return
        service = _SERVICE_OF_PUBLISHER.get(service, service)
        e = seen.setdefault((service, host), {"service": service, "host": host, "start_ts": lo, "end_ts": hi,
                                              "spans": 0, "records": 0})
        e["start_ts"], e["end_ts"] = min(e["start_ts"], lo), max(e["end_ts"], hi)
        e[what] += 1
    for sp in flow.spans:
        visit(sp["service"], sp["host"], sp["start_ts"], sp["end_ts"] or sp["start_ts"], "spans")
    for r in flow.records:
        visit(r["procname"], r["host"], r["ts"], r["ts"], "records")
    path = list(seen.values())
    for e in path:
        e["reached_ts"] = e["start_ts"]
    # The scheduler works only when the conductor calls it (select_destinations): a conductor
    # that logged nothing before that call was reached before the scheduler all the same.
    sched = [e for e in path if e["service"] == "nova-scheduler"]
    for e in path:
        if e["service"] == "nova-conductor" and sched and e["start_ts"] > sched[0]["start_ts"]:
            e["reached_ts"] = sched[0]["start_ts"]
            e["reached_by"] = "inferred: the conductor calls the scheduler's select_destinations"
    rank = {s: i for i, s in enumerate(("nova-api", "nova-conductor", "nova-scheduler", "nova-compute"))}
    return sorted(path, key=lambda e: (e["reached_ts"], rank.get(e["service"], len(rank))))


def critical_path(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chain of spans (and the waits between them) that set the request's end-to-end time.

    Walking back from the span that ends last, each step takes the span that ended last
    before the current one started: that is the work the current span waited for. Spans
    nested inside a span of the path are covered by it. Segments come out in time order and
    add up to last end - first start of the path."""
    closed = [s for s in spans if s.get("end_ts") is not None]
    if not closed:
        return []
    latest = lambda cands: max(cands, key=lambda s: (s["end_ts"], -s["start_ts"]))  # noqa: E731
    path = [latest(closed)]
    taken = {id(path[0])}
    while True:
        # a zero-length span ends where it starts: never take a span twice (no endless walk)
        before = [s for s in closed if s["end_ts"] <= path[-1]["start_ts"] and id(s) not in taken]
        if not before:
            break
        path.append(latest(before))
        taken.add(id(path[-1]))
    path.reverse()
    out: list[dict[str, Any]] = []
    for prev, span in zip([None] + path[:-1], path):
        if prev is not None and span["start_ts"] > prev["end_ts"]:
            out.append({"kind": "wait", "from": prev["worker"], "to": span["worker"],
                        "start_ts": prev["end_ts"], "end_ts": span["start_ts"],
                        "duration_ns": span["start_ts"] - prev["end_ts"]})
        out.append({"kind": "span", "task": span["task"], "worker": span["worker"],
                    "host": span.get("host"), "start_ts": span["start_ts"], "end_ts": span["end_ts"],
                    "duration_ns": span["end_ts"] - span["start_ts"]})
    return out


def _hops(con: duckdb.DuckDBPyConnection, request_id: str) -> list[dict[str, Any]]:
    rows = _dicts(con.execute("""
      SELECT q.ts, q.pos, q.fields->>'$.routing_key' AS topic, q.fields->>'$.method' AS method,
             q.fields->>'$.kind' AS kind, q.fields->>'$._msg_id' AS msg_id,
             q.fields->>'$._reply_q' AS reply_queue,
             count(r.pos) AS replies,
             max(CASE WHEN r.fields->>'$.failure' IS NOT NULL THEN r.fields->>'$.failure' END) AS failure,
             max(CASE WHEN r.fields->>'$.ending' IS NULL THEN CAST(r.fields->'$.result' AS VARCHAR) END) AS result
      FROM events q LEFT JOIN events r
        ON r.source = 'rabbitmq.dump' AND r.fields->>'$.kind' = 'reply'
       AND r.fields->>'$._msg_id' = q.fields->>'$._msg_id'
      WHERE q.source = 'rabbitmq.dump' AND q.request_id = ? AND q.fields->>'$.kind' IN ('call', 'cast')
      GROUP BY ALL
    """, [request_id]))

    def rank(h: dict) -> tuple:
        svc = h["topic"].split(".", 1)[0]
        r = PIPELINE.index(svc) if svc in PIPELINE else len(PIPELINE)
        if (h["method"] or "").startswith("object_"):  # sent by compute once it has the request
            r = PIPELINE.index("compute") + 0.5
        return (h["ts"], r, h["pos"])

    rows.sort(key=rank)
    caller = "api"
    for h in rows:
        h["service"] = h["topic"].split(".", 1)[0]
        h["host"] = h["topic"].split(".", 1)[1] if "." in h["topic"] else None
        if (h["method"] or "").startswith("object_"):
            h["caller"] = "compute"
        else:
            h["caller"], caller = caller, h["service"]
    return rows


def _dicts(result: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]
