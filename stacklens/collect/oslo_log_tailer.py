"""The oslo.log file tailer: new complete records of the services' log files → segments.

Lines are copied unchanged (the oslo.log and oslo.log JSON readers recognise them), one
segment stream per file. Segments are cut only at record boundaries: a record's traceback
(continuation lines, or oslo.log's exception-prefixed lines sharing the record's timestamp,
pid and logger) is never split between two segments, where the reader would see orphan
continuation lines. The last record read is held back until the next record starts, or
until the file has been quiet for `hold_s` (a traceback is written at once, not over
seconds), or until the file is rotated away.

Rotation: the file is kept open; when the path names another file (logrotate's rename, or
oslo.log's WatchedFileHandler reopening), the old file is read to its end through the open
descriptor before the new one is read from its start. A copy-truncate (same file, shorter)
restarts at 0. The (inode, offset) of the end of what is durable is saved after each write,
so a restart resumes there, first in the rotated file of that inode if the path has moved on
(looked for in the same directory).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from stacklens.collect.segments import SegmentWriter
from stacklens.sources.oslo_log import HEADER

MAX_READ = 8 << 20
_HEADER = re.compile(HEADER.encode())


def record_start(line: bytes, previous_key: Any) -> tuple[bool, Any]:
    """(does `line` start a new record, the header key to compare the next line with).

    A JSON line is a record of its own. An oslo.log header line starts a record unless it is
    oslo.log's exception-prefixed traceback line: same (date, time, pid, logger) as the
    header before it and no context bracket (the rule the oslo.log reader folds by). Lines
    without a header are continuation lines."""
    if line.startswith(b"{"):
        return True, None
    m = _HEADER.match(line.rstrip(b"\r\n"))
    if m is None:
        return False, previous_key
    key = m.group("date", "time", "pid", "logger")
    rest = m.group("rest") or b""
    return (key != previous_key or rest.startswith(b"[")), key


class TailedFile:
    def __init__(self, path: Path, out: Path, seal_after_s: float, hold_s: float):
        self.path = path
        self.hold_s = hold_s
        self.segments = SegmentWriter(out, re.sub(r"[^A-Za-z0-9_.-]", "_", path.name), ext="log",
                                      max_age_s=seal_after_s)
        self.f = None          # the open file being read (may be the rotated one)
        self.ino: int | None = None
        self.read_off = 0      # end of what was read from self.f
        self.pending = b""     # read, not written: from the last record start on
        self.last_key: Any = None
        self.last_data = time.monotonic()

    @property
    def durable_off(self) -> int:
        return self.read_off - len(self.pending)

    def open(self, saved: tuple[int, int] | None) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if saved is not None:
            ino, off = saved
            if ino == st.st_ino:
                self._open(self.path, off if off <= st.st_size else 0)
                return
            rotated = _find_inode(self.path.parent, ino)
            if rotated is not None:  # moved on while we were down: finish that file first
                self._open(rotated, off)
                return
        self._open(self.path, 0)

    def _open(self, path: Path, off: int) -> None:
        self.f = open(path, "rb")
        self.ino = os.fstat(self.f.fileno()).st_ino
        self.f.seek(off)
        self.read_off = off
        self.pending, self.last_key = b"", None

    def poll(self) -> bool:
        """Read what is new, write whole records; True when something was written."""
        if self.f is None:
            self.open(None)
            if self.f is None:
                return False
        wrote = self._read_and_write()
        try:
            st = self.path.stat()
        except OSError:
            st = None  # rotated away, the new file not there yet
        if st is not None and st.st_ino != self.ino:
            wrote |= self._read_and_write()      # the old file to its end
            wrote |= self._write(len(self.pending))  # its last record is complete
            self.f.close()
            self._open(self.path, 0)
            wrote |= self._read_and_write()
        elif st is not None and st.st_size < self.read_off:
            self._write(len(self.pending))       # copy-truncate: what we had stands
            self.f.seek(0)
            self.read_off, self.pending, self.last_key = 0, b"", None
        if self.pending and time.monotonic() - self.last_data >= self.hold_s:
            wrote |= self._write(len(self.pending))
        self.segments.maybe_seal()
        return wrote

    def _read_and_write(self) -> bool:
        chunk = self.f.read(MAX_READ)
        end = chunk.rfind(b"\n") + 1
        if end == 0:
            if chunk:
                self.f.seek(self.read_off)  # an incomplete last line waits for its newline
            return False
        if end < len(chunk):
            self.f.seek(self.read_off + end)
        self.last_data = time.monotonic()
        base = len(self.pending)
        self.pending += chunk[:end]
        self.read_off += end
        # the last line that starts a new record: everything before it is whole records
        cut = None
        pos = base
        while pos < len(self.pending):
            nl = self.pending.index(b"\n", pos) + 1
            starts, self.last_key = record_start(self.pending[pos:nl], self.last_key)
            if starts:
                cut = pos
            pos = nl
        return self._write(cut) if cut else False

    def _write(self, n: int) -> bool:
        if n <= 0:
            return False
        self.segments.write_batch(self.pending[:n])
        self.pending = self.pending[n:]
        return True

    def state(self) -> tuple[int, int] | None:
        return (self.ino, self.durable_off) if self.ino is not None else None

    def close(self) -> None:
        self._write(len(self.pending))  # stopping: the held record as it is
        self.segments.close()
        if self.f is not None:
            self.f.close()


def _find_inode(directory: Path, ino: int) -> Path | None:
    try:
        for p in directory.iterdir():
            try:
                if p.is_file() and p.stat().st_ino == ino:
                    return p
            except OSError:
                continue
    except OSError:
        pass
    return None


def main(config: dict[str, Any]) -> None:
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in config.get("paths", [])]
    interval = float(config.get("interval_s", 0.5))
    state_file = out / ".offsets.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    files = {str(p): TailedFile(p, out, float(config.get("seal_after_s", 10.0)),
                                float(config.get("hold_s", 2.0))) for p in paths}
    for key, tf in files.items():
        tf.open(tuple(state[key]) if key in state else None)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def save() -> None:
        for key, tf in files.items():
            if tf.state() is not None:
                state[key] = tf.state()
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_file)

    while not stop:
        if any([tf.poll() for tf in files.values()]):
            save()
        time.sleep(interval)
    for tf in files.values():
        tf.close()
    save()
