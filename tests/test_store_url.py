"""A store at a URL (file://, memory://; s3:// the same way through s3fs): committed by manifest
objects, without rename or locks (stacklens/store/objectstore.py).

Oracles: the data owners' published event counts (35,207 events over 8 parts, as in
test_store_crash.py) and the local store (committed by rename under a lock, tested on its own
there): every answer of `info`, `events`, `sql`, `cpu` and `migrations` over the same parts must
be the same on both, and after a writer killed with SIGKILL, concurrent writers of the same
part, and `stacklens gc`, the URL store must hold exactly the clean ingest's rows, once each.
Data files are counted on disk independently of the store's code (os.walk, the manifests'
JSON read here). The Dask ingest into a file:// store is tests/test_cluster.py's
test_local_cluster_equals_embedded.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import need_data, need_program
from stacklens.errors import StacklensError
from stacklens.store import Store
from stacklens.store.ingest import ingest
from stacklens.store.objectstore import ObjectStore

PUBLISHED = {("openstack", "loghub", "OpenStack_2k.log"): 2_000, ("thesis", "nova"): 299,
             ("thesis", "cinder"): 131, ("thesis", "ovs-switch"): 1_221, ("tracecompass", "bug446190"): 31_556}
ROW_HASH = ("SELECT host, layer, src, count(*) AS n, sum(hash(ts, host, layer, source, name, cpu, pid, tid, "
            "procname, request_id, instance, fields, pos)::HUGEINT) AS h FROM events_raw GROUP BY ALL ORDER BY ALL")
KILLS = 4
SEED = 18


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stacklens.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def url(path: Path) -> str:
    return "file://" + str(path)


@pytest.fixture(scope="module")
def parts() -> list[Path]:
    return [need_data(*p) for p in PUBLISHED]


@pytest.fixture(scope="module")
def stores(parts, tmp_path_factory) -> dict:
    """The same parts in a local store and in a file:// store; rows per source (the oracle)."""
    work = tmp_path_factory.mktemp("url")
    local = Store(work / "local", create=True)
    per_src = {r.src: r.rows for r in ingest(local, parts) if r.status == "ingested"}
    assert sum(per_src.values()) == sum(PUBLISHED.values())
    at_url = Store(url(work / "url"), create=True)
    assert isinstance(at_url, ObjectStore)
    results = ingest(at_url, parts)
    assert {r.src: r.rows for r in results if r.status == "ingested"} == per_src
    return {"local": str(work / "local"), "url": url(work / "url"), "dir": work / "url", "oracle": per_src}


# ---- what is on disk, read here without the store's code -------------------------------------
def manifests(root: Path) -> dict[str, list[tuple[str, dict | None]]]:
    """src → [(manifest name, its JSON or None when it does not parse)], names sorted."""
    out: dict[str, list] = {}
    for d in sorted((root / "manifests").glob("*")):
        for m in sorted(d.glob("*.json")):
            try:
                record = json.loads(m.read_text())
            except ValueError:
                record = None
            out.setdefault(d.name, []).append((m.name, record))
    return out


def data_files(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for sub in ("events", "lost")
            for d, _, fs in os.walk(root / sub) for f in fs}


def leftovers(root: Path) -> list[str]:
    """What a clean store does not hold: files no source's manifest (its first parsing one by
    name) names, other manifests, writers' claims."""
    named: set[str] = set()
    extra = []
    for src, ms in manifests(root).items():
        valid = [(n, r) for n, r in ms if isinstance(r, dict) and r.get("src") == src]
        if valid:
            named.update(f["path"] for f in valid[0][1]["files"])
        extra += [f"manifests/{src}/{n}" for n, _ in ms if not valid or n != valid[0][0]]
    claims = [f"writers/{p.name}" for p in (root / "writers").glob("*")] if (root / "writers").exists() else []
    return sorted(data_files(root) - named) + extra + claims


def committed_rows(root: Path, oracle: dict[str, int]) -> dict[str, int]:
    """Rows per committed source, as the clean ingest counted them."""
    srcs = [src for src, ms in manifests(root).items()
            if any(isinstance(r, dict) and r.get("src") == src for _, r in ms)]
    assert set(srcs) <= set(oracle), "a manifest for a source the clean ingest does not know"
    return {s: oracle[s] for s in srcs if oracle[s]}


