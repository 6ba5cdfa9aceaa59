"""Findings: what went wrong, with the evidence and what to do.

A finding is produced by a small rule (stacklens.diagnose.rules) over the models. It has a
severity, one sentence that says what happened, the evidence it rests on (events, intervals,
numbers, each pointing back into the store by host/layer/time and the ids that select it in
the other views: vm, request_id, tid), and the action an operator should take.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("critical", "warning", "info")


@dataclass
class Evidence:
    kind: str  # event / interval / number
    label: str
    value: float | int | str | None = None
    unit: str | None = None
    host: str | None = None
    layer: str | None = None
    start: int | None = None
    end: int | None = None
    ref: dict[str, Any] = field(default_factory=dict)  # vm / instance / request_id / tid: what to select


@dataclass
class Finding:
    rule: str
    severity: str  # critical / warning / info
    statement: str  # one sentence
    action: str
    evidence: list[Evidence] = field(default_factory=list)
    subject: dict[str, Any] = field(default_factory=dict)  # what the finding is about (vm, request, host…)
    score: float = 0.0  # within a severity: larger first (e.g. time lost, share)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def start(self) -> int | None:
        ts = [e.start for e in self.evidence if e.start is not None]
        return min(ts) if ts else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = self.start
        return d


def rank(findings: list[Finding]) -> list[Finding]:
    """Most severe first; within a severity the larger score, then the earlier."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), -f.score,
                                           f.start if f.start is not None else 0, f.rule))
