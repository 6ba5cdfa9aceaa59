"""Scheduling context (SPEC §4): why nova-scheduler chose a host, or why it found none.

From nova-scheduler's debug log records (oslo.log text or JSON, already in the store), per
request id and scheduling round (one round per "Starting with N host(s)"):
- the filter chain: "Filter X returned N host(s)" (nova/filters.py), with the hosts each
  filter removed as a count, and by name when Nova logs its full results (NoValidHost case:
  "Filtering removed all hosts for the request with instance ID '…'. Filter results: [...]");
- the candidates after filtering ("Filtered [HostState, …]") and the weighed hosts with their
  weights ("Weighed [WeighedHost [host: (host, node) ram: …, weight: W], …]");
- the selected host ("Selected host: (host, node) …", or the older "Choosing host
  WeighedHost [host: …] for instance …");
- NoValidHost: the filter that returned 0 hosts, and the conductor's "No valid host was found".
Each decision is joined with its select_destinations task (notification or thesis record)
for the duration: by request id, else by instance uuid, else by time on the same host.

The log records are a handful per request, so the parsing is plain Python over the rows
DuckDB selects (the selection itself is columnar).
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from stacklens.models.app_logs import log_records_sql
from stacklens.models.service_tasks import service_tasks

_WANTED = r"""(name = 'nova.filters' OR name LIKE 'nova.scheduler.%' OR name LIKE 'nova.conductor.%')
  AND (fields->>'$.message' LIKE 'Starting with %' OR fields->>'$.message' LIKE 'Filter%'
       OR fields->>'$.message' LIKE 'Weighed %' OR fields->>'$.message' LIKE '%Selected host:%'
       OR fields->>'$.message' LIKE '%Choosing host %' OR fields->>'$.message' LIKE '%No valid host%'
       OR fields->>'$.message' LIKE 'There are % hosts available but %'
       OR fields->>'$.message' LIKE '%Starting to schedule for instances%'
       OR fields->>'$.message' LIKE '%Got no allocation candidates%'
       OR fields->>'$.message' LIKE 'Host filter %')"""
# each record once (text and JSON copies: models/app_logs.py), in time order: the scheduler's
# internal request ids are tied to the request being scheduled by time (see below)
RECORDS_SQL = ("SELECT ts, pos, host, procname, request_id, instance, logger, level, message FROM ("
               + log_records_sql(_WANTED) + ") ORDER BY ts, pos")
# what the scheduler asked placement for: GET /allocation_candidates?…resources=… (placement's
# request log), per request id
PLACEMENT_SQL = r"""
SELECT DISTINCT request_id, host, ts,
       url_decode(regexp_extract(fields->>'$.message', '[?&]resources=([^& "]+)', 1)) AS resources
FROM events
WHERE layer = 'app' AND source IN ('oslo.log', 'oslo.log.json') AND name LIKE 'placement%'
  AND fields->>'$.message' LIKE '%GET /%allocation_candidates?%resources=%' AND request_id IS NOT NULL
