"""Cyclic garbage collection paused around hot loops.

Ingest and model builds allocate many short-lived container objects (Arrow wrappers, NumPy
views, futures) that reference counting frees at once; Python's cyclic collector still scans
every tracked object each time allocations pass its threshold, which cost a quarter of an
ingest's CPU in perf. Inside `paused_gc()` the collector does not run; on leaving, one
young-generation collection frees whatever cycles the loop left (everything allocated while
paused is still in generation 0), so a long ingest of many parts frees memory between parts.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the block without cyclic GC; collect the block's own cycles when it ends."""
    if not gc.isenabled():  # nested, or the caller manages GC itself
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.collect(0)
        gc.enable()
