"""Nova's own log records (issue 4, loghub acceptance): API request latencies, instance
lifecycle events and "Took N seconds" figures.

Oracle: loghub's own parse of the same 2,000 lines (OpenStack_2k.log_structured.csv, read
here with the csv module: Content, ADDR, Date/Time columns) — not stacklens' reader.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections import defaultdict

import pytest

from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.conftest import need_data

LOGHUB = ("openstack", "loghub")


@pytest.fixture(scope="module")
def loghub_csv() -> list[dict]:
    with open(need_data(*LOGHUB) / "OpenStack_2k.log_structured.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = Store(tmp_path_factory.mktemp("loghub") / "store", create=True)
    res = ingest(st, [need_data(*LOGHUB) / "OpenStack_2k.log"])
    assert res[0].status == "ingested" and res[0].rows == 2000
    return st


def _ts_ns(row: dict) -> int:
    # loghub's Date and Time columns; the log is in UTC (no zone given, ingest default)
    t = dt.datetime.strptime(f"{row['Date']} {row['Time']}", "%Y-%m-%d %H:%M:%S.%f")
    return int(t.replace(tzinfo=dt.timezone.utc).timestamp()) * 10**9 + t.microsecond * 1000


def _request_id(row: dict) -> str | None:
    first = row["ADDR"].split(" ", 1)[0]
    return first if first.startswith("req-") else None


def test_api_latencies_equal_time_field(store, loghub_csv):
    from stacklens.models.nova_logs import api_requests
    access = re.compile(r'"(\w+) (\S+) [^"]*" status: (\d+) len: (\d+) time: (\S+)$')
    expected = []
    for row in loghub_csv:
        m = access.search(row["Content"])
        if m:
            expected.append((_ts_ns(row), _request_id(row), m.group(1), m.group(2), int(m.group(3)),
                             float(m.group(5))))
    assert len(expected) == 1017
    got = [(r["ts"], r["request_id"], r["method"], r["url"], r["status"], r["latency_s"])
           for r in api_requests(store.connect()).to_pylist()]
    assert sorted(got, key=str) == sorted(expected, key=str)
    # latency_ns is the time: field exactly, in integer nanoseconds (request ids of access
    # lines are unique in this log; lines without a context, `[-]`, are left out here)
    raw = [(_request_id(row), access.search(row["Content"]).group(5)) for row in loghub_csv
           if access.search(row["Content"]) and _request_id(row)]
    assert len({r for r, _ in raw}) == len(raw)
    ns = {r: int(t.split(".")[0]) * 10**9 + int(t.split(".")[1].ljust(9, "0")) for r, t in raw}
    ours = {r["request_id"]: r["latency_ns"] for r in api_requests(store.connect()).to_pylist()
            if r["request_id"]}
    assert ours == ns


def test_instance_lifecycle_events(store, loghub_csv):
    from stacklens.models.nova_logs import instance_lifecycle
    pattern = re.compile(r"\[instance: ([0-9a-f-]+)\] VM (\w+) \(Lifecycle Event\)")
    expected: dict[str, list] = defaultdict(list)
    for row in loghub_csv:
        m = pattern.search(row["Content"])
        if m:
            expected[m.group(1)].append((_ts_ns(row), m.group(2)))
    got: dict[str, list] = defaultdict(list)
    for r in instance_lifecycle(store.connect()).to_pylist():
        got[r["instance"]].append((r["ts"], r["event"]))
    assert got == expected
    kinds = {e for evs in expected.values() for _, e in evs}
    assert {"Started", "Paused", "Resumed", "Stopped"} <= kinds


def test_took_seconds_to_spawn_and_build(store, loghub_csv):
    from stacklens.models.nova_logs import instance_timings
    pattern = re.compile(r"\[instance: ([0-9a-f-]+)\] Took ([0-9.]+) seconds to (spawn|build)")
    expected = {(m.group(1), m.group(3), float(m.group(2)))
                for row in loghub_csv if (m := pattern.search(row["Content"]))}
    assert len(expected) == 44
    got = {(r["instance"], r["step"], r["seconds"]) for r in instance_timings(store.connect()).to_pylist()
           if r["step"] in ("spawn", "build")}
    assert got == expected


def test_cli_report_and_vm_json(store, loghub_csv):
    from typer.testing import CliRunner
    from stacklens.cli import _register_commands, app
    if "request" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        _register_commands()
    run = CliRunner()
    r = run.invoke(app, ["report", "--store", str(store.root), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)["app"]
    detail = next(a for a in rep["api"] if a["method"] == "GET" and a["resource"] == "/servers/detail")
    times = [float(re.search(r"time: (\S+)$", row["Content"]).group(1)) for row in loghub_csv
             if re.search(r'"GET /v2/[0-9a-f]{32}/servers/detail[? ]', row["Content"])]
    assert detail["count"] == len(times) and detail["max_s"] == max(times)
    uuid = "b9000564-fe1a-409b-b8cc-1e88b294cd1d"
    inst = next(i for i in rep["instances"] if i["instance"] == uuid)
    assert inst["lifecycle"][0] == "Started" and inst["lifecycle"][-1] == "Stopped"
    r = run.invoke(app, ["vm", uuid, "--store", str(store.root), "--json"])
    assert r.exit_code == 0, r.output
    vm = json.loads(r.output)
    spawn = [t["seconds"] for t in vm["timings"] if t["step"] == "spawn"]
    assert spawn == [float(re.search(r"Took (\S+) seconds to spawn", row["Content"]).group(1))
                     for row in loghub_csv if uuid in row["Content"] and "seconds to spawn" in row["Content"]]
    r = run.invoke(app, ["vm", "no-such-vm", "--store", str(store.root)])
    # the CLI's main() turns StacklensError into a one-line message
    assert r.exit_code != 0 and "no-such-vm" in str(r.exception)
