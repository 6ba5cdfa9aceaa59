"""Content ids of parts (what makes an ingest idempotent), and their computation ahead of time.

`source_id` hashes a file, or a directory's files (relative names and bytes). `prehash` starts
a thread that computes the ids of the parts named on the command line while the command is
still importing its modules: reads and hashing release the GIL, and the imports (~0.2 s)
kept the other CPUs idle. This module imports nothing heavy, so that the command can start
it first.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

HASH_CHUNK = 1 << 20


def source_id(path: Path) -> str:
    """Content hash of a file, or of a directory's files (relative names and bytes)."""
    h = hashlib.sha256()  # the fastest of hashlib's here (CPU SHA extensions)
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()[:24]


class PreHashes:
    """The ids of `paths`, computed in order by a thread of their own. `take(path)` gives a
    path's id once (waiting if it is being computed), or None when the thread has not come
    to it: the caller then computes it, and the thread skips it."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = [_key(p) for p in paths]
        self._ids: dict[str, str | None] = {}
        self._claimed: set[str] = set()
        self._current: str | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="stacklens-prehash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for key in self._paths:
            with self._cond:
                if key in self._claimed or key in self._ids:
                    continue
                self._current = key
            found: str | None = None
            try:
                found = source_id(Path(key))
            except Exception:  # noqa: BLE001 - the part's own hashing meets it again and reports it
                pass
            finally:  # whatever happened, a part waiting for this one is let go
                with self._cond:
                    self._ids[key] = found
                    self._current = None
                    self._cond.notify_all()

    def take(self, path: Path) -> str | None:
        key = _key(path)
        with self._cond:
            while self._current == key:
                self._cond.wait()
            self._claimed.add(key)
            return self._ids.pop(key, None)


def _key(path: Path) -> str:
    return os.path.realpath(path)


_PREHASHES: PreHashes | None = None


def prehash(paths: list[Path]) -> None:
    """Start computing the ids of `paths` (parts: trace directories or files) now."""
    global _PREHASHES
    _PREHASHES = PreHashes(paths)


def part_source_id(path: Path) -> str:
    """The id of a part: computed ahead by `prehash`, else now."""
    pre = _PREHASHES
    found = pre.take(path) if pre is not None else None
    return found if found is not None else source_id(path)


def whole_parts(args: list[str]) -> list[Path]:
    """The paths among an `ingest` command line's arguments that are parts as they are: a
    regular file, or a directory with a CTF `metadata` file (a bundle directory's parts are
    found by recognising its content, after the imports)."""
    out = []
    for a in args:
        p = Path(a)
        try:
            if p.is_file() or (p.is_dir() and (p / "metadata").is_file()):
                out.append(p)
        except OSError:
            continue
    return out
