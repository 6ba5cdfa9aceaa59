"""A crash-safe store: kill -9 and a full disk during a real `stacklens ingest`, queries during one.

The oracle for "which rows must be there" is a clean ingest of the same parts into a fresh
store (its total checked against the data owners' published event counts); a damaged store
must hold exactly the rows of the parts its manifests say were committed, answer `info` and
`sql` without a traceback, and after re-ingesting hold exactly what a clean ingest holds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

from conftest import IN_CI, need_data
from stacklens.store import Store
from stacklens.store.ingest import ingest

# Parts of several formats; total events as published by the data's owners (../shared/data/README).
PUBLISHED = {("openstack", "loghub", "OpenStack_2k.log"): 2_000, ("thesis", "nova"): 299,
             ("thesis", "cinder"): 131, ("thesis", "ovs-switch"): 1_221, ("tracecompass", "bug446190"): 31_556}
KILL_TRIES = int(os.environ.get("STACKLENS_KILL_TRIES", "20"))
SEED = 15


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stacklens.cli", *args], capture_output=True, text=True)


def start_ingest(paths: list[Path], root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stacklens.cli", "ingest", *map(str, paths),
                             "--store", str(root), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def parts() -> list[Path]:
    return [need_data(*p) for p in PUBLISHED]


@pytest.fixture(scope="module")
def oracle(parts, tmp_path_factory) -> dict[str, int]:
    """Rows per source (content hash) from a clean ingest into a fresh store."""
    store = Store(tmp_path_factory.mktemp("clean") / "s", create=True)
    per_src = {r.src: r.rows for r in ingest(store, parts) if r.status == "ingested"}
    assert sum(per_src.values()) == sum(PUBLISHED.values())
    return per_src


def committed(root: Path) -> list[dict]:
    """The manifests on disk: what the store says was committed."""
    return [json.loads(p.read_text()) for p in sorted((root / "sources").glob("*.json"))]


def leftovers(root: Path) -> list[str]:
    """Files no manifest covers: staging areas, orphan Parquet files. (A manifest lists its
    files; one from before manifests did covers the files named after its source.)"""
    manifests = committed(root)
    listed = {f["path"] for m in manifests for f in m.get("files", ())}
    legacy = tuple(m["src"] for m in manifests if "files" not in m)
    out = [str(p.relative_to(root)) for p in (root / "tmp").iterdir()] if (root / "tmp").exists() else []
    for sub in ("events", "lost"):
        out += [rel for p in (root / sub).rglob("*.parquet")
                if (rel := str(p.relative_to(root))) not in listed and not p.name.startswith(legacy)]
    return out


def check_answers(root: Path, oracle: dict[str, int]) -> int:
    """`info` and `sql` answer, with exactly the committed parts' rows; returns the row count."""
    srcs = [m["src"] for m in committed(root)]
    assert set(srcs) <= set(oracle), "a manifest for a source the clean ingest does not know"
    expected = sum(oracle[s] for s in srcs)
    info = cli("info", "--store", str(root), "--json")
    assert info.returncode == 0 and "Traceback" not in info.stderr, info.stderr
    assert json.loads(info.stdout)["events"] == expected
    sql = cli("sql", "--store", str(root), "--csv", "SELECT src, count(*) AS n FROM events GROUP BY src")
    assert sql.returncode == 0 and "Traceback" not in sql.stderr, sql.stderr
    got = {r["src"]: int(r["n"]) for r in csv.DictReader(io.StringIO(sql.stdout))}
    assert got == {s: oracle[s] for s in srcs if oracle[s]}
    assert leftovers(root) == []  # opening the store cleaned what the dead ingest left
    return expected


def reingest_is_exact(root: Path, parts: list[Path], oracle: dict[str, int]) -> None:
    store = Store(root)
    ingest(store, parts)
    rows = dict(store.connect().execute("SELECT src, count(*) FROM events GROUP BY src").fetchall())
    assert rows == {s: n for s, n in oracle.items() if n}
    assert sum(m["rows"] for m in committed(root)) == sum(oracle.values())


def published(root: Path) -> set[str]:
    """Parquet files under events/ and lost/ (committed or not)."""
    return {os.path.join(d, f) for sub in ("events", "lost") for d, _, fs in os.walk(root / sub)
            for f in fs if f.endswith(".parquet")}


def wait_for_store(proc: subprocess.Popen, root: Path) -> None:
    while proc.poll() is None and not (root / "stacklens-store.json").exists():
        time.sleep(0.001)


