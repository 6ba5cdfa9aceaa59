"""Clock transforms between hosts: packet matching, then Trace Compass's fully incremental
convex-hull synchronization.

`synchronize(store)` matches packets, feeds every host pair's matches to its hull in the order
the matching completes them (the later of the two events, as an experiment reading both traces
in time order sees them), and chains the usable pairs (ACCURATE or APPROXIMATE) outwards from
the reference host, breadth first, as Trace Compass's spanning tree does:
  * host ids are the trace clock uuids when every host has one (Trace Compass's host id for
    LTTng traces), else the host names; a pair's reference is the id that sorts first;
  * the reference of the whole set is the smallest id among the hosts of usable pairs;
  * an edge from a pair's reference to its other host uses the pair's transform, the reverse
    edge its inverse, and transforms compose in DECIMAL128 like TmfTimestampTransformLinear.
Hosts with no path to the reference are reported as failed, not guessed.

Accuracy: a pair's two bounding lines diverge away from the matched packets, so the error
bound is evaluated at the ends of the host's own trace (`accuracy_ns`), not only over the
window of the matched packets (`accuracy_window_ns`). Along a chain the bounds add up, each
edge's taken where the host's times fall on that edge's clock.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from stacklens.store.store import ClockTransform
from stacklens.sync.convex_hull import (ACCURATE, APPROXIMATE, FAIL, IDENTITY, INCOMPLETE,
                                        FullyIncrementalHull, LinearTransform)
from stacklens.sync.packets import match_packets, matched_packets

QUALITY_RANK = {"accurate": 0, "approximate": 1, "failed": 2}


@dataclass
class PairSync:
    """One host pair's hull, with Trace Compass's statistics for it."""

    reference: str  # the pair's reference host (smaller host id)
    other: str
    hull: FullyIncrementalHull
    sent: dict[str, int] = field(default_factory=dict)  # packets sent by each host of the pair

    def reason(self) -> str:
        q = self.hull.quality
        if q == INCOMPLETE:
            return (f"packets in one direction only ({self.sent.get(self.reference, 0)} sent by {self.reference}, "
                    f"{self.sent.get(self.other, 0)} by {self.other}): no slope nor offset can be bounded "
                    "(Trace Compass: INCOMPLETE)")
        if q == FAIL:
            return ("the bounding lines cross: the matches are not consistent with two linear clocks, or some "
                    "matches are wrong (Trace Compass: FAIL)")
        if q == APPROXIMATE:
            return ("one bounding line rests on a single packet: its slope is taken as 1, the bound is not "
                    "guaranteed (Trace Compass: APPROXIMATE)")
        return ""

    def stats(self) -> dict[str, Any]:
        h = self.hull
        return {"reference": self.reference, "other": self.other, "quality": h.quality,
                "alpha": str(h.alpha), "beta": str(h.beta),
                "alpha_min": str(h.alpha_min), "alpha_max": str(h.alpha_max),
                "slope_accuracy": float(h.slope_accuracy()),
                "matches": h.matches, "accurate_matches": h.accurate_matches,
                "upper_hull_points": len(h.upper), "lower_hull_points": len(h.lower)}


@dataclass
class HostSync:
    host: str
    reference: str
    quality: str  # accurate / approximate / failed
    transform: LinearTransform  # t_ref = slope · t + offset (absolute ns, DECIMAL128 as Trace Compass)
    via: list[str]  # hosts between reference and this one
    accuracy_ns: int | None  # error bound at the ends of this host's trace
    accuracy_window_ns: int | None  # error bound over the matched packets' window
    matches: int
    reason: str = ""
    hull_quality: str = ""  # Trace Compass's quality of the pair that reached (or failed) this host
    slope_accuracy: float | None = None  # alpha_max - alpha_min of that pair (Trace Compass's "accuracy")
    span: tuple[int, int] | None = None  # this host's first and last event (raw clock)
    window: tuple[int, int] | None = None  # first and last matched packet on this host's clock

    @property
    def slope(self) -> Decimal:
        return self.transform.slope

    @property
    def offset(self) -> Decimal:
        return self.transform.offset

    def clock_transform(self, base_ns: int) -> ClockTransform:
        # the store's form: t + offset + (t - base) * drift, drift = slope - 1
        offset = Fraction(self.slope) * base_ns + Fraction(self.offset) - base_ns
        return ClockTransform(offset_ns=round(offset), drift=float(self.slope - 1), base_ns=base_ns,
                              quality=self.quality, reference=self.reference)


def _host_ids(store, hosts: list[str]) -> dict[str, str]:
    uuids: dict[str, str] = {}
    for s in store.sources():
        u = s.get("clock_uuid")
        if u and s.get("host") in hosts:
            uuids.setdefault(s["host"], str(u))
    if len(uuids) == len(hosts):
        return uuids
    return {h: h for h in hosts}


Bound = Callable[[int], "Fraction | None"]


def _chain_bound(pair: PairSync, towards_other: bool, edge: LinearTransform, upstream: Bound) -> Bound:
    """The error bound, at a time of the host an edge transforms, of the chain reference ← … ←
    this edge: the edge's own bound there plus the upstream chain's bound at the image of that
    time on the upstream host's clock. Each term is convex in time (a maximum of absolute values
    of affine functions, composed with an increasing affine map), so the sum's maximum over an
    interval is at one of its ends."""
    own = pair.hull.error_bound if towards_other else pair.hull.error_bound_inverse

    def bound(t: int) -> Fraction | None:
        e = own(t)
        if e is None:
            return None
        up = upstream(math.floor(edge.exact(t)))
        return None if up is None else e + up
    return bound


def _max_at_ends(bound: Bound, times: tuple[int, int] | None) -> int | None:
    if times is None:
        return None
    values = [bound(t) for t in times]
    return None if any(v is None for v in values) else math.ceil(max(values))


def synchronize(store, packets_table: pa.Table | None = None, spans: dict[str, tuple[int, int]] | None = None
                ) -> tuple[list[HostSync], pa.Table, list[PairSync]]:
    """Per host its sync to the reference host, the matched packets, and the pairs' hulls.
    `packets_table` and `spans` (host → first and last raw ts): already known, e.g. from a
    cluster's per-host results."""
    if packets_table is None:
        packets_table = matched_packets(store)
    if spans is None:
        con = store.connect()
        spans = {h: (int(a), int(b)) for h, a, b in
                 con.execute("SELECT host, min(ts_raw), max(ts_raw) FROM events GROUP BY host ORDER BY host").fetchall()}
    hosts = sorted(spans)
    if not hosts:
        return [], packets_table, []
    ids = _host_ids(store, hosts)
    pairs: dict[frozenset, PairSync] = {}
    # the order in which the matching completes each match: at the later of its two events
    send_ts = packets_table.column("send_ts").to_numpy().astype(np.int64)
    recv_ts = packets_table.column("recv_ts").to_numpy().astype(np.int64)
    order = np.lexsort((send_ts, np.maximum(send_ts, recv_ts)))
    senders = packets_table.column("send_host").to_pylist()
    receivers = packets_table.column("recv_host").to_pylist()
    for i in order.tolist():
        s, r = senders[i], receivers[i]
        if s == r or s not in ids or r not in ids:
            continue
        key = frozenset((s, r))
        if key not in pairs:
            ref, other = sorted((s, r), key=lambda h: (ids[h], h))
            pairs[key] = PairSync(ref, other, FullyIncrementalHull())
        pair = pairs[key]
        pair.sent[s] = pair.sent.get(s, 0) + 1
        if s == pair.reference:
            pair.hull.add(True, int(send_ts[i]), int(recv_ts[i]))
        else:
            pair.hull.add(False, int(recv_ts[i]), int(send_ts[i]))

    usable = [p for p in pairs.values() if p.hull.usable]
    in_tree = {h for p in usable for h in (p.reference, p.other)}
    ref = min(in_tree or hosts, key=lambda h: (ids[h], h))
    neighbours: dict[str, list[PairSync]] = defaultdict(list)
    for p in usable:
        neighbours[p.reference].append(p)
        neighbours[p.other].append(p)

    def window(pair: PairSync, host: str) -> tuple[int, int] | None:
        """The span of the pair's matched packets on `host`'s clock."""
        return pair.hull.y_range if host == pair.other else pair.hull.x_range

    done: dict[str, HostSync] = {ref: HostSync(ref, ref, "accurate", IDENTITY, [], 0, 0, 0, "reference",
                                               span=spans[ref])}
    bounds: dict[str, Bound] = {ref: lambda t: Fraction(0)}
    queue = deque([ref])
    while queue:
        cur = queue.popleft()
        for pair in sorted(neighbours[cur], key=lambda p: ids[p.other if p.reference == cur else p.reference]):
            nxt = pair.other if pair.reference == cur else pair.reference
            if nxt in done:
                continue
            towards_other = nxt == pair.other
            edge = pair.hull.transform() if towards_other else pair.hull.transform().inverse()
            up = done[cur]
            total = edge if cur == ref else up.transform.compose(edge)
            quality = "accurate" if pair.hull.quality == ACCURATE else "approximate"
            worst = max(quality, up.quality, key=QUALITY_RANK.get)
            bounds[nxt] = _chain_bound(pair, towards_other, edge, bounds[cur])
            done[nxt] = HostSync(nxt, ref, worst, total, up.via + ([cur] if cur != ref else []),
                                 _max_at_ends(bounds[nxt], spans[nxt]), _max_at_ends(bounds[nxt], window(pair, nxt)),
                                 pair.hull.matches, pair.reason(), pair.hull.quality,
                                 float(pair.hull.slope_accuracy()), spans[nxt], window(pair, nxt))
            queue.append(nxt)

    out = []
    for h in hosts:
        if h in done:
            out.append(done[h])
            continue
        mine = [p for p in pairs.values() if h in (p.reference, p.other)]
        if mine:
            worst = max(mine, key=lambda p: p.hull.matches)
            peer = worst.other if worst.reference == h else worst.reference
            reason = (f"with {peer}: {worst.reason()}" if not worst.hull.usable else
                      f"its pairs do not connect to {ref}")
            out.append(HostSync(h, ref, "failed", IDENTITY, [], None, None, worst.hull.matches, reason,
                                worst.hull.quality, None, spans[h], window(worst, h)))
        else:
            out.append(HostSync(h, ref, "failed", IDENTITY, [], None, None, 0,
                                "no packets matched with any other host", "ABSENT", None, spans[h], None))
    return out, packets_table, sorted(pairs.values(), key=lambda p: (p.reference, p.other))


