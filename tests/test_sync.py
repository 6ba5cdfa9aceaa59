"""Multi-host synchronization, checked against Trace Compass's own test expectations.

Oracles:
  * Trace Compass's unit tests of its fully incremental convex hull (SyncTest): the send /
    receive timestamps below are their data, the alpha / beta / quality after each match their
    expected values;
  * Trace Compass's experiment test on synctraces (ExperimentSyncTest.testExperimentSync): the
    transform of scp_src to scp_dest's clock, slope and offset to 34 significant digits, and
    its match count (MatchAndSyncTest.testMatching: 46);
  * causality after sync, by a join written here over the synchronized event view;
  * the error bound away from the packets, recomputed here from the packets' timestamps (the
    extreme separating lines, by brute force over every pair of packets) and Trace Compass's
    expected transform.

Trace Compass sources: github.com/eclipse-tracecompass/org.eclipse.tracecompass (read in the
tracecompass/tracecompass mirror), files
  TC_SYNC_TEST = tmf/org.eclipse.tracecompass.tmf.core.tests/src/org/eclipse/tracecompass/tmf/
                 core/tests/synchronization/SyncTest.java (commit 3e70af79d75c)
  TC_EXPERIMENT_SYNC_TEST = lttng/org.eclipse.tracecompass.lttng2.kernel.core.tests/src/org/
                 eclipse/tracecompass/lttng2/kernel/core/tests/event/matchandsync/ExperimentSyncTest.java
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import PACKET_DELAYS, need_data
from stacklens.store import Store
from stacklens.store.ingest import ingest
from stacklens.sync.convex_hull import FullyIncrementalHull

ROOT = Path(__file__).resolve().parent.parent

# TC_EXPERIMENT_SYNC_TEST, testExperimentSync: the transform Trace Compass computes for
# SYNC_SRC (scp_src) while SYNC_DEST (scp_dest) is the identity:
#   "TmfTimestampTransformLinearFast [ slope = 0.9999413783703139011056845831168394,
#                                      offset = 79796507913179.33347660124688298171 ]"
TC_SYNCTRACES_SLOPE = "0.9999413783703139011056845831168394"
TC_SYNCTRACES_OFFSET = "79796507913179.33347660124688298171"

# TC_SYNC_TEST, testFullyIncremental: addSyncMatch(sender, send ts, receiver, receive ts) in this
# order, each followed by the expected "alpha … beta …" of syncAlgo.toString() (where the test
# checks it) and getSynchronizationQuality(t1, t2). t1 sorts first: it is the reference.
TC_FULLY_INCREMENTAL = [
    (("t2", 1, "t1", 1), "1", "0", "INCOMPLETE"),
    (("t1", 1, "t2", 3), "1", "0", "INCOMPLETE"),
    (("t2", 2, "t1", 3), "1", "0.5", "APPROXIMATE"),
    (("t1", 3, "t2", 5), "0.75", "1.25", "ACCURATE"),
    (("t1", 4, "t2", 8), "0.75", "1.25", "ACCURATE"),
    (("t2", 4, "t1", 5), "1.125", "0.875", "ACCURATE"),
    (("t2", 4, "t1", 6), "1.125", "0.875", "ACCURATE"),
    (("t1", 6, "t2", 7), "0.725", "1.275", "ACCURATE"),
    # "Make the two hulls intersect, and make sure the last good formula is kept after failure"
    (("t1", 7, "t2", 4), "0.375", "1.625", "ACCURATE"),
    (("t2", 7, "t1", 3), "0.375", "1.625", "FAIL"),
]
# TC_SYNC_TEST, testOneHull: communication in one direction only
TC_ONE_HULL = [
    (("t1", 1, "t2", 3), None, None, "INCOMPLETE"),
    (("t1", 2, "t2", 5), None, None, "INCOMPLETE"),
    (("t1", 3, "t2", 5), None, None, "INCOMPLETE"),
    (("t1", 4, "t2", 7), "1", "0", "INCOMPLETE"),
]
# TC_SYNC_TEST, testDisjoint: all of t1 → t2 before all of t2 → t1
TC_DISJOINT = TC_ONE_HULL + [
    (("t2", 7, "t1", 6), None, None, "APPROXIMATE"),
    (("t2", 8, "t1", 6), None, None, "APPROXIMATE"),
    (("t2", 10, "t1", 8), "1", "2.5", "APPROXIMATE"),
]


@pytest.mark.parametrize("steps", [TC_FULLY_INCREMENTAL, TC_ONE_HULL, TC_DISJOINT],
                         ids=["testFullyIncremental", "testOneHull", "testDisjoint"])
def test_trace_compass_sync_test_sequences(steps):
    hull = FullyIncrementalHull()
    assert hull.quality == "ABSENT"
    for (sender, sent, receiver, received), alpha, beta, quality in steps:
        if sender == "t1":  # the reference sent it
            hull.add(True, sent, received)
        else:
            hull.add(False, received, sent)
        assert hull.quality == quality, (sender, sent, receiver, received)
        if alpha is not None:
            assert (hull.alpha, hull.beta) == (Decimal(alpha), Decimal(beta)), (sender, sent, receiver, received)
            assert f"alpha {hull.alpha} beta {hull.beta}" == f"alpha {alpha} beta {beta}"  # same digits as Java's
    assert hull.matches == len(steps)


@pytest.fixture(scope="module")
def synctraces(tmp_path_factory) -> Store:
    base = need_data("tracecompass", "synctraces")
    store = Store(tmp_path_factory.mktemp("sync") / "s", create=True)
    ingest(store, [base / "scp_src", base / "scp_dest"])
    return store


@pytest.fixture(scope="module")
def synced(synctraces) -> dict:
    """The `stacklens sync --json` report, run once on the module's store."""
    out = subprocess.run([sys.executable, "-m", "stacklens.cli", "sync", "--store", str(synctraces.root), "--json"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _significant_digits(a: Decimal, b: Decimal) -> float:
    return float("inf") if a == b else -float(abs((a - b) / b).log10())


def test_synctraces_matches_and_causality(synctraces, synced):
    # the join written here, over the raw clocks
    raw = synctraces.connect().execute(PACKET_DELAYS.replace("ts,", "ts_raw AS ts,")).fetchall()
    assert len(raw) == 46  # MatchAndSyncTest.testMatching
    assert min(d for _, _, d in raw) < 0  # raw clocks: some packets "arrive before they leave"
    report = synced
    assert sum(p["matches"] for p in report["packets"]) == 46
    hosts = {h["host"]: h for h in report["hosts"]}
    assert set(hosts) == {"VM1", "VM3"}
    # the reference is the host whose trace clock uuid sorts first (Trace Compass's host id),
    # read here from the metadata text itself
    base = need_data("tracecompass", "synctraces")
    clock_uuid = {}
    for d, h in (("scp_src", "VM1"), ("scp_dest", "VM3")):
        text = (base / d / "metadata").read_bytes().decode("latin-1")
        clock = text[text.index("clock {"):]
        clock_uuid[h] = re.search(r'uuid = "([0-9a-f-]+)"', clock).group(1)
    reference = min(clock_uuid, key=clock_uuid.get)
    assert reference == "VM3"  # SYNC_DEST gets the identity in ExperimentSyncTest
    assert hosts[reference]["quality"] == "reference"
    other = hosts["VM1"]
    assert other["quality"] == "accurate" and other["hull_quality"] == "ACCURATE"
    after = synctraces.connect().execute(PACKET_DELAYS).fetchall()
    assert len(after) == 46
    bad = [row for row in after if row[2] <= 0]
    assert not bad, bad


def test_synctraces_transform_is_trace_compass(synctraces, synced):
    vm1 = next(h for h in synced["hosts"] if h["host"] == "VM1")
    slope, offset = Decimal(vm1["slope_decimal"]), Decimal(vm1["offset_decimal"])
    tc_slope, tc_offset = Decimal(TC_SYNCTRACES_SLOPE), Decimal(TC_SYNCTRACES_OFFSET)
    assert _significant_digits(slope, tc_slope) >= 12
    assert _significant_digits(offset, tc_offset) >= 12
    assert (vm1["slope_decimal"], vm1["offset_decimal"]) == (TC_SYNCTRACES_SLOPE, TC_SYNCTRACES_OFFSET)  # all 34
    # the transform as stored (integer offset + float drift) gives Trace Compass's times to the
    # nanosecond over the whole trace
    clock = synctraces.clocks()["VM1"]
    first, last = synctraces.connect().execute(
        "SELECT min(ts_raw), max(ts_raw) FROM events WHERE host = 'VM1'").fetchone()
    for t in (first, (first + last) // 2, last):
        expected = Fraction(tc_slope) * t + Fraction(tc_offset)
        assert abs(clock.apply(t) - expected) <= 1


def _extreme_lines(packets: list[tuple[str, int, int]]) -> tuple[Fraction, Fraction, Fraction, Fraction]:
    """(a_min, b_min, a_max, b_max): the separating lines y = a x + b of extreme slopes, in the
    plane x = VM3's clock, y = VM1's clock, by brute force over every line through one packet
    of each direction (exact fractions, relative to a base)."""
    x0 = min(x for _, x, _ in packets)
    y0 = min(y for _, _, y in packets)
    # VM1 → VM3: sent at y, received at x: VM1's clock at x is later than y (line above)
    above = [(x - x0, y - y0) for d, x, y in packets if d == "VM1"]
    # VM3 → VM1: sent at x, received at y: VM1's clock at x is earlier than y (line below)
    below = [(x - x0, y - y0) for d, x, y in packets if d == "VM3"]
    feasible = []
    for px, py in above:
        for qx, qy in below:
            if px == qx:
                continue
            a = Fraction(qy - py, qx - px)
            b = py - a * px
            if all(a * x + b >= y for x, y in above) and all(a * x + b <= y for x, y in below):
                feasible.append((a, b))
    (a_lo, b_lo), (a_hi, b_hi) = min(feasible), max(feasible)
    # back to absolute coordinates: y - y0 = a (x - x0) + b
    return a_lo, b_lo + y0 - a_lo * x0, a_hi, b_hi + y0 - a_hi * x0


def test_synctraces_error_bound_widens_to_the_trace_ends(synctraces, synced):
    rows = synctraces.connect().execute("""
        WITH o AS (SELECT host, ts_raw, fields->>'seq' s, fields->>'ack_seq' a, fields->>'flags' f
                   FROM events WHERE name = 'inet_sock_local_out'),
             i AS (SELECT host, ts_raw, fields->>'seq' s, fields->>'ack_seq' a, fields->>'flags' f
                   FROM events WHERE name = 'inet_sock_local_in')
        SELECT o.host, o.ts_raw, i.ts_raw FROM o JOIN i ON o.s = i.s AND o.a = i.a AND o.f = i.f
        AND o.host <> i.host""").fetchall()
    assert len(rows) == 46
    # (sender, VM3's time, VM1's time)
    packets = [(s, r, t) if s == "VM1" else (s, t, r) for s, t, r in rows]
    a_min, b_min, a_max, b_max = _extreme_lines(packets)
    (pair,) = synced["pairs"]
    assert (pair["reference"], pair["other"]) == ("VM3", "VM1")
    assert _significant_digits(Decimal(pair["alpha_min"]), Decimal(a_min.numerator) / a_min.denominator) >= 12
    assert _significant_digits(Decimal(pair["alpha_max"]), Decimal(a_max.numerator) / a_max.denominator) >= 12

    slope, offset = Fraction(Decimal(TC_SYNCTRACES_SLOPE)), Fraction(Decimal(TC_SYNCTRACES_OFFSET))

    def error(t: int) -> Fraction:  # t on VM1's clock; the bound lines read as VM3's time of t
        est = slope * t + offset
        return max(abs(est - (t - b) / a) for a, b in ((a_min, b_min), (a_max, b_max)))

    vm1_times = [t for _, _, t in packets]
    first, last = synctraces.connect().execute(
        "SELECT min(ts_raw), max(ts_raw) FROM events WHERE host = 'VM1'").fetchone()
    inside = max(error(min(vm1_times)), error(max(vm1_times)))
    ends = max(error(first), error(last))
    assert ends > 100 * inside  # 0.12 s of packets in a 23 s trace
    vm1 = next(h for h in synced["hosts"] if h["host"] == "VM1")
    assert abs(vm1["accuracy_ns"] - ends) <= 1
    assert abs(vm1["accuracy_window_ns"] - inside) <= 1
    assert vm1["trace_span_ns"] == [first, last]
    # the text output shows Trace Compass's transform and both bounds
    text = subprocess.run([sys.executable, "-m", "stacklens.cli", "sync", "--store", str(synctraces.root)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "120"})
    assert text.returncode == 0, text.stderr
    assert f"VM1: t_VM3 = {TC_SYNCTRACES_SLOPE} · t + {TC_SYNCTRACES_OFFSET} ns" in text.stdout
    assert f"±{vm1['accuracy_ns'] / 1e6:.3f} ms" in text.stdout  # ±44.187 ms
    assert f"±{vm1['accuracy_window_ns'] / 1e3:.3f} µs" in text.stdout  # ±171.983 µs


def test_convex_hull_exact_at_1e18():
    # a known clock relation at today's magnitudes: t_ref = t * (1 + 37e-6) + offset
    rng = random.Random(7)
    slope = Fraction(1_000_037, 1_000_000)
    offset = -2_345_678_901
    t0 = 1_700_000_000_000_000_000
    hull = FullyIncrementalHull()
    for k in range(200):
        t_other = t0 + k * 50_000_000 + rng.randrange(1_000_000)
        t_ref = slope * t_other + offset
        delay = 20_000 + rng.randrange(200_000)
        if k % 2:  # other → reference: received later on the reference clock
            hull.add(False, int(t_ref) + delay, t_other)
        else:  # reference → other: sent earlier on the reference clock
            hull.add(True, int(t_ref) - delay, t_other)
    assert hull.quality == "ACCURATE"
    assert Fraction(hull.alpha_min) <= 1 / slope <= Fraction(hull.alpha_max)  # y = t_other as a function of t_ref
    transform = hull.transform()
    for t in (t0, t0 + 5 * 10**9, t0 + 10 * 10**9):
        assert abs(transform.exact(t) - (slope * t + offset)) <= hull.error_bound(t)
    assert hull.error_bound(t0) < 40_000  # the minimum delay bounds the error from both sides
    assert hull.error_bound(t0 + 100 * 10**9) > hull.error_bound(t0 + 5 * 10**9)  # wider far from the packets


def test_chain_through_a_middle_host_with_known_clocks(tmp_path):
    """Three hosts with known clocks (no recording has three hosts of which two never talk:
    the packets are generated here, their times from the clocks below). a ↔ c and c ↔ b talk,
    a and b never do: b is reached through c, and since b's id sorts before c's, b is that
    pair's reference and the edge c → b is the inverse of the pair's transform."""
    import pyarrow as pa
    rng = random.Random(11)
    t0 = 1_700_000_000_000_000_000
    clocks = {"a": (Fraction(1), 0),  # host clock = slope · true time + offset
              "c": (Fraction(1_000_050, 1_000_000), 3_000_000_000),
              "b": (Fraction(999_980, 1_000_000), -7_000_000_000)}

    def read(host: str, true_ns: Fraction) -> int:
        s, o = clocks[host]
        return int(s * true_ns + o)

    rows: dict[str, list[tuple[int, str, dict]]] = {h: [] for h in clocks}
    seq = 0
    for pair in (("a", "c"), ("c", "b")):
        for k in range(60):
            sender, receiver = pair if k % 2 else pair[::-1]
            true_sent = Fraction(t0 + k * 100_000_000 + rng.randrange(10_000_000))
            true_received = true_sent + 30_000 + rng.randrange(300_000)
            seq += 1
            key = {"seq": seq, "ack_seq": 1, "flags": 16}
            rows[sender].append((read(sender, true_sent), "inet_sock_local_out", key))
            rows[receiver].append((read(receiver, true_received), "inet_sock_local_in", key))
    store = Store(tmp_path / "s", create=True)
    for host, events in rows.items():
        # one event at each end of a longer recording: the bound is read there
        events += [(read(host, Fraction(t0 - 5 * 10**9)), "sched_switch", {}),
                   (read(host, Fraction(t0 + 15 * 10**9)), "sched_switch", {})]
        events.sort()
        w = store.writer(f"synthetic-{host}")
        w.write(pa.table({"ts": [t for t, _, _ in events], "name": [n for _, n, _ in events],
                          "fields": [json.dumps(f) for _, _, f in events],
                          "pos": list(range(len(events)))}),
                host=host, layer="kernel", source="synthetic")
        w.commit({"path": host, "format": "synthetic", "host": host, "layer": "kernel"})
    from stacklens.sync import sync_store
    report = sync_store(store)
    hosts = {h["host"]: h for h in report["hosts"]}
    assert report["reference"] == "a"
    assert {(p["reference"], p["other"]) for p in report["pairs"]} == {("a", "c"), ("b", "c")}
    assert hosts["b"]["via"] == ["c"] and hosts["b"]["quality"] == "accurate"
    for host in ("b", "c"):
        h = hosts[host]
        s, o = clocks[host]
        slope, offset = Fraction(Decimal(h["slope_decimal"])), Fraction(Decimal(h["offset_decimal"]))
        stored = store.clocks()[host]
        assert h["accuracy_window_ns"] < h["accuracy_ns"]
        for true_ns in (t0 - 5 * 10**9, t0 + 3 * 10**9, t0 + 15 * 10**9):
            t = read(host, Fraction(true_ns))
            truth = Fraction(t - o) / s  # a's clock is the true time
            assert abs(slope * t + offset - truth) <= h["accuracy_ns"] + 1
            assert abs(stored.apply(t) - truth) <= h["accuracy_ns"] + 2


def test_composition_order_is_trace_compass():
    """TsTransformTest.testComposition (tmf.core.tests, synchronization/TsTransformTest.java):
    f = (slope 2, offset 3), g = (1.5, 8); f∘g(100) = 319, g∘f(100) = 312 (Java's longValue
    truncates 312.5). Chains compose in this order: the reference's transform ∘ the edge's."""
    from stacklens.sync.convex_hull import IDENTITY, LinearTransform
    f = LinearTransform(Decimal("2.0"), Decimal(3))
    g = LinearTransform(Decimal("1.5"), Decimal(8))
    assert int(f.compose(g).exact(100)) == 319
    assert int(g.compose(f).exact(100)) == 312
    assert f.compose(IDENTITY).exact(100) == IDENTITY.compose(f).exact(100) == 203
    assert f.inverse().compose(f).exact(100) == 100
