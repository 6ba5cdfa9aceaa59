"""Scheduling explanations (issue 4) from nova-scheduler debug logs written by a real oslo.log
(tests/programs/nova_scheduler_log.py: Nova's message formats, not Nova itself) and
select_destinations notifications sent through real oslo.messaging.

Oracle: the hosts and requests this test puts in, with the filtering/weighing arithmetic
redone here; durations from the notification file's own `timestamp` fields.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.conftest import ROOT

HOSTS = [
    {"host": "cmp1", "free_ram_mb": 4096, "free_disk_mb": 40960, "vcpus_free": 4},
    {"host": "cmp2", "free_ram_mb": 8192, "free_disk_mb": 10240, "vcpus_free": 2},
    {"host": "cmp3", "free_ram_mb": 16384, "free_disk_mb": 81920, "vcpus_free": 8, "enabled": False},
    {"host": "cmp4", "free_ram_mb": 6144, "free_disk_mb": 2048, "vcpus_free": 16},
]
FILTERS = ["ComputeFilter", "RamFilter", "DiskFilter", "CoreFilter"]
REQUESTS = [  # (memory_mb, root_gb, vcpus)
    (2048, 5, 1), (2048, 1, 1), (4096, 20, 2), (1024, 1, 4), (32768, 1, 1), (512, 100, 1),
]


def _req(i: int) -> dict:
    mem, disk, vcpus = REQUESTS[i]
    return {"request_id": f"req-{i:08d}-aaaa-bbbb-cccc-dddddddddddd",
            "instance_uuid": f"{i:08d}-1111-2222-3333-444444444444",
            "memory_mb": mem, "root_gb": disk, "vcpus": vcpus}


def expected_decisions() -> list[dict]:
    """The scheduler's arithmetic redone independently: filters in order, RAM weigher
    normalised over the candidates, resources consumed on the chosen host."""
    hosts = {h["host"]: dict(h, enabled=h.get("enabled", True)) for h in HOSTS}
    passes = {
        "ComputeFilter": lambda h, r: h["enabled"],
        "RamFilter": lambda h, r: h["free_ram_mb"] >= r["memory_mb"],
        "DiskFilter": lambda h, r: h["free_disk_mb"] >= r["root_gb"] * 1024,
        "CoreFilter": lambda h, r: h["vcpus_free"] >= r["vcpus"],
    }
    out = []
    for i in range(len(REQUESTS)):
        r = _req(i)
        alive = list(hosts)
        chain, eliminated = [], None
        for f in FILTERS:
            kept = [h for h in alive if passes[f](hosts[h], r)]
            chain.append((f, len(alive), len(kept), sorted(set(alive) - set(kept))))
            alive = kept
            if not alive:
                eliminated = f
                break
        if alive:
            rams = {h: hosts[h]["free_ram_mb"] for h in alive}
            lo, hi = min(rams.values()), max(rams.values())
            weights = {h: 0.0 if hi == lo else (v - lo) / (hi - lo) for h, v in rams.items()}
            chosen = max(alive, key=lambda h: rams[h])
            hosts[chosen]["free_ram_mb"] -= r["memory_mb"]
            hosts[chosen]["free_disk_mb"] -= r["root_gb"] * 1024
            hosts[chosen]["vcpus_free"] -= r["vcpus"]
        else:
            weights, chosen = {}, None
        out.append({"request_id": r["request_id"], "instance": r["instance_uuid"], "chain": chain,
                    "eliminated_by": eliminated, "weights": weights, "selected": chosen})
    return out


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    pytest.importorskip("oslo_log")
    pytest.importorskip("oslo_messaging")
    d = tmp_path_factory.mktemp("sched")
    scenario = d / "scenario.json"
    scenario.write_text(json.dumps({"hosts": HOSTS, "filters": FILTERS,
                                    "requests": [_req(i) for i in range(len(REQUESTS))]}))
    log, notes = d / "nova-scheduler.log", d / "notifications.jsonl"
    # TZ=UTC: oslo.log writes local time; the store reads text logs as UTC by default
    subprocess.run([sys.executable, str(ROOT / "tests" / "programs" / "nova_scheduler_log.py"),
                    str(scenario), str(log), str(notes)], check=True, timeout=60,
                   env=dict(os.environ, TZ="UTC"), capture_output=True)
    st = Store(d / "store", create=True)
    res = ingest(st, [log, notes], host="controller")
    assert [r.status for r in res] == ["ingested", "ingested"], res
    return st, notes


def test_explanations_match_the_scenario(scheduled):
    from stacklens.models.scheduling import scheduling_decisions
    st, _ = scheduled
    expected = expected_decisions()
    assert any(e["selected"] is None for e in expected) and any(e["selected"] for e in expected)
    got = {d.request_id: d for d in scheduling_decisions(st.connect())}
    assert set(got) == {e["request_id"] for e in expected}
    for e in expected:
        d = got[e["request_id"]]
        assert [(f.filter, f.hosts_before, f.hosts_after) for f in d.filters] == \
            [(f, b, a) for f, b, a, _ in e["chain"]], e["request_id"]
        assert d.start_hosts == len(HOSTS)
        if e["selected"]:
            assert d.outcome == "selected" and d.selected == e["selected"]
            assert {w["host"]: w["weight"] for w in d.weighed} == pytest.approx(e["weights"])
            assert d.weighed[0]["host"] == e["selected"]
            assert e["selected"] in d.explanation()
        else:
            assert d.outcome == "no_valid_host" and d.eliminated_by == e["eliminated_by"]
            assert d.instance == e["instance"]
            # Nova's debug filter history names the hosts the last filter removed
            last = d.filters[-1]
            assert sorted(last.removed_hosts) == e["chain"][-1][3]
            assert "No valid host was found" in d.reason
            assert e["eliminated_by"] in d.explanation()


def test_select_destinations_durations_from_notifications(scheduled):
    from stacklens.models.scheduling import scheduling_decisions
    st, notes = scheduled
    ts: dict[tuple, int] = {}
    for line in notes.read_text().splitlines():
        m = json.loads(line)
        t = dt.datetime.strptime(m["timestamp"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
        key = (m["payload"]["nova_object.data"]["instance_uuid"], m["event_type"].rsplit(".", 1)[1])
        ts[key] = (int(t.timestamp()) * 10**6 + t.microsecond) * 1000
    got = {d.instance: d.select_destinations_ns for d in scheduling_decisions(st.connect())}
    for e in expected_decisions():
        if e["selected"]:
            assert got[e["instance"]] == ts[(e["instance"], "end")] - ts[(e["instance"], "start")]
        else:  # NoValidHost: Nova sends no .end, the task stays open
            assert got[e["instance"]] is None and (e["instance"], "end") not in ts


def test_cli_scheduling_json(scheduled):
    from typer.testing import CliRunner
    from stacklens.cli import _register_commands, app
    if "scheduling" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        _register_commands()
    st, _ = scheduled
    r = CliRunner().invoke(app, ["scheduling", "--store", str(st.root), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)["decisions"]
    exp = {e["request_id"]: e for e in expected_decisions()}
    assert {d["request_id"]: d["selected"] for d in out} == {k: e["selected"] for k, e in exp.items()}
    r = CliRunner().invoke(app, ["scheduling", "--store", str(st.root)])
    assert r.exit_code == 0 and "no valid host" in r.output
