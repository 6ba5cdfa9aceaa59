"""The store and the command line, end to end on the loghub log."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import need_data, need_program
from stacklens.cli import parse_time
from stacklens.store import Store
from stacklens.store.ingest import ingest
from stacklens.store.store import ClockTransform


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "stacklens.cli", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"stacklens {' '.join(args)} failed: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def loghub_store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("store") / "s"
    cli("ingest", str(need_data("openstack", "loghub")), "--store", str(d), "--host", "cloudlab")
    return d


def oracle_rows() -> list[dict]:
    with open(need_data("openstack", "loghub", "OpenStack_2k.log_structured.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_info_json(loghub_store):
    info = json.loads(cli("info", "--store", str(loghub_store), "--json", "--top", "0").stdout)
    assert info["events"] == 2000
    assert info["hosts"] == [{"host": "cloudlab", "layer": "app", "events": 2000,
                              "begin": info["time_range"]["begin"], "end": info["time_range"]["end"]}]
    expected = Counter(o["Component"] for o in oracle_rows())
    assert {c["name"]: c["events"] for c in info["counts"]} == dict(expected)
    assert info["time_range"]["begin_utc"] == "2017-05-16T00:00:00.008000000Z"
    assert info["lost"]["events"] == 0
    human = cli("info", "--store", str(loghub_store)).stdout
    assert "nova.compute.manager" in human and "2,000" in human


def test_events_filters(loghub_store):
    rows = oracle_rows()
    warn_compute = [o for o in rows if o["Component"] == "nova.compute.manager"]
    out = json.loads(cli("events", "--store", str(loghub_store), "--name", "nova.compute.manager",
                         "--limit", "0", "--json").stdout)
    assert len(out) == len(warn_compute)
    assert all(r["fields"]["logger"] == "nova.compute.manager" for r in out)
    # a time window [from, to): oracle from the CSV's own timestamps
    lo, hi = "2017-05-16T00:05:00", "2017-05-16T00:06:00.5"
    expected = [o for o in rows if lo <= f"{o['Date']}T{o['Time']}" < "2017-05-16T00:06:00.500"]
    got = json.loads(cli("events", "--store", str(loghub_store), "--from", lo, "--to", hi + "Z",
                         "--limit", "0", "--json").stdout)
    assert len(got) == len(expected) > 0
    rid = next(o["ADDR"].split()[0] for o in rows if o["ADDR"].startswith("req-"))
    got = json.loads(cli("events", "--store", str(loghub_store), "--request", rid, "--json").stdout)
    assert len(got) == sum(1 for o in rows if o["ADDR"].split()[:1] == [rid])
    assert cli("events", "--store", str(loghub_store), "--limit", "2").stdout.count("nova") >= 2


def test_events_one_line_each_with_the_message(loghub_store):
    """Text output: one line per event carrying loghub's own parse of the line (Content),
    and the fields asked for with --fields (Level)."""
    rows = oracle_rows()
    out = cli("events", "--store", str(loghub_store), "--limit", "0").stdout.splitlines()
    assert len(out) == len(rows) == 2000
    contents = Counter(" ".join(o["Content"].split()) for o in rows)
    got = Counter(line.split("  ", 1)[1] for line in out)
    assert got == contents
    out = cli("events", "--store", str(loghub_store), "--limit", "0", "--fields", "level").stdout.splitlines()
    assert Counter(line.rsplit(" level=", 1)[1] for line in out) == Counter(o["Level"] for o in rows)


def test_sql_csv_and_errors(loghub_store):
    out = cli("sql", "--store", str(loghub_store), "--csv", "SELECT count(*) AS n FROM events").stdout
    assert out.splitlines() == ["n", "2000"]
    raw = subprocess.run([sys.executable, "-m", "stacklens.cli", "sql", "--store", str(loghub_store), "--csv",
                          "SELECT 'a' AS x, 'b\nc' AS y"], capture_output=True).stdout
    assert raw == b'x,y\na,"b\nc"\n'  # Unix line ends, quoting as RFC 4180 says
    bad = cli("sql", "--store", str(loghub_store), "SELECT nope FROM nowhere", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "nowhere" in bad.stderr


def test_missing_store_is_one_line(tmp_path):
    r = cli("info", "--store", str(tmp_path / "nope"), check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such store" in r.stderr
    r = cli("ingest", str(tmp_path / "missing.log"), "--store", str(tmp_path / "s"), check=False)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()  # nothing created for a mistyped path
    # parts that are all unrecognised (or all rejected): nothing ingested is a failure
    junk = tmp_path / "notes.txt"
    junk.write_text("not a trace\n")
    r = cli("ingest", str(junk), "--store", str(tmp_path / "s2"), check=False)
    assert r.returncode == 1 and "nothing ingested" in r.stderr and "1 part(s) not recognised" in r.stderr


def test_bundle_toml_names_hosts(tmp_path):
    src = need_data("openstack", "loghub", "OpenStack_2k.log").read_text().splitlines(keepends=True)
    b = tmp_path / "bundle"
    (b / "ctl").mkdir(parents=True)
    (b / "cmp").mkdir()
    (b / "ctl" / "nova-api.log").write_text("".join(src[:100]))
    (b / "cmp" / "nova-compute.log").write_text("".join(src[100:250]))
    (b / "notes.txt").write_text("not a log\n")
    (b / "bundle.toml").write_text('host = "default-host"\ntz = "+02:00"\n'
                                   '[[parts]]\npath = "cmp"\nhost = "compute1"\n')
    store = Store(tmp_path / "s", create=True)
    res = {Path(r.path).name: r for r in ingest(store, [b])}
    assert res["nova-api.log"].host == "default-host" and res["nova-api.log"].rows == 100
    assert res["nova-compute.log"].host == "compute1" and res["nova-compute.log"].rows == 150
    assert res["notes.txt"].status == "unrecognised"
    con = store.connect()
    assert dict(con.execute("SELECT host, count(*) FROM events GROUP BY 1").fetchall()) == {
        "default-host": 100, "compute1": 150}
    # tz +02:00: the first line's 00:00:00.008 local is 22:00:00.008 UTC the day before
    first = con.execute("SELECT min(ts) FROM events WHERE host = 'default-host'").fetchall()[0][0]
    assert first == int(dt.datetime(2017, 5, 15, 22, 0, 0, tzinfo=dt.timezone.utc).timestamp()) * 10**9 + 8_000_000
    # only one host's partition is read when asked
    assert store.connect(host="compute1").execute("SELECT count(*) FROM events").fetchall()[0][0] == 150


def test_clock_transform_applied_at_query_time(tmp_path):
    store = Store(tmp_path / "s", create=True)
    ingest(store, [need_data("openstack", "loghub", "OpenStack_2k.log")], host="h1")
    con = store.connect()
    before = con.execute("SELECT ts FROM events ORDER BY pos").fetchall()
    t = ClockTransform(offset_ns=1_500, drift=2e-6, base_ns=before[0][0], quality="accurate", reference="h0")
    store.set_clocks({"h1": t})
    after = store.connect().execute("SELECT ts, ts_raw FROM events ORDER BY pos").fetchall()
    assert [r[1] for r in after] == [b[0] for b in before]
    # exact integer arithmetic, checked with Python ints
    assert [r[0] for r in after] == [t.apply(b[0]) for b in before]
    assert after[-1][0] - before[-1][0] == 1_500 + round((before[-1][0] - before[0][0]) * 2e-6)


def test_parse_time():
    assert parse_time("1494892800008000000") == 1494892800008000000
    assert parse_time("2017-05-16T00:00:00.008") == 1494892800008000000
    assert parse_time("2017-05-16 02:00:00.008+02:00") == 1494892800008000000
    assert parse_time(None) is None


NO_JSON = {"demo", "dump", "agent", "ui"}  # the README names these four


def test_every_reading_command_takes_json():
    """What the README says about --json, checked against the registered commands."""
    import typer.main
    from stacklens.cli import _register_commands, app
    if "ovs" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        _register_commands()
    without = set()

    def walk(c, prefix=""):
        if hasattr(c, "commands"):
            for n, sub in c.commands.items():
                walk(sub, f"{prefix}{n} ")
        elif not any("--json" in p.opts for p in c.params):
            without.add(prefix.strip())
    walk(typer.main.get_command(app))
    assert without == NO_JSON
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    para = readme[readme.index("takes `--json`"):][:400]
    assert all(f"`{c}`" in para for c in NO_JSON)


def test_paused_gc_frees_the_blocks_cycles_and_restores_gc() -> None:
    """Ingest pauses cyclic GC per part: no collection runs inside, yet a cycle made inside is
    freed when the part ends (a long ingest of many parts must not keep every part's cycles)."""
    import gc
    import weakref

    from stacklens.gcpause import paused_gc

    class Node:
        pass
    runs = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            runs.append(info["generation"])
    assert gc.isenabled()
    gc.callbacks.append(count)
    try:
        with paused_gc():
            assert not gc.isenabled()
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: reference counting alone never frees it
            ref = weakref.ref(a)
            del a, b
            for _ in range(100_000):  # enough allocations to trigger collections if enabled
                Node().x = [1]
            assert not runs and ref() is not None
    finally:
        gc.callbacks.remove(count)
    assert gc.isenabled() and ref() is None


def test_paused_gc_is_shared_by_threads() -> None:
    """Ingest reads two parts at a time, each inside paused_gc: the collector must stay off
    until the last of them ends (the first to end must not switch it back on)."""
    import gc
    import threading

    from stacklens.gcpause import paused_gc
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def a() -> None:
        with paused_gc():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with paused_gc():
            b_in.set()
            a_out.wait(10)
            seen["after the first ended"] = gc.isenabled()
    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"after the first ended": False}
    assert gc.isenabled()


