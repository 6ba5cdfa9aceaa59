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

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from stacklens.errors import StacklensError
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
    """Every part under `paths`, with its reader (or None) and its bundle settings."""
    found: list[Part] = []
    for p in paths:
        if not p.exists():
            raise StacklensError(f"{p}: no such file or directory")
        config = _nearest_config(p)
        _walk(p, config, found)
    return found


def _nearest_config(p: Path) -> BundleConfig | None:
    d = p if p.is_dir() else p.parent
    for cand in [d, *d.parents]:
        if (cand / BUNDLE_FILE).exists():
            return BundleConfig.load(cand)
    return None


def _walk(p: Path, config: BundleConfig | None, out: list[Part]) -> None:
    if p.is_dir():
        if (p / BUNDLE_FILE).exists() and (config is None or config.root != p):
            config = BundleConfig.load(p)
        reader = recognise(p)
        if reader is not None:
            out.append(_part(p, reader, config))
            return
        for child in sorted(p.iterdir()):
            if child.name.startswith(".") or child.name == BUNDLE_FILE:
                continue
            _walk(child, config, out)
    elif p.is_file():
        out.append(_part(p, recognise(p), config))


def _part(p: Path, reader: type[Reader] | None, config: BundleConfig | None) -> Part:
    s = config.settings_for(p) if config else {}
    return Part(path=p, reader=reader, host=s.get("host"), tz=s.get("tz") or "UTC",
                layer=s.get("layer"), settings=s)
