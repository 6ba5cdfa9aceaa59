"""Neutron agent tasks (issue 4) from a real LTTng Python-agent trace recorded here:
lttng-sessiond (started and stopped by this test, by PID), a session writing to a tmp dir,
python events enabled, and tests/programs/neutron_agent_trace.py logging thesis-format
records (dhcp-agent./l3-agent. event types, network/router keys) through Debian's
python3-lttngust under /usr/bin/python3. Ingested by our CTF reader.

Oracle: babeltrace2's text of the same trace (timestamps, event types, objects).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.conftest import ROOT, bt2_thesis_lines, need_python_lttngust, own_lttng_sessiond

PLAN = [  # the thesis table 4.4 tasks, two objects each for some, one interleaved pair
    # net-a's create starts, net-b's starts and ends, then net-a's ends: one worker, interleaved
    {"agent": "dhcp-agent", "task": "network.create", "object_key": "network", "object": "net-a", "sleep_ms": 30,
     "overlap": True},
    {"agent": "dhcp-agent", "task": "network.create", "object_key": "network", "object": "net-b", "sleep_ms": 12},
    {"agent": "dhcp-agent", "task": "network.update", "object_key": "network", "object": "net-a", "sleep_ms": 8},
    {"agent": "dhcp-agent", "task": "subnet.update", "object_key": "network", "object": "net-a", "sleep_ms": 5},
    {"agent": "dhcp-agent", "task": "port.delete", "object_key": "network", "object": "net-b", "sleep_ms": 4},
    {"agent": "l3-agent", "task": "router.create", "object_key": "router", "object": "r-1", "sleep_ms": 25},
    {"agent": "l3-agent", "task": "router.remove", "object_key": "router", "object": "r-1", "sleep_ms": 6},
    {"agent": "l3-agent", "task": "router.delete", "object_key": "router", "object": "r-1", "sleep_ms": 9},
    {"agent": "dhcp-agent", "task": "subnet.delete", "object_key": "network", "object": "net-a", "sleep_ms": 3},
    {"agent": "dhcp-agent", "task": "network.delete", "object_key": "network", "object": "net-a", "sleep_ms": 7},
]


def _lttng(env: dict, *args: str) -> None:
    subprocess.run(["lttng", *args], env=env, check=True, timeout=30, capture_output=True)


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    need_python_lttngust()
    d = tmp_path_factory.mktemp("neutron")
    plan = d / "plan.json"
    plan.write_text(json.dumps([dict(p, request_id=f"req-{i:04d}") for i, p in enumerate(PLAN)]))
    env = dict(os.environ, LTTNG_HOME=str(d))
    out = d / "trace"
    session = f"stacklens-neutron-{os.getpid()}"
    with own_lttng_sessiond(env):
        _lttng(env, "create", session, f"--output={out}")
        _lttng(env, "enable-event", "--python", "-a", "-s", session)
        _lttng(env, "start", session)
        subprocess.run(["/usr/bin/python3", str(ROOT / "tests" / "programs" / "neutron_agent_trace.py"), str(plan)],
                       env=env, check=True, timeout=60, capture_output=True)
        _lttng(env, "stop", session)
        _lttng(env, "destroy", session)
    return out


def bt2_records(trace: Path) -> list[tuple[int, str, str]]:
    recs = []
    for ts, line in bt2_thesis_lines(trace):
        et = re.search(r"'event_type\\?':'?([\w.-]+)", line.replace("\\'", "'")).group(1)
        obj = re.search(r"'(?:network|router)':'([^']*)'", line.replace("\\'", "'")).group(1)
        recs.append((ts, et, obj))
    return recs


def test_neutron_tasks_equal_babeltrace2(trace, tmp_path):
    from stacklens.models.neutron import neutron_statistics, neutron_tasks
    recs = bt2_records(trace)
    assert len(recs) == 2 * len(PLAN)
    # independently: each start is closed by the first later end of the same event type and object
    expected = []
    for t0, et, obj in recs:
        if et.endswith(".start"):
            base = et[:-len(".start")]
            t1 = min(t for t, e, o in recs if e == base + ".end" and o == obj and t >= t0)
            expected.append((base, obj, t1 - t0))
    st = Store(tmp_path / "store", create=True)
    res = ingest(st, [trace])
    assert [r.status for r in res] == ["ingested"] and res[0].format == "ctf"
    con = st.connect()
    got = [(t["task"], t["resource"], t["duration_ns"]) for t in neutron_tasks(con).to_pylist()]
    assert sorted(got) == sorted(expected)
    assert {t["agent"] for t in neutron_tasks(con).to_pylist()} == {"dhcp-agent", "l3-agent"}
    # the interleaved creates (net-b started and ended inside net-a's create) pair by network
    creates = {o: d for task, o, d in got if task == "dhcp-agent.network.create"}
    assert set(creates) == {"net-a", "net-b"} and creates["net-a"] > creates["net-b"]
    stats = {(s["agent"], s["operation"]): s for s in neutron_statistics(con).to_pylist()}
    assert stats[("dhcp-agent", "network.create")]["count"] == 2
    assert stats[("l3-agent", "router.create")]["max_ns"] == next(d for b, o, d in expected if b == "l3-agent.router.create")
