"""The kernel view's compiled level of detail (views/web/lod.py Lanes.bars / lanes_with) against
the rule stated in plain Python, on random lanes with the shapes real traces give (intervals
shorter and longer than a pixel, touching, zero-length, starting before the window, ending
after it) — tests/test_kernel_intervals.py checks the same bars against the view's SQL on a
real trace."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stacklens.views.web.lod import Lanes


def reference(lanes: dict[int, list[tuple[int, int, int]]], lo: int, hi: int, bucket: int,
              which: list[int] | None, clip: bool, given: dict[int, int]) -> list[tuple[int, int, int, int, int]]:
    """(lane, start, end, merged, row) per bar: each interval (row, start, end) in the window —
    clip: overlapping it, clipped, non-empty; else wholly inside — is a bar of its own when it
    lasts a bucket or more; the others group by (lane, (start - lo) // bucket), the bar spanning
    them and naming the longest, ties the earliest (same start: the first given, `given`: row →
    its place in the input)."""
    bars = []
    for lane in sorted(lanes if which is None else [w for w in set(which) if w in lanes]):
        groups: dict[int, list] = {}
        for row, s, e in sorted(lanes[lane], key=lambda x: (x[1], given[x[0]])):
            if clip:
                s, e = max(s, lo), min(e, hi)
                if e <= s:
                    continue
            elif not (s >= lo and e < hi):
                continue
            if e - s >= bucket:
                bars.append((lane, s, 1, e, 1, row))
            else:
                groups.setdefault((s - lo) // bucket, []).append((row, s, e))
        for members in groups.values():
            best = max(members, key=lambda m: (m[2] - m[1], -m[1], -members.index(m)))
            bars.append((lane, min(m[1] for m in members), 0, max(m[2] for m in members), len(members), best[0]))
    return [(lane, s, e, n, row) for lane, s, _, e, n, row in sorted(bars, key=lambda b: (b[0], b[1], b[2]))]


def random_lanes(rng: random.Random, n_lanes: int) -> tuple[dict, list[int], list[int], list[int]]:
    lanes: dict[int, list] = {}
    lane_col, start_col, end_col = [], [], []
    for _ in range(n_lanes):
        lane = rng.randrange(-5, 10_000)
        t = rng.randrange(0, 1_000)
        for _ in range(rng.randrange(0, 60)):
            t += rng.choice([0, 0, 1, 3, rng.randrange(0, 50)])  # gaps, touching intervals
            d = rng.choice([0, 1, 2, 5, rng.randrange(0, 40), rng.randrange(0, 400)])
            row = len(lane_col)
            lanes.setdefault(lane, []).append((row, t, t + d))
            lane_col.append(lane), start_col.append(t), end_col.append(t + d)
            t += d
    return lanes, lane_col, start_col, end_col


@pytest.mark.parametrize("seed", range(40))
def test_bars_follow_the_rule(seed):
    rng = random.Random(seed)
    lanes, lane_col, start_col, end_col = random_lanes(rng, rng.randrange(0, 12))
    order = list(range(len(lane_col)))
    rng.shuffle(order)  # Lanes sorts them itself
    row = np.array(order, np.int64)
    given = {r: i for i, r in enumerate(order)}
    L = Lanes(np.array(lane_col)[row], np.array(start_col)[row], np.array(end_col)[row], row=row)
    for _ in range(25):
        lo = rng.randrange(-100, 3_000)
        hi = lo + rng.randrange(1, 3_000)
        bucket = rng.choice([1, 2, 7, 50, (hi - lo) // 500 or 1, 1 << 62])
        which = None if rng.random() < 0.4 else rng.sample(sorted(lanes) + [123_456], min(len(lanes) + 1, 4))
        for clip in (True, False):
            rep, s, e, n = L.bars(lo, hi, bucket, lanes=which, clip=clip)
            got = list(zip(L.lane[rep].tolist(), s.tolist(), e.tolist(), n.tolist(), L.payload["row"][rep].tolist()))
            assert got == reference(lanes, lo, hi, bucket, which, clip, given), (seed, lo, hi, bucket, which, clip)
        want = sorted(k for k, ivs in lanes.items() if any(min(e, hi) > max(s, lo) for _, s, e in ivs))
        assert L.lanes_with(lo, hi).tolist() == want


def test_bad_lanes_are_refused_before_the_compiled_pass():
    with pytest.raises(ValueError, match="differ in length"):
        Lanes(np.array([1, 2]), np.array([0]), np.array([1, 2]))
    with pytest.raises(ValueError, match="ends before it starts"):
        Lanes(np.array([1]), np.array([5]), np.array([4]))
    L = Lanes(np.array([1]), np.array([0]), np.array([4]))
    with pytest.raises(ValueError, match="bucket"):
        L.bars(0, 10, 0)
    empty = Lanes(np.array([], np.int64), np.array([], np.int64), np.array([], np.int64))
    assert [len(x) for x in empty.bars(0, 10, 1)] == [0, 0, 0, 0] and len(empty.lanes_with(0, 10)) == 0
