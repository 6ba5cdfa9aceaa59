"""Benchmark: notification and oslo.log JSON decoding rate (records/s, one core) against the
Python peer: `json.loads` per line plus the same field look-ups — what a straightforward
Python reader spends. Goal (issue 4): ≥ 300 k records/s per core.

Input: Nova's real versioned sample `instance-create-end.json` ($ref resolved) and a real
oslo.log JSONFormatter record, repeated with varying timestamps/request ids (bare and, for
every other notification, in the oslo.message envelope).

usage: python bench/app_records.py [--records N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT.parent / "shared" / "data" / "openstack" / "nova-notification-samples"

from stacklens.sources.base import ReadOptions  # noqa: E402
from stacklens.sources.notifications import NotificationReader, resolve_refs  # noqa: E402
from stacklens.sources.oslo_json import OsloJsonLogReader  # noqa: E402


def notification_lines(n: int) -> list[str]:
    base = resolve_refs(json.loads((SAMPLES / "instance-create-end.json").read_text()), SAMPLES)
    out = []
    for i in range(n):
        m = dict(base, timestamp=f"2024-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000000:06d}",
                 message_id=f"m-{i}", _context_request_id=f"req-{i:032d}")
        s = json.dumps(m)
        out.append(json.dumps({"oslo.version": "2.0", "oslo.message": s}) if i % 2 else s)
    return out


def json_log_lines(n: int) -> list[str]:
    from oslo_log import formatters
    rec = logging.LogRecord("nova.compute.manager", logging.INFO, "manager.py", 42,
                            "Took %s seconds to spawn the instance", ("12.3",), None)
    base = json.loads(formatters.JSONFormatter().format(rec))
    out = []
    for i in range(n):
        base["created"] = 1704067200.0 + i * 0.001
        base["context"] = {"request_id": f"req-{i:032d}"}
        out.append(json.dumps(base))
    return out


def peer(path: Path, keys: list[str]) -> int:
    n = 0
    with open(path) as f:
        for line in f:
            m = json.loads(line)
            if "oslo.message" in m:
                m = json.loads(m["oslo.message"])
            for k in keys:
                m.get(k)
            n += 1
    return n


def ours(reader_cls, path: Path) -> int:
    r = reader_cls(path, ReadOptions())
    return sum(t.num_rows for t in r.tables())


def best(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    n = ap.parse_args().records
    with tempfile.TemporaryDirectory() as d:
        for label, lines, cls, keys in (
            ("notifications", notification_lines(n), NotificationReader,
             ["event_type", "timestamp", "publisher_id", "payload", "_context_request_id"]),
            ("oslo.log JSON", json_log_lines(n), OsloJsonLogReader,
             ["created", "name", "levelname", "message", "context", "process"]),
        ):
            p = Path(d) / "in.jsonl"
            p.write_text("\n".join(lines) + "\n")
            assert ours(cls, p) == n, "reader lost records"
            t_ours = best(lambda: ours(cls, p))
            t_peer = best(lambda: peer(p, keys))
            mb = p.stat().st_size / 1e6
            print(f"{label}: {n} records, {mb:.0f} MB: stacklens {n / t_ours / 1e3:.0f} k records/s"
                  f" ({mb / t_ours:.0f} MB/s); peer json.loads {n / t_peer / 1e3:.0f} k records/s;"
                  f" ratio {t_peer / t_ours:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
