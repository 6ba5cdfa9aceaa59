"""Level of detail of interval lanes, for the kernel view's stored whole-host intervals
(models/kernel_intervals.py KernelIntervals.arrays): the same rule as the view's SQL
(views/web/data.py _view_kernel) — an interval of a pixel or longer (`bucket` ns) is a bar of
its own, shorter ones merge per lane and pixel ((start - lo) // bucket) into one bar spanning
them, labelled by the longest (ties: the earliest) — without a query per request: each lane's
window is a binary search in intervals sorted by (lane, start), and the bars come from one
compiled pass over the window's intervals (a whole-trace window of a 5 M-event host walks
~0.5 M intervals: NumPy's dozen passes over them took most of the view's time).
tests/test_kernel_intervals.py checks the bars equal the SQL's; tests/test_lod.py checks the
pass against a plain-Python statement of the rule on random lanes."""

from __future__ import annotations

import numba as nb
import numpy as np

I64_MIN = np.iinfo(np.int64).min


@nb.njit(cache=True, nogil=True, boundscheck=True)
def _bars(first, stop, longest, start, end, sel, lo, hi, bucket, clip):
    """One pass over the selected lanes' intervals in [lo, hi). clip: every interval overlapping
    the window, clipped to it (empty ones dropped); else those wholly inside (start >= lo,
    end < hi). Returns (rep row, start, end, intervals merged, lane index, solo) per bar, in
    the order of the walk: per selected lane, by start."""
    n_sel = sel.shape[0]
    i0s = np.empty(n_sel, np.int64)
    i1s = np.empty(n_sel, np.int64)
    total = 0
    for k in range(n_sel):
        i = sel[k]
        a, b = first[i], stop[i]
        t = lo
        if clip:  # an interval starting up to the lane's longest before lo may reach into the window
            t = lo - longest[i] if lo > I64_MIN + longest[i] else I64_MIN
        i0s[k] = a + np.searchsorted(start[a:b], t)
        i1s[k] = a + np.searchsorted(start[a:b], hi)
        if i1s[k] > i0s[k]:
            total += i1s[k] - i0s[k]
    rep = np.empty(total, np.int64)
    bs = np.empty(total, np.int64)
    be = np.empty(total, np.int64)
    bn = np.empty(total, np.int64)
    blane = np.empty(total, np.int64)
    solo = np.empty(total, np.bool_)
    m = 0
    for k in range(n_sel):
        open_ = False
        g_px = g_s = g_e = g_d = g_rep = g_n = 0
        for j in range(i0s[k], i1s[k]):
            s, e = start[j], end[j]
            if clip:
                if s < lo:
                    s = lo
                if e > hi:
                    e = hi
                if e <= s:
                    continue
            elif e >= hi:
                continue
            d = e - s
            if d >= bucket:
                rep[m], bs[m], be[m], bn[m], blane[m], solo[m] = j, s, e, 1, sel[k], True
                m += 1
                continue
            px = (s - lo) // bucket  # s >= lo here: clipped, or at or after lo's binary search
            if open_ and px == g_px:
                g_n += 1
                if e > g_e:
                    g_e = e
                if d > g_d:
                    g_d, g_rep = d, j
                continue
            if open_:
                rep[m], bs[m], be[m], bn[m], blane[m], solo[m] = g_rep, g_s, g_e, g_n, sel[k], False
                m += 1
            open_ = True
            g_px, g_s, g_e, g_d, g_rep, g_n = px, s, e, d, j, 1
        if open_:
            rep[m], bs[m], be[m], bn[m], blane[m], solo[m] = g_rep, g_s, g_e, g_n, sel[k], False
            m += 1
    return rep[:m], bs[:m], be[:m], bn[:m], blane[:m], solo[:m]


@nb.njit(cache=True, nogil=True, boundscheck=True)
def _lanes_with(first, stop, longest, start, end, lo, hi):
    """Lane indices with an interval overlapping [lo, hi) (clipped: non-empty)."""
    n = first.shape[0]
    out = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        a, b = first[i], stop[i]
        t = lo - longest[i] if lo > I64_MIN + longest[i] else I64_MIN
        j0 = a + np.searchsorted(start[a:b], t)
        j1 = a + np.searchsorted(start[a:b], hi)
        for j in range(j0, j1):
            if min(end[j], hi) > max(start[j], lo):
                out[m] = i
                m += 1
                break
    return out[:m]


class Lanes:
    """Intervals [start, end) sorted by (lane, start), with per-lane offsets and longest interval
    (so a window's first overlapping interval is found by one binary search per lane)."""

    def __init__(self, lane: np.ndarray, start: np.ndarray, end: np.ndarray, **payload: np.ndarray) -> None:
        lane, start, end = (np.ascontiguousarray(x, dtype=np.int64) for x in (lane, start, end))
        if not len(lane) == len(start) == len(end) or any(len(v) != len(lane) for v in payload.values()):
            raise ValueError("interval lanes: lane, start, end and payload columns differ in length")
        if len(lane) and bool(np.any(end < start)):
            raise ValueError("interval lanes: an interval ends before it starts")
        order = np.lexsort((start, lane))
        self.lane, self.start, self.end = lane[order], start[order], end[order]
        self.payload = {k: v[order] for k, v in payload.items()}
        n = len(self.lane)
        heads = np.flatnonzero(np.r_[True, self.lane[1:] != self.lane[:-1]]) if n else np.empty(0, np.int64)
        self.keys = self.lane[heads]
        self.first = heads.astype(np.int64)
        self.stop = np.r_[heads[1:], n].astype(np.int64) if n else self.first
        # durations can exceed int64 only for intervals spanning more than ~292 years of ns
        self.longest = (np.maximum.reduceat(self.end - self.start, heads) if n else np.empty(0, np.int64)).astype(np.int64)
        self._where = {int(k): i for i, k in enumerate(self.keys.tolist())}

    def _select(self, lanes: list[int] | None) -> np.ndarray:
        if lanes is None:
            return np.arange(len(self.keys), dtype=np.int64)
        return np.array([self._where[t] for t in lanes if t in self._where], dtype=np.int64)

    def bars(self, lo: int, hi: int, bucket: int, lanes: list[int] | None = None, clip: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The bars of the lanes (all, or those listed) in [lo, hi): (representative row — the
        longest, ties the earliest —, start, end, intervals merged), ordered by (lane, start).
        clip=True: every interval overlapping the window, clipped to it; clip=False: those
        wholly inside it (start >= lo, end < hi), as they are."""
        lo, hi, bucket = int(lo), int(hi), int(bucket)
        if bucket < 1:
            raise ValueError(f"interval lanes: bucket must be >= 1 ns, not {bucket}")
        rep, s, e, n, lane_i, solo = _bars(self.first, self.stop, self.longest, self.start, self.end,
                                           self._select(lanes), lo, hi, bucket, clip)
        # by lane value, then start; a merged bar before an interval of its own at the same start
        order = np.lexsort((solo, s, self.keys[lane_i])) if len(rep) else rep
        return rep[order], s[order], e[order], n[order]

    def lanes_with(self, lo: int, hi: int) -> np.ndarray:
        """The lane values with an interval overlapping [lo, hi), ascending."""
        return self.keys[_lanes_with(self.first, self.stop, self.longest, self.start, self.end, int(lo), int(hi))]
