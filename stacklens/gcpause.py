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
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_holders = 0  # blocks (in any thread) inside a pause this module started


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the block without cyclic GC; collect the block's own cycles when it ends. Blocks
    running at once in several threads (ingest reads two parts at a time) share one pause:
    the collector comes back when the last of them ends."""
    global _holders
    with _lock:
        if _holders == 0 and not gc.isenabled():  # the caller manages GC itself
            mine = False
        else:
            mine = True
            _holders += 1
            gc.disable()
    if not mine:
        yield
        return
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                gc.collect(0)
                gc.enable()
