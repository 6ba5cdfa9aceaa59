"""Fully incremental convex-hull synchronization (Duda et al.; Jabbarifar & Dagenais; the
algorithm Trace Compass uses), in exact integer / rational arithmetic.

For a host pair (reference R, other O) we look for t_R = a * t_O + b. In the plane
x = O's clock, y = R's clock:
  * a packet O → R (sent at x, received at y) must arrive after it left: the line passes
    *below* the point (a * x + b <= y): these points form the upper set;
  * a packet R → O (sent at y, received at x): the line passes *above* (a * x + b >= y):
    the lower set.
Points come in time order; each set keeps only its useful hull (lower hull of the upper set,
upper hull of the lower set), updated incrementally with a monotone chain. The lines that
separate both hulls with extreme slopes (a_min and a_max) bound every possible transform;
the result is their mean line (feasible: the feasible set is convex), and the vertical gap
between the two bounds over the observed span is the accuracy bound.

Timestamps are near 10^18 ns, where float64 has a 128 ns step: everything is done on
integers relative to a base, with `fractions.Fraction` for slopes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

Point = tuple[int, int]


def _cross(o: Point, a: Point, b: Point) -> int:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


@dataclass
class HullPair:
    """The two incremental hulls for one host pair (coordinates relative to `base`)."""

    base: Point | None = None
    upper_set_hull: list[Point] = field(default_factory=list)  # lower hull of the "line below" points
    lower_set_hull: list[Point] = field(default_factory=list)  # upper hull of the "line above" points
    upper_count: int = 0
    lower_count: int = 0
    x_min: int | None = None
    x_max: int | None = None

    def _rel(self, x: int, y: int) -> Point:
        if self.base is None:
            self.base = (x, y)
        self.x_min = x if self.x_min is None else min(self.x_min, x)
        self.x_max = x if self.x_max is None else max(self.x_max, x)
        return (x - self.base[0], y - self.base[1])

    def add_above(self, x: int, y: int) -> None:
        """A point the line must pass below or through (packet other → reference)."""
        self.upper_count += 1
        _insert(self.upper_set_hull, self._rel(x, y), keep_lower=True)

    def add_below(self, x: int, y: int) -> None:
        """A point the line must pass above or through (packet reference → other)."""
        self.lower_count += 1
        _insert(self.lower_set_hull, self._rel(x, y), keep_lower=False)


def _insert(hull: list[Point], p: Point, keep_lower: bool) -> None:
    # Points arrive nearly sorted by x; an out-of-order point rebuilds the chain (rare).
    if hull and p[0] < hull[-1][0]:
        pts = sorted(hull + [p])
        hull.clear()
        for q in pts:
            _push(hull, q, keep_lower)
        return
    _push(hull, p, keep_lower)


def _push(hull: list[Point], p: Point, keep_lower: bool) -> None:
    if hull and hull[-1][0] == p[0]:
        # same x: keep the tighter point only
        if (p[1] < hull[-1][1]) == keep_lower:
            hull.pop()
        else:
            return
    while len(hull) >= 2:
        c = _cross(hull[-2], hull[-1], p)
        if (c <= 0) if keep_lower else (c >= 0):
            hull.pop()
        else:
            break
    hull.append(p)


@dataclass
class Line:
    slope: Fraction
    intercept: Fraction  # relative to the pair's base

    def at(self, x: int) -> Fraction:
        return self.slope * x + self.intercept


def _feasible(line: Line, above: list[Point], below: list[Point]) -> bool:
    return all(line.at(x) <= y for x, y in above) and all(line.at(x) >= y for x, y in below)


def _through(p: Point, q: Point) -> Line | None:
    if p[0] == q[0]:
        return None
    slope = Fraction(q[1] - p[1], q[0] - p[0])
    return Line(slope, p[1] - slope * p[0])


@dataclass
class PairResult:
    quality: str  # accurate / approximate / failed
    slope: Fraction
    intercept: Fraction  # t_R = slope * (t_O - base_x) + base_y + intercept
    base: Point
    slope_bounds: tuple[Fraction, Fraction] | None
    accuracy_ns: int | None
    matches: tuple[int, int]  # (other → reference, reference → other)
    reason: str = ""


def solve(pair: HullPair) -> PairResult:
    """The transform for one pair from its hulls."""
    above, below = pair.upper_set_hull, pair.lower_set_hull
    counts = (pair.upper_count, pair.lower_count)
    base = pair.base or (0, 0)
    if not above and not below:
        return PairResult("failed", Fraction(1), Fraction(0), base, None, None, counts, "no matched packets")
    if not above or not below:
        # one direction only: a bound on one side. Keep slope 1 and put the line just
        # through the tightest point: the causal order of the packets is guaranteed, the
        # offset is a bound rather than an estimate.
        pts = above or below
        pick = min if above else max
        offset = pick(Fraction(y - x) for x, y in pts)
        return PairResult("approximate", Fraction(1), offset, base, None, None, counts,
                          "packets in one direction only: offset bounded on one side, no drift")
    # extreme separating lines pass through one vertex of each hull
    candidates: list[Line] = []
    for p in above:
        for q in below:
            line = _through(p, q)
            if line is not None and _feasible(line, above, below):
                candidates.append(line)
    if not candidates:
        return PairResult("failed", Fraction(1), Fraction(0), base, None, None, counts,
                          "no line separates the packets: the clocks are not linear, or the matches are wrong")
    lo = min(candidates, key=lambda l: l.slope)
    hi = max(candidates, key=lambda l: l.slope)
    if lo.slope == hi.slope and len(above) + len(below) < 4:
        quality = "approximate"
    else:
        quality = "accurate"
    mean = Line((lo.slope + hi.slope) / 2, (lo.intercept + hi.intercept) / 2)
    x0, x1 = pair.x_min - base[0], pair.x_max - base[0]
    gap = max(abs(hi.at(x0) - lo.at(x0)), abs(hi.at(x1) - lo.at(x1)))
    return PairResult(quality, mean.slope, mean.intercept, base, (lo.slope, hi.slope),
                      int(gap / 2) + 1, counts)
