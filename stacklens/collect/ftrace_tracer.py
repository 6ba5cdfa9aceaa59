"""The ftrace tracer: kernel events from a private tracefs instance → segments.

Wraps `FtraceRecorder` (its own instance under tracefs `instances/`, clock `mono`, the
top-level buffer and other users' instances left alone) and drains the instance's
`trace_pipe` (a consuming read, so nothing is read twice) every `interval_s` into durable
segments. Every segment starts with `# tracer: nop` and a `# stacklens_clock offset_ns=N`
comment (mono + N = UTC, taken when the segment opens), so each one is read on its own by
`stacklens.sources.ftrace`. The kernel reports overruns as `LOST N EVENTS` lines; they are
kept (the reader notes them).

Config: events (tracefs event names, default the scheduler's), buffer_kb (per CPU),
interval_s (0.2), seal_after_s, instance (default `stacklens-agent-<hash of out>`). An
instance of that name left by a killed run of this tracer is removed before starting.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from stacklens.collect.ftrace import SCHED_EVENTS, TRACEFS, FtraceRecorder
from stacklens.collect.segments import SegmentWriter

log = logging.getLogger("stacklens.collect.ftrace")
READ_CHUNK = 1 << 20
MAX_PER_ROUND = 64 << 20   # bytes drained per round before the segment gets them


def _clock_offset_ns() -> int:
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return real - mono


def _drain(fd: int) -> bytes:
    """Everything trace_pipe has now (non-blocking)."""
    parts, total = [], 0
    while total < MAX_PER_ROUND:
        try:
            b = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            break
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if not b:
            break
        parts.append(b)
        total += len(b)
    return b"".join(parts)


def main(config: dict[str, Any]) -> None:
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    events = tuple(config.get("events") or SCHED_EVENTS)
    name = config.get("instance") or "stacklens-agent-" + hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]
    interval = float(config.get("interval_s", 0.2))
    root = Path(config.get("tracefs", TRACEFS))
    recorder = FtraceRecorder(name, events=events, buffer_kb=int(config.get("buffer_kb", 8192)), root=root)
    if recorder.dir.exists():
        log.warning("%s: left by an earlier run of this tracer; removing it", recorder.dir)
        recorder.close()
    segments = SegmentWriter(out, "ftrace", ext="ftrace", max_age_s=float(config.get("seal_after_s", 10.0)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    recorder.start()
    written = 0
    try:
        fd = os.open(recorder.dir / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        tail = b""
        try:
            while True:
                stopping = stop.is_set()
                if stopping:
                    recorder.pause()  # what is in the buffer now is the end
                data = tail + _drain(fd)
                cut = data.rfind(b"\n") + 1
                lines, tail = data[:cut], data[cut:]
                if lines:
                    if not segments.is_open:
                        lines = (b"# tracer: nop\n# stacklens_clock offset_ns=%d (stacklens agent)\n"
                                 % _clock_offset_ns()) + lines
                    segments.write_batch(lines)
                    written += lines.count(b"\n")
                segments.maybe_seal()
                _write_status(out, written, name)
                if stopping:
                    break
                stop.wait(interval)
        finally:
            os.close(fd)
    finally:
        recorder.close()
        segments.close()
        _write_status(out, written, name)


def _write_status(out: Path, lines: int, instance: str) -> None:
    tmp = out / ".status.json.tmp"
    tmp.write_text('{"lines": %d, "instance": "%s", "pid": %d}' % (lines, instance, os.getpid()))
    tmp.replace(out / ".status.json")
