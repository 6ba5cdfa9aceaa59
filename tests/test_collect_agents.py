"""Two real agents (separate ports, separate data) driven and pulled by one client.

Oracles: the HTTP status codes of unauthenticated requests; `pip list` run by the test on
each node's interpreter (independent of the inventory tracer's importlib.metadata) for the
version differences the pull must report; /proc read by the test for the sampler's PIDs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stacklens.collect import client
from stacklens.collect.packages import normalise
from stacklens.store import Store
from tests.collect_helpers import start_agent, stop, wait_for

pytestmark = pytest.mark.timeout(180)
SYSTEM_PYTHON = "/usr/bin/python3"


def _agent(tmp_path: Path, name: str, token: str, packages_python: str) -> tuple[subprocess.Popen, int]:
    conf = tmp_path / f"{name}.toml"
    conf.write_text(f"""
[agent]
host = "{name}"
port = 0
token = "{token}"
data_dir = "{tmp_path / name}"
max_restarts = 1

[tracers.packages]
python = "{packages_python}"

[tracers.proc]
interval_s = 0.3
seal_after_s = 0.5

[tracers.notifications]
url = "amqp://guest:guest@127.0.0.1:1//"
no_such_option = 1
""")
    ready = tmp_path / f"{name}.port"
    return start_agent(conf, ready, tmp_path / f"{name}.err", f"agent {name}")


def _pip_list(python_exe: str) -> dict[str, str]:
    r = subprocess.run([python_exe, "-m", "pip", "list", "--format", "json"], capture_output=True,
                       text=True, timeout=120, check=True)
    return {normalise(p["name"]): p["version"] for p in json.loads(r.stdout)}


def test_two_agents_driven_and_pulled(tmp_path):
    if not os.access(SYSTEM_PYTHON, os.X_OK) or sys.executable == SYSTEM_PYTHON:
        pytest.skip("needs a second Python environment at /usr/bin/python3")
    token1, token2 = secrets.token_hex(16), secrets.token_hex(16)
    a1 = a2 = None
    try:
        a1, port1 = _agent(tmp_path, "node1", token1, sys.executable)
        a2, port2 = _agent(tmp_path, "node2", token2, SYSTEM_PYTHON)
        agents_file = tmp_path / "agents.toml"
        agents_file.write_text(f"""
[[agent]]
name = "node1"
url = "http://127.0.0.1:{port1}"
token = "{token1}"

[[agent]]
name = "node2"
url = "http://127.0.0.1:{port2}"
token = "{token2}"
""")
        agents = client.load_agents(agents_file)

        # unauthenticated and wrongly authenticated requests are refused
        for headers in ({}, {"Authorization": f"Bearer {token2}"}, {"Authorization": token1}):
            for method, path in (("GET", "/v1/status"), ("POST", "/v1/tracers/proc/start"),
                                 ("GET", "/v1/segments")):
                req = urllib.request.Request(f"http://127.0.0.1:{port1}{path}", method=method,
                                             headers=headers, data=b"" if method == "POST" else None)
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(req, timeout=10)
                assert e.value.code == 401
        assert client.status(agents)[0]["tracers"]["proc"]["state"] == "stopped"  # nothing started

        # an unknown tracer is refused, by the API and by the CLI (one-line error, exit 2)
        with pytest.raises(Exception, match="unknown tracer 'bash'"):
            client.start(agents, ["bash"])
        cli = subprocess.run([sys.executable, "-m", "stacklens.cli", "client", "--agents", str(agents_file),
                              "start", "rm -rf /"], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 2 and "unknown tracer" in cli.stderr and "Traceback" not in cli.stderr

        started = client.start(agents, ["packages", "proc", "notifications"])
        assert {(r["agent"], r["tracer"]) for r in started} == {
            (n, t) for n in ("node1", "node2") for t in ("packages", "proc", "notifications")}

        def settled():
            st = {s["agent"]: s["tracers"] for s in client.status(agents)}
            return all(t["packages"]["state"] == "finished" and t["proc"]["segments"] >= 2
                       and t["notifications"]["state"] == "crashed" for t in st.values()) and st
        st = wait_for(settled, 90, "inventories done, proc segments sealed, bad tracer crashed", 0.5)
        # the crash is reported (restarted once, then given up) and the agents live on
        for t in st.values():
            bad = t["notifications"]
            assert bad["crashes"] == 2 and bad["restarts"] == 1 and bad["exit_code"] != 0
            assert "no_such_option" in bad["log_tail"]
            assert t["proc"]["state"] == "running"
        # `client status` says why: the last line the tracer wrote to its log on disk
        shown = subprocess.run([sys.executable, "-m", "stacklens.cli", "client", "--agents", str(agents_file),
                                "status"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        for node in ("node1", "node2"):
            log = (tmp_path / node / "run" / "notifications.log").read_text()
            last = [ln.strip() for ln in log.splitlines() if ln.strip()][-1]
            assert "no_such_option" in last
            line = next(ln for ln in shown.stdout.splitlines() if ln.startswith(f"{node} notifications crashed"))
            assert line.endswith(": " + last[:300]), line

        stopped = client.stop(agents, ["proc"])
        assert {r["state"] for r in stopped} == {"stopped"}
        store_root = tmp_path / "central"
        report = client.pull(agents, str(store_root))
        assert all(a["fetched"] == a["segments"] > 0 and not a["problems"] for a in report["agents"].values())
        again = client.pull(agents, str(store_root))
        assert all(a["fetched"] == 0 and a["ingested"] == 0 for a in again["agents"].values())

        con = Store(store_root).connect()
        by_host = dict(con.execute("SELECT host, count(*) FROM events WHERE name = 'proc.sample' GROUP BY host").fetchall())
        assert set(by_host) == {"node1", "node2"}
        # each agent's own PID is among its sampler's processes (the test knows the PIDs)
        for host, agent_pid in (("node1", a1.pid), ("node2", a2.pid)):
            got = con.execute("SELECT count(*) FROM events WHERE host = ? AND name = 'proc.sample' AND pid = ?",
                              [host, agent_pid]).fetchall()[0][0]
            assert got >= 1
        inv = {h: dict(con.execute("SELECT fields->>'package', fields->>'version' FROM events "
                                   "WHERE host = ? AND name = 'package.installed'", [h]).fetchall())
               for h in ("node1", "node2")}

        # oracle: pip's own listing of each environment
        pip1, pip2 = _pip_list(sys.executable), _pip_list(SYSTEM_PYTHON)
        both = set(pip1) & set(pip2) & set(inv["node1"]) & set(inv["node2"])
        expected = {p for p in both if pip1[p] != pip2[p]}
        assert expected, "the two environments share no package at different versions"
        found = {f["package"]: f for f in report["findings"] if f["finding"] == "package_version_skew"}
        assert expected <= set(found)
        for p in expected:
            assert found[p]["hosts"] == {"node1": pip1[p], "node2": pip2[p]}
        assert not (set(found) & (both - expected))  # no skew reported where pip sees none
    finally:
        stop(a1)
        stop(a2)
    assert a1.returncode == 0 and a2.returncode == 0
