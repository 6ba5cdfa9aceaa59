"""The store on an object store (s3://, …) or any fsspec filesystem, committed by manifests.

Object stores have no rename and no locks; what they do offer is a PUT that is all or nothing
(an object exists whole or not at all) and a listing. Layout under the store's URL:
    stacklens-store.json                              {"version": 1, "commit": "manifest"}
    events/host=<h>/layer=<l>/<src>-<w>-<k>.parquet   rows of the common event table
    lost/<src>-<w>.parquet                            lost (discarded) event records
    manifests/<src>/<w>.json                          a part's manifest: its commit
    writers/<w>.json                                  a writer at work: its source and files
    clocks/<w>.json                                   clock transforms (the last by name holds)
`<w>` is the writer's token: its start time (ns, 16 hex digits), process id and a random part,
so no two writers share a name and names sort by start time.

Commit. A writer first PUTs its claim writers/<w>.json (the source, and each file name before
that file is written, so the claim always covers what the writer may have left). Its Parquet
files go straight to their final, unique names. Then:
    1. if a manifest of the source exists, another writer committed the same content: the
       writer deletes its files and claim (`duplicate`);
    2. if its claim is gone, a collector took it for dead (below): it stops with an error;
    3. it PUTs manifests/<src>/<w>.json listing its files — the commit point;
    4. it lists the source's manifests again: when two writers raced past step 1, the first
       manifest by name (the earlier writer) is the source's, for every reader; the other one
       is `duplicate` and its files are left for the collector;
    5. it deletes its claim.
Readers list manifests/ and read only the files of each source's first valid manifest by
name (a manifest is valid once it parses as a whole: on a filesystem, where a write is not
atomic, a manifest being written is not yet one), so files without a manifest — a killed
writer's, a losing duplicate's — are never read.

Collection, after a grace period (GRACE_S, env STACKLENS_STORE_GRACE_S, default an hour): a
claim not rewritten for that long belongs to a dead writer (a live one rewrites it as it
starts each file); a new writer collects such claims as it starts — the claim first, then its
files unless its manifest is the source's. `stacklens gc` also sweeps what no claim covers:
files and losing manifests older than the grace period that no source's manifest names. The
grace period is what protects a slow writer and a reader still reading a losing duplicate's
files: a writer silent for longer than it finds its claim gone at step 2.

On a local filesystem (file://) files are written and fsynced in place, and their directories
fsynced before the manifest is written (and it fsynced): a write interrupted by a crash leaves
a partial file no manifest names, which readers never see, and a manifest that survives a
crash of the machine names files that survive it too.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from stacklens.errors import StacklensError
from stacklens.store.location import is_url, url_to_fs
from stacklens.store.store import (EVENT_FILE_OPTIONS, STORE_MARK, STORE_VERSION, ClockTransform,
                                   SourceWriter, Store, _manifest_files, fsync_path)

if TYPE_CHECKING:
    import duckdb

GRACE_S = 3600.0
MANIFESTS = "manifests"
WRITERS = "writers"
CLOCKS = "clocks"
CLOCKS_KEPT = 2  # the newest clock objects kept: a reader that listed the previous one still finds it


def grace_s() -> float:
    try:
        return float(os.environ.get("STACKLENS_STORE_GRACE_S", GRACE_S))
    except ValueError:
        raise StacklensError("STACKLENS_STORE_GRACE_S: not a number of seconds") from None


def new_token() -> str:
    return f"{time.time_ns():016x}-{os.getpid()}-{secrets.token_hex(4)}"


def file_token(name: str) -> str | None:
    """The writer token in an event or lost file's name (<src>-<w>[-<k>].parquet)."""
    parts = name.removesuffix(".parquet").split("-")
    return "-".join(parts[1:4]) if len(parts) in (4, 5) else None


