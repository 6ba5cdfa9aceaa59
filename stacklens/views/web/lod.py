"""Level of detail of interval lanes in NumPy, for the kernel view's stored whole-host intervals
(models/kernel_intervals.py KernelIntervals.arrays): the same rule as the view's SQL
(views/web/data.py _view_kernel) — an interval of a pixel or longer (`bucket` ns) is a bar of
its own, shorter ones merge per lane and pixel ((start - lo) // bucket) into one bar spanning
them, labelled by the longest (ties: the earliest) — without a query per request: each lane's
window is a binary search in intervals sorted by (lane, start). tests/test_kernel_intervals.py
checks the two give the same bars."""

from __future__ import annotations

import numpy as np


class Lanes:
    """Intervals [start, end) sorted by (lane, start), with per-lane offsets and longest interval
    (so a window's first overlapping interval is found by one binary search per lane)."""

    def __init__(self, lane: np.ndarray, start: np.ndarray, end: np.ndarray, **payload: np.ndarray) -> None:
        order = np.lexsort((start, lane))
        self.lane, self.start, self.end = lane[order], start[order], end[order]
        self.payload = {k: v[order] for k, v in payload.items()}
        n = len(self.lane)
        heads = np.flatnonzero(np.r_[True, self.lane[1:] != self.lane[:-1]]) if n else np.empty(0, np.int64)
        self.keys = self.lane[heads]
        self.first = heads
        self.stop = np.r_[heads[1:], n].astype(np.int64) if n else heads
        self.longest = np.maximum.reduceat(self.end - self.start, heads) if n else np.empty(0, np.int64)
        self._where = {int(k): i for i, k in enumerate(self.keys.tolist())}

    def window(self, lo: int, hi: int, lanes: list[int] | None = None, clip: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row indices, start, end) of the lanes' intervals in [lo, hi): clip=True — every interval
        overlapping it, clipped to it (empty ones dropped); clip=False — those wholly inside
        (start >= lo, end < hi), as they are. Sorted by (lane, start)."""
        which = range(len(self.keys)) if lanes is None else [self._where[t] for t in lanes if t in self._where]
        parts = []
        for i in which:
            a, b = int(self.first[i]), int(self.stop[i])
            s = self.start[a:b]
            i0 = a + int(np.searchsorted(s, lo - int(self.longest[i]) if clip else lo, "left"))
            i1 = a + int(np.searchsorted(s, hi, "left"))
            if i1 > i0:
                parts.append(np.arange(i0, i1))
        idx = np.concatenate(parts) if parts else np.empty(0, np.int64)
        s, e = self.start[idx], self.end[idx]
        if clip:
            s, e = np.maximum(s, lo), np.minimum(e, hi)
            keep = e > s
        else:
            keep = e < hi
        return idx[keep], s[keep], e[keep]


def merge(lane: np.ndarray, s: np.ndarray, e: np.ndarray, lo: int, bucket: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bars of intervals sorted by (lane, s): (representative row — the longest, ties the
    earliest —, start, end, intervals merged), ordered by (lane, start)."""
    dur = e - s
    solo = dur >= bucket
    rows = np.arange(len(s))
    m = ~solo
    ml, ms, me, md, mi = lane[m], s[m], e[m], dur[m], rows[m]
    px = (ms - lo) // bucket
    new = np.r_[True, (ml[1:] != ml[:-1]) | (px[1:] != px[:-1])] if len(ms) else np.empty(0, bool)
    heads = np.flatnonzero(new)
    if len(heads):
        gid = np.cumsum(new) - 1
        gmax = np.maximum.reduceat(me, heads)
        longest = np.maximum.reduceat(md, heads)
        best = np.flatnonzero(md == longest[gid])
        _, firsts = np.unique(gid[best], return_index=True)  # the earliest of the longest per group
        rep, gs, ge = mi[best[firsts]], ms[heads], gmax
        n = np.diff(np.r_[heads, len(ms)])
    else:
        rep = gs = ge = n = np.empty(0, np.int64)
    rep = np.r_[rep, rows[solo]].astype(np.int64)
    gs, ge = np.r_[gs, s[solo]], np.r_[ge, e[solo]]
    n = np.r_[n, np.ones(int(solo.sum()), np.int64)]
    order = np.lexsort((gs, lane[rep])) if len(rep) else rep
    return rep[order], gs[order], ge[order], n[order]