"""
_SCHEDULE_START = re.compile(r"Starting to schedule for instances: \[([^\]]*)\]")
_ONLY_HOST = re.compile(r"^Host filter only checking host (\S+)")
_IGNORING = re.compile(r"^Host filter ignoring hosts: ?(.*)$")
_NO_CANDIDATES = re.compile(r"Got no allocation candidates from the Placement API")
# a scheduler's internal request (placement call, host-state refresh) belongs to the request
# it is scheduling when it starts at most this long after that request's last record
INTERNAL_GAP_NS = 30_000_000_000

_STARTING = re.compile(r"^Starting with (\d+) host\(s\)")
_FILTER = re.compile(r"^Filter (\w+) returned (\d+) host")
_REMOVED_ALL = re.compile(r"^Filtering removed all hosts for the request with instance ID '([^']*)'\. "
                          r"Filter results: (.*)$", re.S)
_PART = re.compile(r"(\w+): \(start: (\d+), end: (\d+)\)")
_HOST_STATE = re.compile(r"\((\S+?), (\S+?)\) ram: ?(-?\d+)(?:MB)? disk: ?(-?\d+)(?:MB)?")
_WEIGHED = re.compile(r"WeighedHost \[host: \(?(\S+?)(?:, (\S+?)\))?(?: ram: ?(-?\d+)(?:MB)?[^\]]*?)?, "
                      r"weight: ([-+0-9.eE]+|nan|inf)\]")
_SELECTED = re.compile(r"(?:Selected host: |Choosing host WeighedHost \[host: )\(?(\S+?)(?:, (\S+?)\))?[ ,\]]")
_NO_VALID = re.compile(r"No valid host was found\.?\s*(.*)$", re.S)


@dataclass
class FilterStep:
    filter: str
    hosts_before: int | None
    hosts_after: int
    removed: int | None
    kept_hosts: list[str] | None = None  # by name, only when Nova logged its full results
    removed_hosts: list[str] | None = None


@dataclass
class SchedulingDecision:
    request_id: str | None
    round: int
    ts: int
    host: str | None  # the host the scheduler ran on (store host)
    instance: str | None = None
    start_hosts: int | None = None
    filters: list[FilterStep] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    weighed: list[dict[str, Any]] = field(default_factory=list)
    selected: str | None = None
    outcome: str = "unknown"  # selected | no_valid_host | unknown
    cause: str | None = None  # no_allocation_candidates | filter (why no valid host)
    resources: str | None = None  # what placement was asked for (resources=…)
    internal_request_ids: list[str] = field(default_factory=list)  # the scheduler's own ids
    requested_hosts: list[str] = field(default_factory=list)  # "Host filter only checking host X"
    ignored_hosts: list[str] = field(default_factory=list)  # hosts that already failed this request
    eliminated_by: str | None = None  # the filter that removed the last host(s)
    reason: str | None = None
    select_destinations_ns: int | None = None

    def explanation(self) -> str:
        chain = ", ".join(f"{f.filter} {f.hosts_before if f.hosts_before is not None else '?'}→{f.hosts_after}"
                          + (f" (removed {', '.join(f.removed_hosts)})" if f.removed_hosts else "")
                          for f in self.filters)
        if self.outcome == "selected":
            w = next((h["weight"] for h in self.weighed if h["host"] == self.selected), None)
            rivals = [f"{h['host']} {h['weight']:g}" for h in self.weighed if h["host"] != self.selected]
            return (f"{self.selected} selected: passed every filter ({chain})"
                    + (f", highest weight {w:g}" if w is not None else "")
                    + (f" (others: {', '.join(rivals)})" if rivals else ""))
        if self.outcome == "no_valid_host" and self.cause == "no_allocation_candidates":
            return ("no valid host: placement found no allocation candidates"
                    + (f" for {self.resources}" if self.resources else "")
                    + " (no host has these resources free)")
        if (self.outcome == "no_valid_host" and not self.eliminated_by and self.requested_hosts
                and set(self.requested_hosts) <= set(self.ignored_hosts)):
            return (f"no valid host: the requested host {', '.join(self.requested_hosts)} is excluded "
                    "(ignored: it already failed for this request)")
        if self.outcome == "no_valid_host" and not self.eliminated_by:
            return "no valid host; the scheduler log names no cause" + (f" (chain: {chain})" if chain else "")
        if self.outcome == "no_valid_host":
            last = next((f for f in self.filters if f.filter == self.eliminated_by), None)
            who = f" ({', '.join(last.removed_hosts)})" if last and last.removed_hosts else ""
            return (f"no valid host: {self.eliminated_by} removed the last "
                    f"{last.removed if last and last.removed is not None else ''} host(s){who}; chain: {chain}")
        return f"incomplete scheduler log; chain: {chain or '-'}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["explanation"] = self.explanation()
        return d


def scheduling_decisions(con: duckdb.DuckDBPyConnection) -> list[SchedulingDecision]:
    """Every scheduling round found in nova-scheduler logs, in time order."""
    rows = con.execute(RECORDS_SQL).fetchall()
    placement = {}
    for req, _h, _ts, res in con.execute(PLACEMENT_SQL).fetchall():
        if res:
            placement[req] = res
    decisions: list[SchedulingDecision] = []
    current: dict[str | None, SchedulingDecision] = {}
    rounds: dict[str | None, int] = {}
    scheduling: dict[str, tuple[str, int]] = {}  # host → (request being scheduled, its last ts)
    alias: dict[str, str] = {}  # the scheduler's internal request id → the request it serves
    for ts, _pos, host, _proc, req, inst, _logger, _level, msg in rows:
        msg = msg or ""
        if m := _SCHEDULE_START.search(msg):
            # conductor → scheduler select_destinations: a new round of this request
            scheduling[host] = (req, ts)
            rounds[req] = rounds.get(req, 0) + 1
            d = current[req] = SchedulingDecision(request_id=req, round=rounds[req], ts=ts, host=host)
            uuids = re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", m.group(1))
            d.instance = uuids[0] if uuids else None
            decisions.append(d)
            continue
        if req not in current and req not in alias and host in scheduling:
            owner, last = scheduling[host]
            if ts - last <= INTERNAL_GAP_NS:
                alias[req] = owner
                current[owner].internal_request_ids.append(req)
        req = alias.get(req, req)
        if req in current and host in scheduling and scheduling[host][0] == req:
            scheduling[host] = (req, ts)
        d = current.get(req)
        m = _STARTING.match(msg)
        if m and d is not None and d.start_hosts is None and not d.filters:
            d.start_hosts = int(m.group(1))  # the round "Starting to schedule" opened
            continue
        if m or d is None:
            rounds[req] = rounds.get(req, 0) + 1
            d = SchedulingDecision(request_id=req, round=rounds[req], ts=ts, host=host)
            current[req] = d
            decisions.append(d)
            if m:
                d.start_hosts = int(m.group(1))
                continue
        if m := _ONLY_HOST.match(msg):
            d.requested_hosts.append(m.group(1))
            continue
        if m := _IGNORING.match(msg):
            d.ignored_hosts = [h.strip() for h in m.group(1).split(",") if h.strip()]
            if d.requested_hosts and set(d.requested_hosts) <= set(d.ignored_hosts):
                d.cause = "requested_host_ignored"
            continue
        if _NO_CANDIDATES.search(msg):
            d.outcome, d.cause = "no_valid_host", "no_allocation_candidates"
            d.resources = next((placement[r] for r in [*d.internal_request_ids, d.request_id] if r in placement), None)
            continue
        d.instance = d.instance or inst
        if m := _FILTER.match(msg):
            before = d.filters[-1].hosts_after if d.filters else d.start_hosts
            after = int(m.group(2))
            d.filters.append(FilterStep(m.group(1), before, after, None if before is None else before - after))
            if after == 0:
                d.outcome, d.eliminated_by, d.cause = "no_valid_host", m.group(1), "filter"
        elif m := _REMOVED_ALL.match(msg):
            d.outcome = "no_valid_host"
            d.instance = d.instance or m.group(1) or None
            _apply_filter_results(d, m.group(2))
        elif msg.startswith("Filtered "):
            d.candidates = [{"host": h, "node": n, "free_ram_mb": int(r), "free_disk_mb": int(k)}
                            for h, n, r, k in _HOST_STATE.findall(msg)]
        elif msg.startswith("Weighed "):
            d.weighed = [{"host": h, "node": n or h, "free_ram_mb": int(r) if r else None, "weight": float(w)}
                         for h, n, r, w in _WEIGHED.findall(msg)]
        elif m := _SELECTED.search(msg):
            d.selected, d.outcome = m.group(1).strip(";,()[]"), "selected"
        elif m := _NO_VALID.search(msg):
            d.outcome = "no_valid_host"
            d.reason = ("No valid host was found. " + m.group(1)).strip()
    _join_select_destinations(con, decisions)
    return sorted(decisions, key=lambda d: d.ts)


def _apply_filter_results(d: SchedulingDecision, text: str) -> None:
    """Nova logs the filter history twice: counts (`['RamFilter: (start: 2, end: 0)']`, INFO)
    and, at debug, the hosts that passed each filter (`[('RamFilter', [('h', 'n')]), ('X', None)]`)."""
    parts = _PART.findall(text)
    if parts:
        known = {f.filter: f for f in d.filters}
        for name, start, end in parts:
            step = known.get(name)
            if step is None:
                step = FilterStep(name, int(start), int(end), int(start) - int(end))
                d.filters.append(step)
            step.hosts_before, step.hosts_after = int(start), int(end)
            step.removed = int(start) - int(end)
        if parts and int(parts[-1][2]) == 0:
            d.eliminated_by = parts[-1][0]
        return
    try:
        full = ast.literal_eval(text.strip())  # Python reprs of tuples and lists: data, not code
    except (ValueError, SyntaxError):
        return
    if not isinstance(full, list):
        return
    known = {f.filter: f for f in d.filters}
    before: list[str] | None = [c["host"] for c in d.candidates] or None
    for item in full:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            continue
        name, kept = item
        kept_hosts = [k[0] if isinstance(k, (list, tuple)) else str(k) for k in (kept or [])]
        step = known.get(name) or FilterStep(name, None, len(kept_hosts), None)
        if name not in known:
            d.filters.append(step)
            known[name] = step
        step.kept_hosts = kept_hosts
        if before is not None:
            step.removed_hosts = [h for h in before if h not in kept_hosts]
        before = kept_hosts
        if not kept_hosts:
            d.eliminated_by = name


def _join_select_destinations(con: duckdb.DuckDBPyConnection, decisions: list[SchedulingDecision]) -> None:
    if not decisions:
        return
    sel = [t for t in service_tasks(con).to_pylist() if t["task"].endswith("select_destinations")]
    used: set[int] = set()
    for d in decisions:
        def pick(pred) -> dict | None:
            return next((t for t in sel if id(t) not in used and pred(t)), None)
        t = (pick(lambda t: d.request_id and t["request_id"] == d.request_id)
             or pick(lambda t: d.instance and t["instance"] == d.instance)
             # log timestamps have ms resolution: allow 1 ms around the task interval
             or pick(lambda t: t["host"] == d.host and t["start_ts"] - 1_000_000 <= d.ts
                     <= (t["end_ts"] or t["start_ts"]) + 1_000_000))
        if t is not None:
            used.add(id(t))
            d.select_destinations_ns = t["duration_ns"]
            d.instance = d.instance or t["instance"]