def _mtime(info: dict[str, Any]) -> float | None:
    """Last modification (seconds since the epoch) from an fsspec `info`, whatever the
    implementation calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        v = info.get(key)
        if isinstance(v, datetime):
            return v.timestamp()
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _valid(record: Any, src: str) -> bool:
    return isinstance(record, dict) and record.get("src") == src and isinstance(record.get("files"), list)


class ObjectStore(Store):
    """A store at a URL, through fsspec (see the module's docstring)."""

    def __init__(self, root: str | os.PathLike[str], create: bool = False) -> None:
        text = os.fspath(root)
        # a path here is a local store created from a file:// URL (its mark says so)
        url = text if is_url(text) else "file://" + str(Path(text).resolve())
        self.fs, self.path = url_to_fs(url)
        self.local = "file" in _protocols(self.fs)
        self.root = self.fs.unstrip_protocol(self.path)  # what the workers of a cluster open
        try:
            raw = self._get(STORE_MARK)
            if raw is None:
                if not create:
                    if not self.fs.exists(self.path):
                        raise StacklensError(f"{self.root}: no such store (run `stacklens ingest` first)")
                    raise StacklensError(f"{self.root}: not a stacklens store (no {STORE_MARK})")
                self._create()
            else:
                try:
                    mark = json.loads(raw)
                except ValueError:
                    raise StacklensError(f"{self.root}: unreadable {STORE_MARK}") from None
                if not isinstance(mark, dict) or mark.get("commit") != "manifest":
                    raise StacklensError(f"{self.root}: a store committed by rename (created from a path): "
                                         "open it by its path on a filesystem")
        except OSError as e:  # permissions, the network, an unknown bucket
            raise StacklensError(f"{self.root}: cannot open the store ({type(e).__name__}: {e})") from None

    def _create(self) -> None:
        # Several processes may create the same store at once: the mark's content is the same.
        try:
            others = [p for p in self.fs.ls(self.path, detail=False)
                      if p.rstrip("/").rsplit("/", 1)[-1] != STORE_MARK]
        except FileNotFoundError:
            others = []
        if others and self._get(STORE_MARK) is None:
            raise StacklensError(f"{self.root}: exists and is not a stacklens store")
        self._put(STORE_MARK, json.dumps({"version": STORE_VERSION, "commit": "manifest"}).encode())

    # ---- objects -------------------------------------------------------------------------
    def _p(self, rel: str) -> str:
        return f"{self.path}/{rel}"

    def _rel(self, path: str) -> str:
        return path[len(self.path) + 1:] if path.startswith(self.path + "/") else path.lstrip("/")

    def _file(self, rel: str) -> str:  # type: ignore[override]
        """A store-relative path as DuckDB reads it: a local path, or a URL of the registered
        fsspec filesystem."""
        return self._p(rel) if self.local else self.fs.unstrip_protocol(self._p(rel))

    def _get(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._p(rel))
        except FileNotFoundError:
            return None

    def _put(self, rel: str, data: bytes) -> None:
        """Write one whole object: a single PUT on an object store (all or nothing); on a
        filesystem written and fsynced in place (readers never take a partial one for whole:
        a manifest that does not parse is not one)."""
        path = self._p(rel)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._fsync_dirs([rel])
        else:
            self.fs.pipe_file(path, data)

    def _fsync_dirs(self, rels: list[str]) -> None:
        """On a filesystem: make the names of these files durable (their directories up to the
        store's, some possibly just created), so that no durable manifest names a file whose
        name a crash of the machine could lose."""
        dirs = set()
        for rel in rels:
            parts = rel.split("/")[:-1]
            dirs.update("/".join(parts[:i]) for i in range(len(parts), 0, -1))
        for d in sorted(dirs, key=lambda d: -d.count("/")):  # deepest first
            fsync_path(Path(self._p(d)))

    def _rm(self, rels: list[str]) -> list[str]:
        """Delete objects; returns those that were there."""
        gone = []
        for rel in rels:
            try:
                self.fs.rm_file(self._p(rel))
                gone.append(rel)
            except FileNotFoundError:
                pass
        return gone

    def _list(self, prefix: str, detail: bool = False) -> Any:
        """Every object under `prefix` (recursively): store-relative names, or name → info."""
        try:
            found = self.fs.find(self._p(prefix), detail=detail)
        except FileNotFoundError:
            return {} if detail else []
        if detail:
            return {self._rel(p): i for p, i in found.items() if i.get("type", "file") != "directory"}
        return sorted(self._rel(p) for p in found)

    def _load(self, rels: list[str]) -> dict[str, Any]:
        """name → parsed JSON (None when it does not parse) of the objects that exist."""
        if not rels:
            return {}
        raw = self.fs.cat([self._p(r) for r in rels], on_error="omit")
        out = {}
        for path, data in raw.items():
            try:
                out[self._rel(path)] = json.loads(data)
            except ValueError:
                out[self._rel(path)] = None
        return out

    # ---- sources -------------------------------------------------------------------------
    def _winners(self, src: str | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
        """src → (manifest name, record) of each source's manifest: its first valid one by name."""
        names = self._list(f"{MANIFESTS}/{src}" if src else MANIFESTS)
        by_src: dict[str, list[str]] = {}
        for rel in names:
            parts = rel.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                by_src.setdefault(parts[1], []).append(rel)
        records = self._load(names)
        out = {}
        for s, rels in sorted(by_src.items()):
            for rel in sorted(rels):
                if _valid(records.get(rel), s):
                    out[s] = (rel, records[rel])
                    break
        return out

    def has_source(self, src: str) -> bool:
        return bool(self._winners(src))

    def sources(self) -> list[dict[str, Any]]:
        """Every committed source's manifest (a snapshot, as on a local store)."""
        return [record for _, record in self._winners().values()]

    def writer(self, src: str) -> "ObjectSourceWriter":
        return ObjectSourceWriter(self, src)

    def fingerprint(self) -> tuple:
        """The manifests' and clocks' names: every commit or `sync` adds one."""
        return tuple(self._list(MANIFESTS)), tuple(self._list(CLOCKS))

    def _attach(self, con: "duckdb.DuckDBPyConnection") -> None:
        if not self.local:
            con.register_filesystem(self.fs)

    # ---- clocks --------------------------------------------------------------------------
    def clocks(self) -> dict[str, ClockTransform]:
        for rel in sorted(self._list(CLOCKS), reverse=True):
            raw = self._load([rel]).get(rel)
            if isinstance(raw, dict):
                return {h: ClockTransform(**v) for h, v in raw.items()}
        return {}

    def set_clocks(self, transforms: dict[str, ClockTransform]) -> None:
        data = {h: t.__dict__ for h, t in transforms.items()}
        mine = f"{CLOCKS}/{new_token()}.json"
        self._put(mine, json.dumps(data, indent=1).encode())
        older = [r for r in self._list(CLOCKS) if r < mine]
        self._rm(older[:max(0, len(older) - (CLOCKS_KEPT - 1))])

    # ---- collection ----------------------------------------------------------------------
    def recover(self, grace: float | None = None) -> list[str]:
        """Collect the claims of writers silent for longer than the grace period: the claim,
        then the files it names unless its manifest is the source's. Returns what was removed."""
        grace = grace_s() if grace is None else grace
        now = time.time()
        removed: list[str] = []
        for rel, info in sorted(self._list(WRITERS, detail=True).items()):
            t = _mtime(info)
            if t is not None and now - t < grace:
                continue  # alive (or died recently: left for later)
            claim = self._load([rel]).get(rel)
            token = rel.rsplit("/", 1)[-1].removesuffix(".json")
            removed += self._rm([rel])  # first: a writer that was only slow finds it gone and stops
            if not isinstance(claim, dict) or not claim.get("src"):
                continue  # unreadable: its files are left to `gc`
            src = claim["src"]
            mine = f"{MANIFESTS}/{src}/{token}.json"
            winner = self._winners(src).get(src)
            if winner and winner[0] == mine:
                continue  # committed; died before deleting its claim
            removed += self._rm([mine] + [f for f in claim.get("files", []) if isinstance(f, str)])
        return removed

    def gc(self, grace: float | None = None) -> list[str]:
        """Remove what no source needs, older than the grace period: dead writers' claims and
        files (`recover`), then any event or lost file no source's manifest names and no live
        writer claims, and the manifests that lost a race."""
        grace = grace_s() if grace is None else grace
        removed = self.recover(grace)
        now = time.time()

        def old(info: dict[str, Any]) -> bool:
            t = _mtime(info)
            return t is None or now - t >= grace

        live = {rel.rsplit("/", 1)[-1].removesuffix(".json") for rel in self._list(WRITERS)}
        winners = {rel for rel, _ in self._winners().values()}
        manifests = self._list(MANIFESTS, detail=True)
        keep: set[str] = set()
        losers = []
        records = self._load(sorted(manifests))
        for rel, info in manifests.items():
            if rel in winners or not old(info):
                record = records.get(rel)
                keep.update(_manifest_files(record) if isinstance(record, dict) else ())
            else:
                losers.append(rel)
        removed += self._rm(losers)
        files = {**self._list("events", detail=True), **self._list("lost", detail=True)}
        orphans = [rel for rel, info in sorted(files.items())
                   if rel.endswith(".parquet") and rel not in keep
                   and file_token(rel.rsplit("/", 1)[-1]) not in live and old(info)]
        return removed + self._rm(orphans)


def _protocols(fs: Any) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _put_parquet(store: ObjectStore, dest: str, table: pa.Table, options: dict[str, Any] | None = None) -> None:
    """Write one Parquet object at its final name (a single upload on an object store)."""
    path = store._p(dest)
    if store.local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(table, path, **(options or {}))
        fsync_path(Path(path))
    else:
        with store.fs.open(path, "wb") as f:
            pq.write_table(table, f, **(options or {}))


class ObjectSourceWriter(SourceWriter):
    """A source's writer on an ObjectStore: files at their final names, a claim while it
    works, a manifest object as its commit (see the module's docstring)."""

    store: ObjectStore

    def _open(self) -> None:
        self.token = new_token()
        self._claim = f"{WRITERS}/{self.token}.json"
        self.store.recover()
        self._update_claim()

    def _update_claim(self) -> None:
        """(Re)write the claim: the files this writer may have written, and that it is alive."""
        self.store._put(self._claim, json.dumps(
            {"src": self.src, "pid": os.getpid(), "files": [dest for _, dest, _ in self._staged]}).encode())

    def _file_write(self, table: pa.Table, dest: str, k: int) -> tuple:
        self._staged.append((None, dest, table.num_rows))
        self._update_claim()  # before the file exists: the claim covers it
        return (_put_parquet, self.store, dest, table, EVENT_FILE_OPTIONS)

    def _write_lost(self, lost: pa.Table, dest: str) -> None:
        self._staged.append((None, dest, lost.num_rows))
        self._update_claim()
        _put_parquet(self.store, dest, lost)

    def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        record = self._record(manifest)
        store = self.store
        existing = store._winners(self.src).get(self.src)
        if existing is not None:  # another writer committed the same content first
            self.duplicate = True
            self.abort()
            return existing[1]
        if store._get(self._claim) is None:
            self.abort()
            raise StacklensError(f"{store.root}: the writer of source {self.src} was silent for longer than "
                                 f"the grace period ({grace_s():.0f} s) and its files were collected; ingest again")
        mine = f"{MANIFESTS}/{self.src}/{self.token}.json"
        if store.local:  # each file was fsynced as written; now their names
            store._fsync_dirs([dest for _, dest, _ in self._staged])
        store._put(mine, json.dumps(record, indent=1).encode())  # the commit point
        self._done = True
        winner = store._winners(self.src).get(self.src)
        if winner is not None and winner[0] != mine:  # a race past the check: the earlier one holds
            self.duplicate = True  # ours is never read; the collector takes it after the grace period
            return winner[1]
        store._rm([self._claim])
        return record

    def _cleanup(self) -> None:
        """Delete this writer's files (none is in a manifest), then its claim."""
        self.store._rm([dest for _, dest, _ in self._staged])
        self.store._rm([self._claim])

    def _release(self) -> None:
        pass
