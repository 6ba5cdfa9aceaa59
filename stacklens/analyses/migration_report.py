"""Migration figures from the migration model: per-attempt summary rows and the dirty-pages
curve (terminal bars and a PNG written with NumPy + zlib, no plotting library needed)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

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


def dirty_curve_png(attempts: list[MigrationAttempt], path: Path, width: int = 640, height: int = 320) -> Path:
    """Dirty pages per round of each attempt as bar groups, side by side, in a PNG."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    colours = [(33, 102, 172), (214, 96, 77), (77, 146, 33), (118, 42, 131)]
    margin = 20
    img[height - margin, margin:width - margin] = 0  # x axis
    img[margin:height - margin, margin] = 0  # y axis
    groups = [a for a in attempts if a.rounds]
    if groups:
        top = max(r.dirty_pages for a in groups for r in a.rounds) or 1
        slot = (width - 3 * margin) / len(groups)
        for g, a in enumerate(groups):
            colour = colours[g % len(colours)]
            bar_w = max(1, int(slot / (len(a.rounds) + 1)))
            for i, r in enumerate(a.rounds):
                x0 = int(2 * margin + g * slot + i * bar_w)
                h = int((height - 2 * margin) * r.dirty_pages / top)
                img[height - margin - h:height - margin, x0:x0 + max(1, bar_w - 2)] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(img))
    return path


def _png(rgb: np.ndarray) -> bytes:
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