def sync_store(store, net: pa.Table | None = None, spans: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Synchronize and store the transforms (Store.set_clocks); returns the report. `net` (the
    hosts' net_events) and `spans` (host → first and last raw ts): built per host elsewhere (a cluster)."""
    if net is not None and spans is not None:
        results, packets, pairs = synchronize(store, match_packets(net), spans)
    else:
        results, packets, pairs = synchronize(store)
    transforms: dict[str, ClockTransform] = {}
    for r in results:
        if r.host == r.reference:
            transforms[r.host] = ClockTransform(quality="identity", reference=r.reference)
        elif r.quality == "failed":
            transforms[r.host] = ClockTransform(quality="failed", reference=r.reference)
        else:
            transforms[r.host] = r.clock_transform(r.span[0])
    store.set_clocks(transforms)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for p in packets.to_pylist():
        counts[(p["send_host"], p["recv_host"])] += 1
    return {
        "reference": results[0].reference if results else None,
        "packets": [{"send_host": a, "recv_host": b, "matches": n} for (a, b), n in sorted(counts.items())],
        "pairs": [p.stats() for p in pairs],
        "hosts": [{"host": r.host, "quality": "reference" if r.host == r.reference else r.quality,
                   "hull_quality": r.hull_quality,
                   "slope": float(r.slope), "offset": float(r.offset),
                   "slope_decimal": str(r.slope), "offset_decimal": str(r.offset),
                   "drift_ppm": float((r.slope - 1) * 10**6),
                   "offset_ns": transforms[r.host].offset_ns, "base_ns": transforms[r.host].base_ns,
                   "accuracy_ns": r.accuracy_ns, "accuracy_window_ns": r.accuracy_window_ns,
                   "slope_accuracy": r.slope_accuracy,
                   "trace_span_ns": list(r.span) if r.span else None,
                   "packet_window_ns": list(r.window) if r.window else None,
                   "matches": r.matches, "via": r.via, "reason": r.reason}
                  for r in results],
    }