def rows_per_source(store: str) -> dict[str, int]:
    return dict(Store(store).connect().execute("SELECT src, count(*) FROM events GROUP BY src").fetchall())


def answers(store: str) -> dict[str, int]:
    """`info` and `sql` as a user runs them: the total, and rows per source."""
    info = cli("info", "--store", store, "--json")
    assert info.returncode == 0 and "Traceback" not in info.stderr, info.stderr
    sql = cli("sql", "--store", store, "--csv", "SELECT src, count(*) AS n FROM events GROUP BY src")
    assert sql.returncode == 0 and "Traceback" not in sql.stderr, sql.stderr
    got = {r["src"]: int(r["n"]) for r in csv.DictReader(io.StringIO(sql.stdout))}
    assert json.loads(info.stdout)["events"] == sum(got.values())
    return got


# ---- the same answers --------------------------------------------------------------------------
def invoke(*args: str) -> dict:
    from typer.testing import CliRunner

    from stacklens.cli import _register_commands, app
    if "cpu" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        _register_commands()
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, (args, r.output, r.exception)
    return json.loads(r.stdout)


def test_url_store_answers_as_the_local_store(stores):
    local, at_url = stores["local"], stores["url"]
    assert not (stores["dir"] / "tmp").exists() and not (stores["dir"] / "store.lock").exists()  # no staging, no lock
    assert leftovers(stores["dir"]) == []
    assert Store(local).connect().execute(ROW_HASH).fetchall() == Store(at_url).connect().execute(ROW_HASH).fetchall()
    # opened by its plain path, the store is still committed by manifests (its mark says so)
    assert isinstance(Store(stores["dir"]), ObjectStore)
    # and a store created from a path keeps its rename + lock commit when given as a URL
    assert type(Store(url(Path(local)))) is Store and (Path(local) / "store.lock").exists()
    for args in (["info", "--top", "0"], ["events", "--limit", "300"], ["events", "--name", "sched_switch", "--limit", "50"],
                 ["sql", "SELECT layer, source, count(*) AS n, min(ts), max(ts) FROM events GROUP BY ALL ORDER BY ALL"],
                 ["cpu", "--by", "process", "--limit", "0"], ["migrations"]):
        want, got = invoke(*args, "--store", local, "--json"), invoke(*args, "--store", at_url, "--json")
        if args[0] == "info":
            assert (want.pop("store"), got.pop("store")) == (local, at_url)
            assert want["events"] == sum(PUBLISHED.values())
        assert got == want, args
    assert invoke("cpu", "--store", local, "--json")["hosts"]  # the kernel trace gave `cpu` something to say
    assert invoke("sql", "SELECT count(*) AS n FROM events WHERE name = 'sched_switch'",
                  "--store", at_url, "--json")[0]["n"] > 0
    # the web UI's kernel view: a URL store keeps no summaries, so it reads the window path,
    # whose bars equal the local store's window path (tests/test_kernel_intervals.py: the
    # whole-host path's bars equal the window's)
    from stacklens.models.kernel import kernel_hosts
    from stacklens.views.web.data import WebData
    host = kernel_hosts(Store(local))[0]
    assert kernel_hosts(Store(at_url)) == kernel_hosts(Store(local))
    want, got = (WebData(Store(s), kernel_source=m).view("kernel", None, None, 800, host=host)
                 for s, m in ((local, "window"), (at_url, "auto")))
    assert got["source"] == want["source"] == "window" and want["bars"]
    for k in ("lanes", "threads_total", "start", "end", "bars"):
        assert got[k] == want[k], k


def test_migrations_of_a_real_live_migration(tmp_path):
    """`migrations` on the lab's real live migration (two QEMUs): the same report from a
    file:// store as from a local one, and QEMU's own sync count (QMP) as the trace's."""
    need_program("qemu-system-x86_64")
    need_program("gcc")
    from stacklens.lab.runner import run_scenario
    run_scenario("normal", tmp_path / "lab", broker=None)
    for where in (str(tmp_path / "local"), url(tmp_path / "url")):
        ingest(Store(where, create=True), [tmp_path / "lab"])
    want = invoke("migrations", "--store", str(tmp_path / "local"), "--json")
    assert invoke("migrations", "--store", url(tmp_path / "url"), "--json") == want
    (m,) = want["migrations"]
    assert (m["source"], m["destination"], m["qemu_state"]) == ("lab-src", "lab-dst", "completed")
    assert m["qmp_dirty_sync_count"] == m["syncs"]


