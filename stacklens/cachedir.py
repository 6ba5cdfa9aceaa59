"""Where stacklens keeps what it can build again (parsed CTF metadata, the CTF kernels built
ahead of time): $STACKLENS_CACHE, else $XDG_CACHE_HOME/stacklens, else ~/.cache/stacklens;
STACKLENS_CACHE=off (or none) keeps nothing."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(part: str) -> Path | None:
    """The cache's folder for `part`, or None when the cache is off (not created here)."""
    base = os.environ.get("STACKLENS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stacklens")
    if base in ("", "off", "none"):
        return None
    return Path(base) / part
