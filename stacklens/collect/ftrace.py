"""Record kernel scheduling with ftrace (tracefs) where LTTng kernel modules are absent.

Records in a private tracefs instance (instances/<name>), so the top-level buffer and other
users' instances are left alone. The clock is `mono` (CLOCK_MONOTONIC); the recorder writes a
`stacklens_clock offset_ns=N` marker (monotonic + N = UTC) that the ftrace reader applies.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from stacklens.errors import StacklensError

TRACEFS = Path("/sys/kernel/tracing")
SCHED_EVENTS = ("sched/sched_switch", "sched/sched_wakeup", "sched/sched_wakeup_new",
                "sched/sched_process_fork", "sched/sched_process_exec", "sched/sched_process_exit")
# disk requests: queued to the I/O scheduler, handed to the driver, completed, put back
BLOCK_EVENTS = ("block/block_rq_insert", "block/block_rq_issue", "block/block_rq_complete",
                "block/block_rq_requeue")


def mount_tracefs(root: Path = TRACEFS) -> Path:
    """tracefs mounted at `root` (mounted here if it is not yet)."""
    if (root / "instances").is_dir():
        return root
    r = subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)], capture_output=True, text=True, timeout=10)
    if r.returncode != 0 or not (root / "instances").is_dir():
        raise StacklensError(f"cannot mount tracefs at {root}: {r.stderr.strip() or 'no instances/ directory'}")
    return root


class FtraceRecorder:
    """A tracefs instance recording scheduling events; use as a context manager."""

    def __init__(self, name: str, events: tuple[str, ...] = SCHED_EVENTS, buffer_kb: int = 8192,
                 root: Path = TRACEFS) -> None:
        self.root = mount_tracefs(root)
        self.dir = self.root / "instances" / name
        self.events = events
        self.buffer_kb = buffer_kb

    def _write(self, rel: str, value: str) -> None:
        (self.dir / rel).write_text(value)

    def start(self) -> "FtraceRecorder":
        if self.dir.exists():
            raise StacklensError(f"{self.dir}: tracefs instance already exists")
        self.dir.mkdir()
        self._write("tracing_on", "0")
        self._write("trace_clock", "mono")
        self._write("buffer_size_kb", str(self.buffer_kb))
        try:
            self._write("options/record-tgid", "1")
        except OSError:
            pass  # older kernels: no tgid column, processes then come from fork/exec events
        for ev in self.events:
            self._write(f"events/{ev}/enable", "1")
        self._write("tracing_on", "1")
        self.mark_clock()
        return self

    def mark(self, text: str) -> None:
        """A `tracing_mark_write` event with `text` at this instant."""
        fd = os.open(self.dir / "trace_marker", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def mark_clock(self) -> None:
        # The offset between two reads of different clocks: both taken back to back, the
        # error is the gap between them (well under a microsecond, the trace's resolution).
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        self.mark(f"stacklens_clock offset_ns={real - mono}")

    def pause(self) -> None:
        """Stop recording; the buffer keeps what it has (for a last read)."""
        self._write("tracing_on", "0")

    def stop(self, out: Path) -> Path:
        """Stop recording and save the text of the buffer to `out`."""
        self._write("tracing_on", "0")
        out.write_bytes((self.dir / "trace").read_bytes())
        return out

    def close(self) -> None:
        if self.dir.exists():
            try:
                self._write("tracing_on", "0")
                for ev in self.events:
                    self._write(f"events/{ev}/enable", "0")
            finally:
                self.dir.rmdir()

    def __enter__(self) -> "FtraceRecorder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
