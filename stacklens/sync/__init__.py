"""Clock transforms between hosts: packet matching, then convex-hull synchronization.

`synchronize(store)` matches packets, solves every host pair that has matches, and chains the
pairs outwards from the reference host (the one whose clock uuid sorts first; the host name
when the sources carry no clock uuid) so every reachable host gets a transform to the
reference clock. Hosts with no path to the reference are reported as failed, not guessed.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pyarrow as pa

from stacklens.store.store import ClockTransform
from stacklens.sync.convex_hull import HullPair, PairResult, solve
from stacklens.sync.packets import match_packets, matched_packets

QUALITY_RANK = {"accurate": 0, "approximate": 1, "failed": 2}


@dataclass
class HostSync:
    host: str
    reference: str
    quality: str
    slope: Fraction  # t_ref = slope * t + intercept (absolute, exact)
    intercept: Fraction
    via: list[str]  # hosts between reference and this one
    accuracy_ns: int | None
    matches: int
    reason: str = ""

    def transform(self, base_ns: int) -> ClockTransform:
        # t + offset + (t - base) * drift with drift = slope - 1
        offset = self.slope * base_ns + self.intercept - base_ns
        return ClockTransform(offset_ns=round(offset), drift=float(self.slope - 1), base_ns=base_ns,
                              quality=self.quality, reference=self.reference)


def _pair(packets: list[dict], ref: str, other: str) -> PairResult:
    hp = HullPair()
    rows = [p for p in packets if {p["send_host"], p["recv_host"]} == {ref, other}]
    rows.sort(key=lambda p: p["recv_ts"] if p["recv_host"] == other else p["send_ts"])
    for p in rows:
        if p["send_host"] == other:
            hp.add_above(p["send_ts"], p["recv_ts"])  # received (ref clock) after sent
        else:
            hp.add_below(p["recv_ts"], p["send_ts"])  # sent (ref clock) before received
    return solve(hp)


def _reference(store, hosts: list[str]) -> str:
    uuids: dict[str, str] = {}
    for s in store.sources():
        u = s.get("clock_uuid")
        if u and s.get("host") in hosts:
            uuids.setdefault(s["host"], str(u))
    if len(uuids) == len(hosts):
        return min(hosts, key=lambda h: (uuids[h], h))
    return min(hosts)


def synchronize(store, packets_table: pa.Table | None = None,
                hosts: list[str] | None = None) -> tuple[list[HostSync], pa.Table]:
    """Per host its sync to the reference host, and the matched packets (`packets_table` and
    `hosts`: already known, e.g. from a cluster's per-host results)."""
    if packets_table is None:
        packets_table = matched_packets(store)
    packets = packets_table.to_pylist()
    if hosts is None:
        con = store.connect()
        hosts = [r[0] for r in con.execute("SELECT DISTINCT host FROM events ORDER BY host").fetchall()]
    if not hosts:
        return [], packets_table
    ref = _reference(store, hosts)
    neighbours: dict[str, set[str]] = defaultdict(set)
    counts: dict[frozenset, int] = defaultdict(int)
    for p in packets:
        neighbours[p["send_host"]].add(p["recv_host"])
        neighbours[p["recv_host"]].add(p["send_host"])
        counts[frozenset((p["send_host"], p["recv_host"]))] += 1
    done: dict[str, HostSync] = {ref: HostSync(ref, ref, "accurate", Fraction(1), Fraction(0), [], 0, 0,
                                               "reference")}
    failures: dict[str, str] = {}
    queue = deque([ref])
    while queue:
        cur = queue.popleft()
        for nxt in sorted(neighbours[cur]):
            if nxt in done:
                continue
            r = _pair(packets, cur, nxt)
            if r.quality == "failed":
                failures[nxt] = f"with {cur}: {r.reason}"
                continue
            # pair: t_cur = s (t - bx) + by + c  →  absolute: s t + (by + c - s bx); then to ref
            s = r.slope
            k = r.base[1] + r.intercept - s * r.base[0]
            up = done[cur]
            worst = max(r.quality, up.quality, key=QUALITY_RANK.get)
            acc = None if r.accuracy_ns is None else r.accuracy_ns + (up.accuracy_ns or 0)
            done[nxt] = HostSync(nxt, ref, worst, up.slope * s, up.slope * k + up.intercept,
                                 up.via + ([cur] if cur != ref else []), acc,
                                 counts[frozenset((cur, nxt))], r.reason)
            failures.pop(nxt, None)
            queue.append(nxt)
    out = [done[h] if h in done else
           HostSync(h, ref, "failed", Fraction(1), Fraction(0), [], None, 0,
                    failures.get(h, "no packets matched with any synchronized host"))
           for h in hosts]
    return out, packets_table


def sync_store(store, net: pa.Table | None = None, spans: dict[str, int] | None = None) -> dict[str, Any]:
    """Synchronize and store the transforms (Store.set_clocks); returns the report. `net` (the
    hosts' net_events) and `spans` (host → first raw ts): built per host elsewhere (a cluster)."""
    if net is not None and spans is not None:
        results, packets = synchronize(store, match_packets(net), sorted(spans))
    else:
        results, packets = synchronize(store)
        con = store.connect()
        spans = dict(con.execute("SELECT host, min(ts_raw) FROM events GROUP BY host").fetchall())
    transforms: dict[str, ClockTransform] = {}
    for r in results:
        if r.host == r.reference:
            transforms[r.host] = ClockTransform(quality="identity", reference=r.reference)
        elif r.quality == "failed":
            transforms[r.host] = ClockTransform(quality="failed", reference=r.reference)
        else:
            transforms[r.host] = r.transform(int(spans[r.host]))
    store.set_clocks(transforms)
    pairs = defaultdict(int)
    for p in packets.to_pylist():
        pairs[(p["send_host"], p["recv_host"])] += 1
    return {
        "reference": results[0].reference if results else None,
        "packets": [{"send_host": a, "recv_host": b, "matches": n} for (a, b), n in sorted(pairs.items())],
        "hosts": [{"host": r.host, "quality": "reference" if r.host == r.reference else r.quality,
                   "slope": float(r.slope), "drift_ppm": float((r.slope - 1) * 10**6),
                   "offset_ns": transforms[r.host].offset_ns, "base_ns": transforms[r.host].base_ns,
                   "accuracy_ns": r.accuracy_ns, "matches": r.matches, "via": r.via, "reason": r.reason}
                  for r in results],
    }
