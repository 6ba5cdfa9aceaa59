"""How a bench hands its figures to bench/run.py: one line `BENCH-FIGURES {json}` on stdout
(the bench prints its own human-readable lines too). run.py tables every figure against its
goal with met / not met."""

from __future__ import annotations

import json
import os

MARK = "BENCH-FIGURES "


def figure(name: str, value: float | None, unit: str, goal: float | None = None,
           better: str = "higher", note: str = "") -> dict:
    """One figure; `better` is "higher" (value >= goal meets it) or "lower" (value <= goal)."""
    return {"name": name, "value": value, "unit": unit, "goal": goal, "better": better, "note": note}


def met(f: dict) -> str:
    if f.get("goal") is None or f.get("value") is None:
        return "-"
    ok = f["value"] >= f["goal"] if f.get("better", "higher") == "higher" else f["value"] <= f["goal"]
    return "met" if ok else "not met"


def loadavg() -> str:
    try:
        return "load average %.1f %.1f %.1f on %d CPUs" % (*os.getloadavg(), os.cpu_count() or 0)
    except OSError:
        return "load unknown"


def report(bench: str, figures: list[dict]) -> None:
    print(MARK + json.dumps({"bench": bench, "figures": figures, "load": loadavg()}), flush=True)
