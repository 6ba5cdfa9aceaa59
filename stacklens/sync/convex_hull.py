"""Fully incremental convex-hull synchronization of one host pair, computed the way Trace
Compass does it (Jabbarifar, Dagenais & Shameli-Sendi, "Streaming Mode Incremental Clock
Synchronization"; Trace Compass's SyncAlgorithmFullyIncremental), so that the slope and
offset agree with Trace Compass's to the last of its 34 digits.

The plane: x = the pair's reference clock, y = the other host's clock. The reference of a pair
is the host whose id sorts first (Trace Compass: the trace's host id, i.e. its clock uuid).
  * a packet other → reference gives the point (x = received, y = sent): the "upper" list;
  * a packet reference → other gives the point (x = sent, y = received): the "lower" list.
Each list keeps only the hull points that can still bound a line, pruned incrementally as
matches arrive in the order the matching completes them. Two lines are maintained, each
through one point of each list: Lmin (minimum slope, its last point from the upper list) and
Lmax (maximum slope, its last point from the lower list). The estimate is their bisector *in
this plane*: y = alpha·x + beta with alpha = (alpha_max + alpha_min) / 2 and beta =
(beta_min + beta_max) / 2, and the transform of the other host's clock to the reference's is
its inverse, t_ref = t / alpha - beta / alpha. Averaging the slopes of the inverted lines
instead (t_ref as a function of t) gives a different line; this is the one Trace Compass uses.

Arithmetic is Java's BigDecimal with MathContext.DECIMAL128 where Trace Compass rounds (34
significant digits, half-even: slopes, the slope × timestamp products, the halvings, the
inversion) and exact elsewhere (sums, differences), reproduced with `decimal` contexts.
Cross products are exact Python integers; Trace Compass computes them in 64-bit longs, which
agree while |Δx·Δy| < 2^63 (hull points less than ~3 s apart on both clocks) and wrap beyond.

Quality, as Trace Compass names it: ABSENT (no match), INCOMPLETE (packets in one direction
only: no transform), APPROXIMATE (one of the two lines has a single point: its slope is taken
as 1), ACCURATE (both lines defined and alpha_max > alpha_min), FAIL (the lines cross: the
matches are not consistent with linear clocks; the last good estimate is kept, not used).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction

DECIMAL128 = Context(prec=34, rounding=ROUND_HALF_EVEN)  # java.math.MathContext.DECIMAL128
EXACT = Context(prec=1000)  # sums and differences of values of at most ~60 digits: exact

ABSENT, INCOMPLETE, APPROXIMATE, ACCURATE, FAIL = "ABSENT", "INCOMPLETE", "APPROXIMATE", "ACCURATE", "FAIL"
ONE = Decimal(1)


class SyncPoint:
    """One matched packet in the plane (x = reference clock, y = other clock). Compared by
    identity, as Trace Compass's list look-ups do: two packets with the same times are two
    points."""

    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def cross(self, a: SyncPoint, b: SyncPoint) -> int:
        """> 0 when (self, a, b) turn counter-clockwise, < 0 clockwise, 0 aligned."""
        return (a.x - self.x) * (b.y - self.y) - (a.y - self.y) * (b.x - self.x)

    def slope_from(self, p1: SyncPoint | None) -> Decimal:
        """The slope of the line through p1 and this point; 1 when p1 is missing or vertical."""
        if p1 is None or self.x == p1.x:
            return ONE
        return DECIMAL128.divide(Decimal(self.y - p1.y), Decimal(self.x - p1.x))

    def intercept(self, slope: Decimal) -> Decimal:
        """y at x = 0 of the line of this slope through this point (the product rounded to 34
        digits, the difference exact)."""
        return EXACT.subtract(Decimal(self.y), DECIMAL128.multiply(slope, Decimal(self.x)))

    def __repr__(self) -> str:
        return f"({self.x}, {self.y})"


def _index(points: list[SyncPoint], p: SyncPoint | None) -> int:
    return next((i for i, q in enumerate(points) if q is p), -1)


@dataclass(frozen=True)
class LinearTransform:
    """t_ref = slope · t + offset, in BigDecimal DECIMAL128 terms (Trace Compass's
    TmfTimestampTransformLinear: composition and inversion round as it does)."""

    slope: Decimal
    offset: Decimal

    def compose(self, inner: LinearTransform) -> LinearTransform:
        """self ∘ inner: t ↦ self(inner(t))."""
        return LinearTransform(DECIMAL128.multiply(self.slope, inner.slope),
                               EXACT.add(DECIMAL128.multiply(self.slope, inner.offset), self.offset))

    def inverse(self) -> LinearTransform:
        return LinearTransform(DECIMAL128.divide(ONE, self.slope),
                               DECIMAL128.divide(EXACT.minus(self.offset), self.slope))

    def exact(self, t: int) -> Fraction:
        return Fraction(self.slope) * t + Fraction(self.offset)


IDENTITY = LinearTransform(ONE, Decimal(0))


class FullyIncrementalHull:
    """The synchronization of one host pair, fed one match at a time."""

    def __init__(self) -> None:
        self.upper: list[SyncPoint] = []  # packets other → reference (x received, y sent)
        self.lower: list[SyncPoint] = []  # packets reference → other (x sent, y received)
        self.lmin: list[SyncPoint | None] = [None, None]  # the minimum-slope line's two points
        self.lmax: list[SyncPoint | None] = [None, None]  # the maximum-slope line's two points
        self.alpha_min = self.alpha_max = self.alpha = ONE
        self.beta_max = self.beta_min = self.beta = Decimal(0)
        self.quality = ABSENT
        self.matches = 0
        self.accurate_matches = 0  # matches that changed the hull (Trace Compass's "nbacc")
        self.x_range: tuple[int, int] | None = None  # reference-clock span of the matches
        self.y_range: tuple[int, int] | None = None  # other-clock span of the matches

    def add(self, from_reference: bool, ref_ts: int, other_ts: int) -> None:
        """One matched packet: sent by the reference host (received by the other) or the
        reverse; `ref_ts` / `other_ts` are its two timestamps on each host's clock."""
        self.matches += 1
        self.x_range = (ref_ts, ref_ts) if self.x_range is None else \
            (min(self.x_range[0], ref_ts), max(self.x_range[1], ref_ts))
        self.y_range = (other_ts, other_ts) if self.y_range is None else \
            (min(self.y_range[0], other_ts), max(self.y_range[1], other_ts))
        p = SyncPoint(ref_ts, other_ts)
        if from_reference:
            bound, other_bound, line, other_line, sign = self.lower, self.upper, self.lmax, self.lmin, -1
        else:
            bound, other_bound, line, other_line, sign = self.upper, self.lower, self.lmin, self.lmax, 1
        qualifies = line[0] is None or line[1] is None or p.cross(line[0], line[1]) * sign > 0
        if qualifies:
            # the point tightens its hull: drop the points it makes useless, and it becomes
            # the line's latest point
            self.accurate_matches += 1
            while len(bound) >= 2 and p.cross(bound[-2], bound[-1]) * sign > 0:
                bound.pop()
            bound.append(p)
            line[1] = p
        self._adjust(line, other_bound, sign)
        if other_line[1] is not None and _index(bound, other_line[0]) < 0:
            # the other line's anchor was pruned from this hull: find its new one
            self._adjust(other_line, bound, -sign)
        if qualifies:
            self._estimate()

    @staticmethod
    def _adjust(line: list[SyncPoint | None], other_bound: list[SyncPoint], sign: int) -> None:
        """Rotate the line around its latest point to its anchor on the other hull: walk the
        other hull from the current anchor while the next point gives a tighter line."""
        anchor: SyncPoint | None = None
        i = max(0, _index(other_bound, line[0]))
        while i < len(other_bound) - 1:
            anchor, nxt = other_bound[i], other_bound[i + 1]
            if anchor.cross(nxt, line[1]) * sign > 0:
                if nxt.x < line[1].x:
                    i += 1
                    continue
                line[0] = None
            else:
                line[0] = anchor
            break
        if line[0] is None:
            line[0] = anchor
        if line[0] is not None and line[0].x > line[1].x:
            line[0] = None

    def _estimate(self) -> None:
        if self.lmax[0] is not None or self.lmin[0] is not None:
            if self.quality == FAIL:
                return  # after a failure the last good estimate stays
            alpha_max = self.lmax[1].slope_from(self.lmax[0])
            alpha_min = self.lmin[1].slope_from(self.lmin[0])
            if self.lmax[0] is None or self.lmin[0] is None:
                quality = APPROXIMATE
            elif alpha_max > alpha_min:
                quality = ACCURATE
            else:
                quality = FAIL  # the lines cross
            if quality != FAIL:
                self.alpha_max, self.alpha_min = alpha_max, alpha_min
                self.beta_min = self.lmax[1].intercept(alpha_max)
                self.beta_max = self.lmin[1].intercept(alpha_min)
                self.alpha = DECIMAL128.divide(EXACT.add(alpha_max, alpha_min), Decimal(2))
                self.beta = DECIMAL128.divide(EXACT.add(self.beta_min, self.beta_max), Decimal(2))
            self.quality = quality
        elif (self.lmax[0] is None and self.lmin[1] is None) or (self.lmax[1] is None and self.lmin[0] is None):
            self.quality = INCOMPLETE

    # ---- results -------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Whether Trace Compass would use this pair to synchronize (its spanning tree takes
        ACCURATE and APPROXIMATE pairs only)."""
        return self.quality in (ACCURATE, APPROXIMATE)

    def transform(self) -> LinearTransform:
        """The other host's clock → the reference's: the inverse of y = alpha x + beta."""
        return LinearTransform(self.alpha, self.beta).inverse()

    def slope_accuracy(self) -> Decimal:
        """alpha_max - alpha_min: what Trace Compass reports as the pair's accuracy."""
        return EXACT.subtract(self.alpha_max, self.alpha_min)

    def bound_lines(self) -> tuple[LinearTransform, LinearTransform] | None:
        """The two bounding lines Lmax and Lmin, each y = a·x + b (reference clock → other
        clock); None unless both rest on two points (ACCURATE)."""
        if self.quality != ACCURATE:
            return None
        return (LinearTransform(self.alpha_max, self.beta_min), LinearTransform(self.alpha_min, self.beta_max))

    def error_bound(self, t_other: int) -> Fraction | None:
        """How far, on the reference clock, the transform of `t_other` may be from the truth
        if the truth lies between the two bounding lines: the larger distance from the
        transform to either line, at that time. The lines diverge away from the matched
        packets, so this grows towards a trace's ends. None unless ACCURATE."""
        lines = self.bound_lines()
        if lines is None:
            return None
        est = self.transform().exact(t_other)
        # a bound line y = a x + b, read as the reference time of other time t: x = (t - b) / a
        return max(abs(est - (t_other - Fraction(l.offset)) / Fraction(l.slope)) for l in lines)

    def error_bound_inverse(self, t_ref: int) -> Fraction | None:
        """The same for the inverse transform (reference → other, used when a chain of pairs
        goes from a pair's other host to its reference), on the other host's clock."""
        lines = self.bound_lines()
        if lines is None:
            return None
        est = self.transform().inverse().exact(t_ref)
        return max(abs(est - l.exact(t_ref)) for l in lines)
