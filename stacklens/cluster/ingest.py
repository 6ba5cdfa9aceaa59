"""Ingest on a Dask cluster: one task per part, each running the part's reader and the store's
writer on a worker (stacklens.store.ingest.ingest_part, the embedded ingest's own step).

The client only discovers the parts (bundle.toml, recognition by a look at each part's first
bytes) and collects each part's PartResult; reading, decoding, hashing and writing Parquet run
on the workers. Parts commit independently (one source each), so the store's content is the
embedded ingest's whatever the order the workers finish in.

Two parts of one run with the same content (the same source id): the embedded ingest reads
the first and finds the second already in the store. Here parts whose sizes collide are hashed
first (on the workers); the later copies wait for a second wave, so they meet the first's
commit just as they do in-process.

A part whose task failed for good (its workers died more often than the scheduler retries)
stops the run with one line naming it, after what its workers wrote for it is removed.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Callable

from stacklens.cluster import client, gather, placement, shared_path
from stacklens.sources.bundle import Part, discover
from stacklens.store.ingest import PartResult, ingest_part, part_size, source_id
from stacklens.store.store import Store


def ingest_task(root: str, part: Part, host: str | None, tz: str | None) -> PartResult:
    """What a worker runs for one part: the store at `root` (shared), the part's reader."""
    return ingest_part(Store(root), part, host, tz)


def source_id_task(path: Path) -> str:
    return source_id(path)


def ingest_on_cluster(address: str, store: Store, paths: list[Path], host: str | None = None,
                      tz: str | None = None,
                      on_done: Callable[[Part, int], None] | None = None) -> list[PartResult]:
    """`ingest(store, paths, host, tz)` with one Dask task per part; `on_done(part, size)` is
    called as each part finishes. Results come in the order of the parts, as in-process."""
    from distributed import as_completed

    c = client(address)
    root = shared_path(store.root)
    parts = discover(paths)
    known = {s.get("src") for s in store.sources()}
    # The workers open the parts by absolute path; results keep the names the user gave.
    sent = [dataclasses.replace(p, path=Path(shared_path(p.path))) for p in parts]
    sizes = [part_size(p.path) if p.reader is not None else 0 for p in parts]
    results: list[PartResult | None] = [None] * len(parts)
    for i, p in enumerate(parts):
        if p.reader is None:  # nothing to read: reported as the embedded ingest does
            results[i] = ingest_part(store, p, host, tz)

    run = uuid.uuid4().hex[:8]  # task keys unique to this run
    # a part whose host is known before it is read (--host, bundle.toml) prefers the worker
    # that the per-host analyses of that host prefer: what it writes stays in that machine's
    # page cache for them (stacklens.cluster.placement); the others go where Dask puts them
    where = placement(c, sorted({host or p.host for p in parts if host or p.host}))

    def prefer(i: int) -> dict:
        h = host or parts[i].host
        return {"workers": [where[h]], "allow_other_workers": True} if h in where else {}

    first_wave, later = _split_duplicates(c, [i for i, p in enumerate(parts) if p.reader is not None],
                                          sent, sizes, run)
    for wave in (first_wave, later):
        if not wave:
            continue
        futures = {c.submit(ingest_task, root, sent[i], host, tz, key=f"ingest-{run}-{i}-{_name(parts[i])}",
                            **prefer(i)): i
                   for i in wave}
        try:
            for f in as_completed(list(futures), loop=c.loop):
                if f.status == "finished" and on_done:
                    on_done(parts[futures[f]], sizes[futures[f]])
            for f, i in futures.items():
                if f.status != "finished":  # failed for good: leave nothing of it in the store
                    _drop_uncommitted(store, sent[i])
            done = gather(list(futures), [str(parts[i].path) for i in futures.values()], "ingest of")
        finally:
            for f in futures:
                f.release()
        for i, r in zip(futures.values(), done):
            r.path = str(parts[i].path)
            results[i] = _recommitted(store, r, known) if i not in later else r
    return [r for r in results if r is not None]


def _name(part: Part) -> str:
    return part.path.name.replace(" ", "_")[:40]


def _drop_uncommitted(store: Store, part: Part) -> None:
    """Remove what a part's dead workers wrote, unless one of them committed it."""
    src = source_id(part.path)
    if not store.has_source(src):
        store.writer(src).abort()


def _split_duplicates(c, indices: list[int], sent: list[Part], sizes: list[int],
                      run: str) -> tuple[list[int], set[int]]:
    """(parts to run now, parts to run after them): a part with the same content as an earlier
    one of this run waits for it. Only parts whose sizes collide are hashed to find out."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        by_size[sizes[i]].append(i)
    suspects = [i for group in by_size.values() if len(group) > 1 for i in group]
    if not suspects:
        return indices, set()
    futures = [c.submit(source_id_task, sent[i].path, key=f"source-id-{run}-{i}-{_name(sent[i])}") for i in suspects]
    try:
        srcs = gather(futures, [str(sent[i].path) for i in suspects], "hashing of")
    finally:
        for f in futures:
            f.release()
    seen: set[str] = set()
    later: set[int] = set()
    for i, src in sorted(zip(suspects, srcs)):
        if src in seen:
            later.add(i)
        seen.add(src)
    return [i for i in indices if i not in later], later


def _recommitted(store: Store, r: PartResult, known: set) -> PartResult:
    """A part found "already" in the store that was not there before this run and has no twin
    in it: its first worker died after committing, and the scheduler's retry found the commit.
    Reported as ingested, from the committed manifest."""
    if r.status != "already" or r.src in known:
        return r
    m = next((s for s in store.sources() if s.get("src") == r.src), None)
    if m is None:
        return r
    return PartResult(r.path, "ingested", r.format, m.get("host"), r.src, rows=int(m.get("rows") or 0),
                      skipped=int(m.get("skipped") or 0), lost=int(m.get("lost") or 0),
                      message="committed by a worker that died before answering (the retry found it)",
                      notes=list(m.get("notes") or []))
