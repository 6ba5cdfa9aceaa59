"""Migration figures from the migration model: per-attempt summary rows and the dirty-pages
curve as terminal bars (the PNG figure is drawn by stacklens.views.figures)."""

from __future__ import annotations

from stacklens.models.migration import MigrationAttempt

BARS = " ▏▎▍▌▋▊▉█"


def attempt_summary(a: MigrationAttempt) -> dict:
    """The figures a report shows for one attempt, ours beside QEMU's (ms)."""
    return {
        "vm": a.vm, "instance": a.instance, "source": a.source_host, "destination": a.dest_host,
        "start_ns": a.start, "verdict": a.verdict, "reason": a.reason, "rolled_back": a.rolled_back,
        "qemu_state": a.final_state, "total_ms": _ms(a.total_ns), "qmp_total_ms": a.qmp.get("total-time-ms"),
        "setup_ms": _ms(a.setup_ns), "precopy_ms": _ms(a.precopy_ns), "syncs": a.syncs,
        "qmp_dirty_sync_count": a.qmp.get("dirty-sync-count"),
        "rounds": [{"round": r.index, "start_ns": r.start, "ms": _ms(r.end - r.start), "dirty_pages": r.dirty_pages}
                   for r in a.rounds],
        "stop_copy_start_ns": a.stop_copy_start, "downtime_visible_ms": _ms(a.downtime_ns),
        "downtime_source_ms": _ms(a.source_downtime_ns), "vcpu_pause_ms": _ms(a.vcpu_pause_ns),
        "handover_ms": _ms(a.handover_ns),
        "qmp_downtime_ms": a.qmp.get("downtime-ms"), "dirty_rate_pages_s": _round(a.dirty_rate_pps),
        "qmp_dirty_pages_rate": a.qmp.get("dirty-pages-rate"), "transfer_rate_pages_s": _round(a.transfer_rate_pps),
        "transferred_bytes": a.qmp.get("transferred"), "throttle_events": a.throttle_events,
        "request_id": a.request_id,
        "nova_steps": [{"step": s.name, "host": s.host, "start_ns": s.start, "end_ns": s.end,
                        "ms": _ms(s.end - s.start) if s.start is not None and s.end is not None else None}
                       for s in a.nova_steps],
    }


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def dirty_curve_text(a: MigrationAttempt, width: int = 50) -> list[str]:
    """One line per round: its index, dirty pages and a bar."""
    if not a.rounds:
        return []
    top = max(r.dirty_pages for r in a.rounds) or 1
    lines = []
    for r in a.rounds:
        eighths = round(r.dirty_pages / top * width * 8)
        bar = "█" * (eighths // 8) + (BARS[eighths % 8] if eighths % 8 else "")
        label = "precopy" if r.index == 0 else f"round {r.index}"
        lines.append(f"{label:>9} {r.dirty_pages:>8} │{bar}")
    return lines