def test_kill9_during_ingest(parts, oracle, tmp_path):
    """kill -9 at random points (seeded): half at a random time within a clean run's duration,
    half as the n-th Parquet file is published."""
    t0 = time.monotonic()
    clean = start_ingest(parts, tmp_path / "timed")
    wait_for_store(clean, tmp_path / "timed")
    t_store = time.monotonic()
    assert clean.wait(timeout=120) == 0, clean.stderr.read()
    duration = time.monotonic() - t_store  # from the store's creation to the end
    n_files = len(published(tmp_path / "timed"))
    rng = random.Random(SEED)
    killed = dirty = orphaned = answered = exact = 0
    for i in range(KILL_TRIES):
        root = tmp_path / f"k{i}"
        proc = start_ingest(parts, root)
        if i % 2 == 0:
            wait_for_store(proc, root)
            try:
                proc.wait(timeout=rng.uniform(0, duration))
            except subprocess.TimeoutExpired:
                pass
        else:  # as the n-th file is published: often inside the commit, before the manifest
            nth, extra = rng.randint(1, n_files), (0 if i % 4 == 1 else rng.uniform(0, 0.01))
            while proc.poll() is None and len(published(root)) < nth:
                time.sleep(0.0002)
            time.sleep(extra)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        proc.stderr.close()
        if not (root / "stacklens-store.json").exists():
            continue  # killed before the store existed: nothing to check
        left = leftovers(root)
        dirty += bool(left)
        orphaned += any(not p.startswith("tmp") for p in left)  # killed between publish and commit
        check_answers(root, oracle)
        answered += 1
        reingest_is_exact(root, parts, oracle)
        exact += 1
    print(f"kill -9: {KILL_TRIES} tries, {killed} killed mid-ingest ({dirty} left a staging area, "
          f"{orphaned} of them published files without a manifest), {answered} stores answered "
          f"info/sql with exactly the committed parts' rows, {exact} exact after re-ingest")
    assert killed >= KILL_TRIES // 2  # most tries really interrupted an ingest


def mount_tmpfs(where: Path, size: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"cannot mount a size-limited tmpfs (needs root): {r.stderr.strip()}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def test_disk_full_keeps_only_complete_parts(parts, oracle, tmp_path):
    """A tmpfs too small for the last part: ingest stops at it with one line, the store keeps
    the parts before it whole, and after growing the file system a re-ingest is exact."""
    clean = Store(tmp_path / "clean", create=True)
    results = ingest(clean, parts)
    sizes = {r.path: sum(f.stat().st_size for f in clean.root.rglob(f"{r.src}-*.parquet")) for r in results}
    last = parts[-1]
    big = sizes[str(last)]
    assert big == max(sizes.values())
    # room for every part but the last and largest (a 4 KiB page more per file and manifest)
    # plus half of it
    room = sum(n + 2 * 4096 for n in sizes.values()) - big + big // 2
    mnt = tmp_path / "small"
    mount_tmpfs(mnt, room)
    try:
        root = mnt / "s"
        r = cli("ingest", *map(str, parts), "--store", str(root))
        assert r.returncode == 2
        assert r.stderr == (f"stacklens: error: {last}: disk full while writing the store; "
                            "nothing from this part was kept\n")
        assert "Traceback" not in r.stdout
        kept = check_answers(root, oracle)
        assert kept == sum(PUBLISHED.values()) - PUBLISHED[("tracecompass", "bug446190")]
        subprocess.run(["mount", "-o", f"remount,size={4 * room}", str(mnt)], check=True)
        reingest_is_exact(root, parts, oracle)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_query_during_ingest_sees_whole_parts(tmp_path):
    """Queries from this process while another ingests: every snapshot holds whole parts only
    (a sum of some parts' published counts) and its `sources` agree with its `events`."""
    many = need_data("tracecompass", "many-threads")
    paths = [need_data("openstack", "loghub", "OpenStack_2k.log"), need_data("thesis", "cinder"), many]
    published = [2_000, 131, 240_644]
    whole = {sum(c) for k in range(len(published) + 1) for c in combinations(published, k)}
    root = tmp_path / "s"
    Store(root, create=True)
    proc = start_ingest(paths, root)
    seen: Counter[int] = Counter()
    while True:
        done = proc.poll() is not None
        con = Store(root).connect()
        n, = con.execute("SELECT count(*) FROM events").fetchone()
        listed, = con.execute("SELECT coalesce(sum(rows), 0) FROM sources").fetchone()
        assert n == listed and n in whole, (n, listed)
        seen[n] += 1
        if done:
            break
    assert proc.returncode == 0, proc.stderr.read()
    assert max(seen) == sum(published)
    assert sum(seen.values()) >= 5 and len(seen) >= 2  # the queries really ran during the ingest


def test_concurrent_writers_commit_each_part_once(oracle, parts, tmp_path):
    """Three `stacklens ingest` processes at once on the same store, two of them on the same
    parts (as parallel workers may be): every part is committed by exactly one of them."""
    root = tmp_path / "s"
    jobs = [parts, parts, list(reversed(parts))]
    procs = [subprocess.Popen([sys.executable, "-m", "stacklens.cli", "ingest", *map(str, p),
                               "--store", str(root), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in jobs]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in outs]
    ingested = Counter()
    for out, _ in outs:
        for r in json.loads(out)["parts"]:
            if r["status"] == "ingested":
                ingested[r["src"]] += 1
    assert ingested == Counter(set(oracle))  # once each, by whichever process got there first
    check_answers(root, oracle)
    assert sum(m["rows"] for m in committed(root)) == sum(PUBLISHED.values())


def test_same_part_from_two_writers_is_committed_once(tmp_path):
    """The commit-time check under the lock: the second writer of one content adds nothing,
    gets the first one's manifest back, and leaves no file behind."""
    import pyarrow as pa
    store = Store(tmp_path / "s", create=True)
    rows = pa.table({"ts": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"],
                     "pos": pa.array([0, 1, 2], pa.int64())})
    a, b = store.writer("feedface"), store.writer("feedface")
    for w in (a, b):
        w.write(rows, host="h", layer="app", source="test")
    first = a.commit({"path": "x"})
    second = b.commit({"path": "x"})
    assert b.duplicate and not a.duplicate and second == first
    assert store.connect().execute("SELECT count(*) FROM events").fetchone() == (3,)
    assert leftovers(store.root) == []