def test_memory_url_store_through_fsspec(parts, stores):
    """memory:// (in this process): files uploaded through fsspec, read by DuckDB through the
    registered filesystem — the code path of s3://."""
    import fsspec
    store = Store("memory://stacklens-test/st", create=True)
    try:
        assert isinstance(store, ObjectStore) and not store.local
        ingest(store, parts[:3])
        want = Store(stores["local"]).connect().execute(
            ROW_HASH.replace("GROUP BY", "WHERE src IN (SELECT src FROM sources WHERE path LIKE '%openstack%'"
                             " OR path LIKE '%thesis%nova%' OR path LIKE '%thesis%cinder%') GROUP BY")).fetchall()
        assert Store("memory://stacklens-test/st").connect().execute(ROW_HASH).fetchall() == want
        assert sum(r[3] for r in want) == 2_000 + 299 + 131
    finally:
        fsspec.filesystem("memory").rm("/stacklens-test", recursive=True)


# ---- crashes, races, collection ----------------------------------------------------------------
def test_kill9_during_ingest_then_reingest_and_gc(parts, stores, tmp_path):
    """`stacklens ingest` into a file:// store killed with SIGKILL (seeded: at a random time, or
    as the n-th data file appears, often mid-write): the store answers with exactly the
    committed parts' rows; a re-ingest leaves the dead writer's files alone (younger than the
    grace period) and ends with exactly the clean rows; `gc --grace 0` then removes them all."""
    oracle = stores["oracle"]
    n_files = len(data_files(stores["dir"]))
    rng = random.Random(SEED)
    killed = orphaned = 0
    for i in range(KILLS):
        root = tmp_path / f"k{i}"
        proc = subprocess.Popen([sys.executable, "-m", "stacklens.cli", "ingest", *map(str, parts),
                                 "--store", url(root), "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and not (root / "stacklens-store.json").exists():
            time.sleep(0.001)
        if i % 2 == 0:
            try:
                proc.wait(timeout=rng.uniform(0.2, 4))
            except subprocess.TimeoutExpired:
                pass
        else:
            nth = rng.randint(1, n_files)
            while proc.poll() is None and len(data_files(root)) < nth:
                time.sleep(0.0002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        proc.stderr.close()
        left = leftovers(root)
        orphaned += bool(left)
        assert answers(url(root)) == committed_rows(root, oracle)
        ingest(Store(url(root)), parts)
        assert rows_per_source(url(root)) == {s: n for s, n in oracle.items() if n}
        assert set(left) <= set(leftovers(root))  # within the grace period: left alone, never read
        before = leftovers(root)
        done = cli("gc", "--store", url(root), "--grace", "0", "--json")
        assert done.returncode == 0, done.stderr
        assert sorted(json.loads(done.stdout)["removed"]) == sorted(before)
        assert leftovers(root) == []
        assert rows_per_source(url(root)) == {s: n for s, n in oracle.items() if n}
    print(f"kill -9 of a file:// ingest: {KILLS} tries, {killed} killed mid-ingest, {orphaned} left files "
          f"no manifest names; every store answered with the committed rows and was exact after re-ingest + gc")
    assert killed >= KILLS // 2


def test_concurrent_ingests_of_the_same_parts_commit_each_once(parts, stores, tmp_path):
    """Two `stacklens ingest` processes at once, same parts, same file:// store: each part's
    rows are there once, whichever won; `gc` leaves one manifest per part."""
    oracle = stores["oracle"]
    root = tmp_path / "s"
    Store(url(root), create=True)
    procs = [subprocess.Popen([sys.executable, "-m", "stacklens.cli", "ingest", *map(str, p), "--store", url(root),
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in (parts, list(reversed(parts)))]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    status: Counter = Counter()
    for out, _ in outs:
        for r in json.loads(out)["parts"]:
            status[(r["src"], r["status"])] += 1
    for src in oracle:  # each process saw each part, as ingested or as already there
        assert status[(src, "ingested")] >= 1 and status[(src, "ingested")] + status[(src, "already")] == 2
    assert answers(url(root)) == {s: n for s, n in oracle.items() if n}
    assert cli("gc", "--store", url(root), "--grace", "0").returncode == 0
    assert leftovers(root) == [] and {s: len(ms) for s, ms in manifests(root).items()} == {s: 1 for s in oracle}


def _rows() -> pa.Table:
    return pa.table({"ts": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"],
                     "pos": pa.array([0, 1, 2], pa.int64())})


def test_same_source_twice_the_first_manifest_by_name_holds(tmp_path):
    """Sequential: the second writer of one content finds the first's manifest and leaves
    nothing. A race past that check (two manifests of one source, produced here by committing
    the second writer in another store and copying its objects over): readers take the first
    by name, once; `gc` removes the other and its file."""
    store = Store(url(tmp_path / "s"), create=True)
    a, b = store.writer("feedface"), store.writer("feedface")
    for w in (a, b):
        w.write(_rows(), host="h", layer="app", source="test")
    first = a.commit({"path": "x"})
    assert b.commit({"path": "x"}) == first and b.duplicate and not a.duplicate
    assert leftovers(tmp_path / "s") == []
    other = Store(url(tmp_path / "o"), create=True)
    late = other.writer("feedface")  # its token sorts after a's: created later
    late.write(_rows(), host="h", layer="app", source="test")
    late.commit({"path": "y"})
    for rel in [*data_files(tmp_path / "o"), *(f"manifests/feedface/{n}" for n, _ in manifests(tmp_path / "o")["feedface"])]:
        (tmp_path / "s" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "o" / rel, tmp_path / "s" / rel)
    names = [n for n, _ in manifests(tmp_path / "s")["feedface"]]
    assert len(names) == 2 and names[0] == f"{a.token}.json"
    assert Store(url(tmp_path / "s")).sources() == [first]
    assert Store(url(tmp_path / "s")).connect().execute("SELECT count(*), min(path) FROM events, sources").fetchone() == (3, "x")
    assert len(leftovers(tmp_path / "s")) == 2  # the other manifest and its file
    Store(url(tmp_path / "s")).gc(0)
    assert leftovers(tmp_path / "s") == [] and Store(url(tmp_path / "s")).sources() == [first]


def test_a_dead_writers_files_are_collected_only_after_the_grace_period(tmp_path, monkeypatch):
    """A writer that stopped before its commit (dropped here: with no lock, a dead process and
    a dropped writer leave the same objects): its claim and files stay while younger than the
    grace period, invisible; the next writer to start after it collects them."""
    root = tmp_path / "s"
    store = Store(url(root), create=True)
    dead = store.writer("deadbeef")
    dead.write(_rows(), host="h", layer="app", source="test")
    dead._flush(("h", "app"))
    dead._wait()
    left = leftovers(root)
    assert len(left) == 2 and any(p.startswith("writers/") for p in left)  # its file and its claim
    assert not store.has_source("deadbeef") and store.connect().execute("SELECT count(*) FROM events").fetchone() == (0,)
    live = store.writer("c0ffee")  # default grace (an hour): nothing collected
    assert set(left) <= set(leftovers(root))
    live.abort()
    monkeypatch.setenv("STACKLENS_STORE_GRACE_S", "0")
    w = Store(url(root)).writer("c0ffee")
    w.write(_rows(), host="h", layer="app", source="test")
    w.commit({"path": "z"})
    assert leftovers(root) == []
    assert Store(url(root)).connect().execute("SELECT count(*) FROM events").fetchone() == (3,)


def test_unknown_or_missing_protocol_is_one_line(tmp_path):
    with pytest.raises(StacklensError, match="not a store location fsspec understands"):
        Store("nosuchproto://bucket/store")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(StacklensError, match="s3fs"):
            Store("s3://bucket/store")
    with pytest.raises(StacklensError, match="no such store"):
        Store(url(tmp_path / "none"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StacklensError, match="not a stacklens store"):
        Store(url(tmp_path / "busy"), create=True)
