"""Trace bundles: find the parts of a directory tree and the host of each.

A bundle is any directory of collected data; an optional `bundle.toml` at its top says where
parts came from:

    host = "controller"          # default host of every part
    tz = "-04:00"                # time zone of text timestamps (default UTC)
    [[parts]]
    path = "compute1/*"          # glob on the path relative to the bundle
    host = "compute1"
    layer = "app"                # optional override

Parts are recognised by content (registry.recognise), not by file name.
"""

from __future__ import annotations

import errno
import fnmatch
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator

import pyarrow as pa

from stacklens.errors import SourceError, StacklensError
from stacklens.sources.base import Reader
from stacklens.sources.registry import recognise

BUNDLE_FILE = "bundle.toml"


@dataclass
class Part:
    path: Path
    reader: type[Reader] | None  # None: not a recognised format
    host: str | None = None
    tz: str = "UTC"
    layer: str | None = None
    settings: dict = field(default_factory=dict)


@dataclass
class BundleConfig:
    root: Path
    host: str | None = None
    tz: str = "UTC"
    parts: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> "BundleConfig":
        p = root / BUNDLE_FILE
        try:
            raw = tomllib.loads(p.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise StacklensError(f"{p}: not a valid bundle.toml: {e}") from None
        parts = raw.get("parts", [])
        if not isinstance(parts, list) or not all(isinstance(x, dict) and "path" in x for x in parts):
            raise StacklensError(f"{p}: [[parts]] entries need a 'path'")
        return cls(root=root, host=raw.get("host"), tz=raw.get("tz", "UTC"), parts=parts)

    def settings_for(self, path: Path) -> dict:
        rel = path.relative_to(self.root).as_posix()
        out = {"host": self.host, "tz": self.tz}
        for spec in self.parts:
            pat = spec["path"].rstrip("/")
            if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/") or fnmatch.fnmatch(rel, pat + "/*"):
                out.update({k: v for k, v in spec.items() if k != "path"})
        return out


def discover(paths: list[Path]) -> list[Part]:
    """Every part under `paths`, with its reader (or None) and its bundle settings.

    Symbolic links are followed, each directory walked once: a link back to a directory
    already walked (a cycle, or a second way to the same one) is reported as a rejected part
    and the walk goes on. FIFOs, sockets and devices are rejected parts too, never opened
    (a FIFO would block the reader, a device never ends)."""
    found: list[Part] = []
    walked: dict[tuple[int, int], Path] = {}  # (st_dev, st_ino) of each directory walked → its path
    for p in paths:
        if not p.exists():
            if p.is_symlink():
                raise StacklensError(f"{p}: a symbolic link to nothing (or a link loop)")
            raise StacklensError(f"{p}: no such file or directory")
        config = _nearest_config(p)
        _walk(p, config, found, walked)
    return found


def _nearest_config(p: Path) -> BundleConfig | None:
    d = p if p.is_dir() else p.parent
    for cand in [d, *d.parents]:
        if (cand / BUNDLE_FILE).exists():
            return BundleConfig.load(cand)
    return None


def special_kind(mode: int) -> str | None:
    """What a file of this st_mode is when it is neither a regular file nor a directory."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file"


def _walk(p: Path, config: BundleConfig | None, out: list[Part],
          walked: dict[tuple[int, int], Path]) -> None:
    try:
        st = p.stat()  # follows a link (once: the target's own links are met as they come)
    except OSError as e:
        kind = "a symbolic link loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})"
        out.append(_rejected(p, f"{kind}: not read", config))
        return
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in walked:
            out.append(_rejected(p, f"the same directory as {walked[key]}, already walked (a link back, or a "
                                    "directory cycle): not read again", config))
            return
        walked[key] = p
        if (p / BUNDLE_FILE).exists() and (config is None or config.root != p):
            config = BundleConfig.load(p)
        try:
            children = [c for c in sorted(p.iterdir()) if not c.name.startswith(".") and c.name != BUNDLE_FILE]
        except OSError as e:
            out.append(_rejected(p, f"a directory that cannot be listed ({e.strerror}): not read", config))
            return
        reader = recognise(p)  # directory readers open regular files only
        if reader is not None:
            out.append(_part(p, reader, config))
            for child in children:  # what the part's reader passes over is said
                kind = _special(child)
                if kind:
                    out.append(_rejected(child, f"{kind} inside {p.name}/: not read", config))
            return
        for child in children:
            _walk(child, config, out, walked)
    elif stat.S_ISREG(st.st_mode):
        out.append(_part(p, recognise(p), config))
    else:
        out.append(_rejected(p, f"{special_kind(st.st_mode)}: not read (only files and directories are)", config))


def _special(p: Path) -> str | None:
    try:
        mode = p.stat().st_mode
    except OSError:
        return None
    return None if stat.S_ISDIR(mode) else special_kind(mode)


def _rejected(p: Path, problem: str, config: BundleConfig | None) -> Part:
    """A part that is reported as rejected, with `problem`, and never opened."""
    return _part(p, type("NotRead", (NotRead,), {"problem": problem}), config)


class NotRead(Reader):
    """Stands for a path that is not read (a device, a FIFO, a link back into the walk): the
    ingest reports it as rejected with the reason, as for any part that cannot be read."""

    format = "not read"
    layer = "app"
    problem: ClassVar[str] = "not read"  # set per rejected path (a subclass each)

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        return False

    def tables(self) -> Iterator[pa.Table]:
        raise SourceError(self.path, self.problem)
        yield  # a generator, so that the error comes when the rows are asked for


def _part(p: Path, reader: type[Reader] | None, config: BundleConfig | None) -> Part:
    s = config.settings_for(p) if config else {}
    return Part(path=p, reader=reader, host=s.get("host"), tz=s.get("tz") or "UTC",
                layer=s.get("layer"), settings=s)
