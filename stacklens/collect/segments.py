"""Segments: the files a tracer writes, durable before anything upstream is acknowledged.

A tracer appends lines to one open segment (`NAME-<start ns>-<seq>.<ext>.open`), makes each
batch durable with fsync before it acknowledges the batch to its source, and seals the
segment (rename to `NAME-…<ext>`, fsync of the directory) when it is large or old enough, or
when the tracer stops. Only sealed segments are listed for shipping, so a reader never sees a
half-written file. After a crash `recover()` cuts the torn tail of an open segment at its
last complete line and seals it: what the source did not see acknowledged comes again and
is deduplicated by the tracer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

OPEN_SUFFIX = ".open"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sealed_segments(directory: Path) -> list[Path]:
    """Sealed segments in write order (the name carries start time and sequence)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and not p.name.endswith(OPEN_SUFFIX) and not p.name.endswith(".tmp"))


class SegmentWriter:
    """Append-only line segments with durable batches and size/age sealing."""

    def __init__(self, directory: Path, name: str, ext: str = "jsonl",
                 max_bytes: int = 64 << 20, max_age_s: float = 10.0, durable: bool = True):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.ext = name, ext
        self.max_bytes, self.max_age_s, self.durable = max_bytes, max_age_s, durable
        self._seq = 0
        self._file = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self.sealed_count = 0
        self.recover()

    def recover(self) -> list[Path]:
        """Seal the open segments a crashed run left, cut at their last complete line."""
        sealed = []
        for p in sorted(self.dir.glob(f"{self.name}-*{OPEN_SUFFIX}")):
            with open(p, "r+b") as f:
                data_len = f.seek(0, os.SEEK_END)
                keep = _last_newline_end(f, data_len)
                if keep != data_len:
                    f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            if keep == 0:
                p.unlink()
                continue
            final = p.with_name(p.name[: -len(OPEN_SUFFIX)])
            os.replace(p, final)
            sealed.append(final)
        if sealed:
            fsync_dir(self.dir)
        return sealed

    def _open(self) -> None:
        self._seq += 1
        stem = f"{self.name}-{time.time_ns()}-{os.getpid()}-{self._seq:06d}.{self.ext}"
        self._path = self.dir / (stem + OPEN_SUFFIX)
        self._file = open(self._path, "ab", buffering=0)
        self._opened_at = time.monotonic()
        self._size = 0

    @property
    def is_open(self) -> bool:
        """True while a segment is open (the next batch goes on in it)."""
        return self._file is not None

    def write_batch(self, data: bytes) -> None:
        """Append whole lines (`data` ends with a newline) and make them durable."""
        if not data:
            return
        if self._file is None:
            self._open()
        view = memoryview(data)
        while view:
            n = self._file.write(view)
            view = view[n:]
        if self.durable:
            os.fdatasync(self._file.fileno())
            if self._size == 0:
                fsync_dir(self.dir)  # the new file's name is durable too
        self._size += len(data)
        if self._size >= self.max_bytes:
            self.seal()

    def maybe_seal(self) -> None:
        if self._file is not None and time.monotonic() - self._opened_at >= self.max_age_s:
            self.seal()

    def seal(self) -> Path | None:
        if self._file is None:
            return None
        f, path = self._file, self._path
        self._file = self._path = None
        if self.durable:
            os.fsync(f.fileno())
        f.close()
        if self._size == 0:
            path.unlink()
            return None
        final = path.with_name(path.name[: -len(OPEN_SUFFIX)])
        os.replace(path, final)
        if self.durable:
            fsync_dir(self.dir)
        self.sealed_count += 1
        return final

    def close(self) -> None:
        self.seal()


def _last_newline_end(f, size: int) -> int:
    """Offset just past the last b"\\n" in the file (0 when there is none)."""
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        chunk = f.read(end - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0