def test_parts_read_at_once_store_what_one_at_a_time_stores(tmp_path, monkeypatch):
    """Ingest reads two parts at a time: the store must hold exactly what reading them one
    by one holds (every row, its position and payload), the events babeltrace2 counts, and a
    trace given twice is stored once, the first path named as the one ingested."""
    import stacklens.store.ingest as ingest_mod
    traces = [need_data("tracecompass", n) for n in ("many-threads", "context-switches", "cyg-profile", "memory")]
    import shutil
    twin = tmp_path / "twin-of-many-threads"  # the same content under another name
    shutil.copytree(traces[0], twin)
    paths = [*traces, need_data("openstack", "loghub"), twin]

    def stored(root: Path) -> list[tuple]:
        import duckdb
        store = Store(root)
        con = store.connect()
        try:
            return con.execute("SELECT src, count(*), sum(hash(ts, name, host, layer, cpu, pid, tid, procname,"
                               " fields, pos)) FROM events GROUP BY src ORDER BY src").fetchall()
        finally:
            con.close()
    results = {}
    for at_once in (1, 2):
        monkeypatch.setattr(ingest_mod, "PARTS_AT_ONCE", at_once)
        root = tmp_path / f"at-once-{at_once}"
        res = ingest(Store(root, create=True), paths)
        results[at_once] = (res, stored(root))
    (seq, seq_rows), (par, par_rows) = results[1], results[2]
    assert par_rows == seq_rows and len(par_rows) == len({r.src for r in par if r.status == "ingested"}) >= 5
    assert [(r.path, r.status, r.rows) for r in par] == [(r.path, r.status, r.rows) for r in seq]
    assert par[0].status == "ingested" and par[-1].status == "already" and par[-1].src == par[0].src
    assert par[-1].path == str(twin)
    bt2 = need_program("babeltrace2")
    for trace in traces:
        out = subprocess.run([bt2, str(trace)], capture_output=True, text=True, check=True).stdout
        rows = sum(r.rows for r in par if r.format == "ctf" and Path(r.path).is_relative_to(trace))
        assert rows == out.count("\n"), trace


