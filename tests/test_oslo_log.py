"""oslo.log text reader: loghub's own parse is the oracle; real oslo.log output for tracebacks."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import need_data
from stacklens.store import Store
from stacklens.store.ingest import ingest

HERE = Path(__file__).parent


def loghub() -> Path:
    return need_data("openstack", "loghub", "OpenStack_2k.log")


def structured() -> list[dict]:
    with open(need_data("openstack", "loghub", "OpenStack_2k.log_structured.csv"), newline="") as f:
        return list(csv.DictReader(f))


def rows_by_pos(store: Store) -> dict[int, dict]:
    con = store.connect()
    cur = con.execute("SELECT pos, ts, pid, name, procname, request_id, instance, fields FROM events")
    cols = [d[0] for d in cur.description]
    return {r[0]: dict(zip(cols, r)) for r in cur.fetchall()}


def test_loghub_matches_loghub_parse(tmp_path):
    store = Store(tmp_path / "s", create=True)
    res = ingest(store, [loghub()])
    assert [r.status for r in res] == ["ingested"] and res[0].rows == 2000
    rows = rows_by_pos(store)
    oracle = structured()
    assert len(rows) == len(oracle) == 2000
    uuid = re.compile(r"\[instance: ([0-9a-f-]{36})\]")
    for o in oracle:
        r = rows[int(o["LineId"])]
        f = json.loads(r["fields"])
        stamp = dt.datetime.fromisoformat(f"{o['Date']}T{o['Time']}").replace(tzinfo=dt.timezone.utc)
        assert r["ts"] == int(stamp.timestamp()) * 10**9 + int(o["Time"].split(".")[1]) * 10**6
        assert r["pid"] == int(o["Pid"])
        assert f["level"] == o["Level"]
        assert r["name"] == f["logger"] == o["Component"]
        assert f["file"] == o["Logrecord"]
        assert r["procname"] == o["Logrecord"].split(".")[0]
        # loghub's ADDR is the context bracket: "req-… user project - - -"
        addr = o["ADDR"].split()
        assert r["request_id"] == (addr[0] if addr and addr[0].startswith("req-") else None)
        if r["request_id"]:
            dash = lambda v: None if v == "-" else v  # noqa: E731  oslo.log's placeholder
            assert f.get("user") == dash(addr[1]) and f.get("project") == dash(addr[2])
        m = uuid.match(o["Content"])
        assert r["instance"] == (m.group(1) if m else None)
        assert f["message"] == o["Content"]


def test_reingest_adds_nothing(tmp_path):
    store = Store(tmp_path / "s", create=True)
    ingest(store, [loghub()])
    again = ingest(store, [loghub().parent])
    assert [r.status for r in again if r.format == "oslo.log"] == ["already"]
    # the same content under another name is the same source
    copy = tmp_path / "copy.log"
    copy.write_bytes(loghub().read_bytes())
    assert ingest(store, [copy])[0].status == "already"
    assert store.connect().execute("SELECT count(*) FROM events").fetchall()[0][0] == 2000


def test_garbage_lines_are_reported_and_good_lines_kept(tmp_path):
    lines = loghub().read_text().splitlines(keepends=True)
    garbage = {300: "\x00\x01 binary junk here\n", 301: "=== not a log line ===\n",
               1200: "{\"json\": true}\n"}
    out, bad_line_numbers = [], []
    for i, line in enumerate(lines):
        if i in garbage:
            out.append(garbage[i])
            bad_line_numbers.append(len(out))
        out.append(line)
    p = tmp_path / "nova-api.log"
    p.write_text("".join(out))
    # the command line, as an operator runs it: no traceback, the bad lines named
    proc = subprocess.run([sys.executable, "-m", "stacklens.cli", "ingest", str(p), "--store",
                           str(tmp_path / "s"), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    part = json.loads(proc.stdout)["parts"][0]
    assert part["rows"] == 2000
    assert part["skipped"] == 3
    assert str(bad_line_numbers[0]) in part["message"] and str(bad_line_numbers[2]) in part["message"]
    store = Store(tmp_path / "s")
    assert store.sources()[0]["bad_positions"] == bad_line_numbers


def test_real_oslo_log_output_with_traceback(tmp_path):
    """A service writing through the real oslo.log: contexts, [-], exception prefix lines."""
    pytest.importorskip("oslo_log", reason="oslo.log is a test dependency (./dev setup)")
    log = tmp_path / "nova-compute.log"
    proc = subprocess.run([sys.executable, str(HERE / "programs" / "oslo_log_writer.py"), str(log)],
                          capture_output=True, text=True, check=True)
    request_id = proc.stdout.strip()
    raw = log.read_text().splitlines()
    store = Store(tmp_path / "s", create=True)
    res = ingest(store, [log], host="compute1")
    assert res[0].status == "ingested" and res[0].skipped == 0
    rows = sorted(rows_by_pos(store).values(), key=lambda r: r["ts"])
    # records: start, with context, the exception (folded), the warning, an instance's exception
    heads = [ln for ln in raw if re.match(r"^\S+ \S+ \d+ \w+ \S+ \[(?!instance: )", ln)]
    assert len(rows) == len(heads) == 5
    start, ctx, failed, warn, spawn = rows
    assert spawn["instance"] == "6d2a5a44-7a8f-4a36-9a36-0d6b1c1f3b3e"
    assert "Traceback (most recent call last):" in json.loads(spawn["fields"])["message"]
    assert json.loads(spawn["fields"])["message"].rstrip().endswith("RuntimeError: disk full")
    assert start["request_id"] is None
    assert ctx["request_id"] == failed["request_id"] == warn["request_id"] == request_id
    f = json.loads(failed["fields"])
    assert f["global_request_id"] == "req-11111111-2222-3333-4444-555555555555"
    assert f["user"] == "user-a" and f["project"] == "project-a"
    assert f["level"] == "ERROR"
    assert "Traceback (most recent call last):" in f["message"]
    assert f["message"].rstrip().endswith("KeyError: 'missing'")
    assert warn["instance"] == "6d2a5a44-7a8f-4a36-9a36-0d6b1c1f3b3e"
    assert {r["procname"] for r in rows} == {"nova-compute"}
    con = store.connect()
    assert con.execute("SELECT DISTINCT host FROM events").fetchall() == [("compute1",)]


def test_plain_continuation_lines_fold(tmp_path):
    """Python tracebacks without the oslo prefix (stderr captured into the log) fold too."""
    text = (
        "2016-08-08 11:01:05.123 811 ERROR nova.compute.manager [None req-0bad0bad-0000-4000-8000-000000000001 admin admin] boom\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "ValueError: bad\n"
        "2016-08-08 11:01:06.000 811 INFO nova.compute.manager [-] next\n"
    )
    p = tmp_path / "n.log"
    p.write_text(text)
    store = Store(tmp_path / "s", create=True)
    r = ingest(store, [p], tz="-04:00")[0]
    assert r.rows == 2 and r.skipped == 0
    rows = sorted(rows_by_pos(store).values(), key=lambda r: r["pos"])
    assert json.loads(rows[0]["fields"])["message"].endswith("ValueError: bad")
    assert "global_request_id" not in json.loads(rows[0]["fields"])  # "None" is no id
    assert rows[0]["request_id"] == "req-0bad0bad-0000-4000-8000-000000000001"
    # local time UTC-4 → UTC
    assert rows[0]["ts"] == int(dt.datetime(2016, 8, 8, 15, 1, 5, tzinfo=dt.timezone.utc).timestamp()) * 10**9 + 123_000_000


def test_sql_distinct_requests_per_logger(tmp_path):
    store = Store(tmp_path / "s", create=True)
    ingest(store, [loghub()])
    expected: dict[str, set] = defaultdict(set)
    for o in structured():
        addr = o["ADDR"].split()
        if addr and addr[0].startswith("req-"):
            expected[o["Component"]].add(addr[0])
    proc = subprocess.run([sys.executable, "-m", "stacklens.cli", "sql", "--store", str(tmp_path / "s"),
                           "--json", "SELECT name AS logger, count(DISTINCT request_id) AS n FROM events "
                           "WHERE request_id IS NOT NULL GROUP BY 1"],
                          capture_output=True, text=True, check=True)
    got = {r["logger"]: r["n"] for r in json.loads(proc.stdout)}
    assert got == {k: len(v) for k, v in expected.items()}


def test_block_boundaries_do_not_change_records(tmp_path, monkeypatch):
    """A file read in many small blocks gives the same records as one read: tracebacks that
    straddle a block boundary stay with their record."""
    pytest.importorskip("oslo_log", reason="oslo.log is a test dependency (./dev setup)")
    from stacklens.sources import oslo_log
    from stacklens.sources.base import ReadOptions
    log = tmp_path / "nova-compute.log"
    subprocess.run([sys.executable, str(HERE / "programs" / "oslo_log_writer.py"), str(log)],
                   capture_output=True, check=True)
    service = log.read_text()
    text = loghub().read_text().replace("\r\n", "\n").rstrip("\n") + "\n"
    with open(log, "a") as f:  # the real service log, then loghub, then the service log again
        f.write(text)
        f.write(service)

    def read() -> list[dict]:
        r = oslo_log.OsloLogReader(log, ReadOptions())
        rows = [row for t in r.tables() for row in t.to_pylist()]
        assert r.report.skipped == 0
        return rows

    whole = read()
    monkeypatch.setattr(oslo_log, "CHUNK_BYTES", 700)
    assert read() == whole
    assert len(whole) == 2000 + 2 * 5