def test_ctf_event_files_keep_their_dictionaries(tmp_path):
    """The columns the store dictionary-encodes are written as dictionaries in every row group
    of a CTF trace's event files: Parquet writes a dictionary with a repeated value (the
    reader's layer per event class was one) as plain strings, 1.3 MB per row group for
    `layer` on many-threads where the dictionary takes bytes."""
    import pyarrow.parquet as pq
    from stacklens.store.store import DICTIONARY_COLUMNS
    trace = need_data("tracecompass", "many-threads")
    root = tmp_path / "s"
    res = ingest(Store(root, create=True), [trace])
    assert [r.status for r in res] == ["ingested"] and res[0].rows == 240_644
    files = sorted((root / "events").rglob("*.parquet"))
    assert files
    checked = set()
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                if col.path_in_schema in DICTIONARY_COLUMNS and col.statistics is not None \
                        and col.statistics.null_count < rg.num_rows:
                    assert "RLE_DICTIONARY" in col.encodings, (f.name, g, col.path_in_schema, col.encodings)
                    checked.add(col.path_in_schema)
    assert {"layer", "name", "cpu", "host"} <= checked
    con = Store(root).connect()
    assert con.execute("SELECT DISTINCT layer FROM events").fetchall() == [("kernel",)]


def test_ids_hashed_ahead_are_the_parts_ids(tmp_path):
    """The command hashes the parts named on its command line in a thread while it imports
    its modules: what a part then takes is its own content id (files, trace directories, a
    path given twice), each computed once, and an ingest run from the
    command line stores under those ids (a second run finds everything already there)."""
    from stacklens.store import source_ids as S
    trace = need_data("tracecompass", "many-threads")
    log = need_data("openstack", "loghub", "OpenStack_2k.log")
    computed = []
    real = S.source_id

    def counting(p):
        computed.append(str(p))
        return real(p)
    S.source_id = counting
    try:
        pre = S.PreHashes([trace, Path(log), trace])
        pre._thread.join(timeout=60)
        assert pre.take(trace) == real(trace)
        assert pre.take(trace) is None  # given twice: taken once, the second part hashes it
        assert pre.take(Path(log)) == real(Path(log))
    finally:
        S.source_id = real
    assert computed.count(str(trace)) == 1 and computed.count(str(log)) == 1
    store = tmp_path / "s"
    first = json.loads(cli("ingest", "-s", str(store), "--json", str(trace), str(log)).stdout)
    assert [p["src"] for p in first["parts"]] == [real(trace), real(Path(log))]
    again = json.loads(cli("ingest", "-s", str(store), "--json", str(trace), str(log)).stdout)
    assert [p["status"] for p in again["parts"]] == ["already", "already"]
