"""A small oslo.log + oslo.messaging service configured (config files only) with our
notification driver and log handler: its records land in the store with request ids.

Oracle: the service's own request ids (req-<i>…, i = 0..N-1) and counts (2 log records and 1
notification per request).
"""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from stacklens.collect import client
from tests.collect_helpers import PROGRAMS, start_agent, stop, wait_for

pytestmark = pytest.mark.timeout(120)
N = 40


def test_service_records_land_with_request_ids(tmp_path):
    token = secrets.token_hex(16)
    (tmp_path / "token").write_text(token + "\n")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[agent]\nhost = "node9"\nport = 0\ntoken = "{token}"\ndata_dir = "{tmp_path / "agent"}"\n')
    ready = tmp_path / "port"
    agent, port = start_agent(conf, ready, tmp_path / "agent.err")
    try:
        url = f"http://127.0.0.1:{port}"
        (tmp_path / "logging.conf").write_text(f"""
[loggers]
keys = root
[handlers]
keys = stacklens
[formatters]
keys = json
[logger_root]
level = INFO
handlers = stacklens
[handler_stacklens]
class = stacklens.collect.instrument.AgentLogHandler
args = ('{url}', '{tmp_path / "token"}')
formatter = json
[formatter_json]
class = oslo_log.formatters.JSONFormatter
""")
        (tmp_path / "demo.conf").write_text(f"""
[DEFAULT]
log_config_append = {tmp_path / "logging.conf"}
[oslo_messaging_notifications]
driver = stacklens
[stacklens]
agent_url = {url}
token_file = {tmp_path / "token"}
""")
        service = subprocess.run([sys.executable, str(PROGRAMS / "demo_instrumented_service.py"), str(tmp_path / "demo.conf"), str(N)],
                                 capture_output=True, text=True, timeout=60)
        assert service.returncode == 0, service.stderr[-2000:]
        agents_file = tmp_path / "agents.toml"
        agents_file.write_text(f'[[agent]]\nname = "node9"\nurl = "{url}"\ntoken = "{token}"\n')
        agents = client.load_agents(agents_file)
        # shipped segments are sealed within ~2 s of the last write
        wait_for(lambda: len({s["tracer"] for s in client.agents_segments(agents[0])}) == 2, 20,
                 "sealed shipped segments", 0.5)
        report = client.pull(agents, str(tmp_path / "central"))
        assert not report["agents"]["node9"]["problems"]
    finally:
        stop(agent)
    from stacklens.store import Store
    con = Store(tmp_path / "central").connect()
    expected = {f"req-{i:08d}-1111-4000-8000-000000000000" for i in range(N)}
    notes = con.execute("SELECT request_id, name, host FROM events WHERE source = 'oslo.notification'").fetchall()
    assert len(notes) == N and {r[0] for r in notes} == expected
    assert {(r[1], r[2]) for r in notes} == {("demo.request.end", "node9")}
    logs = con.execute("SELECT request_id, count(*) FROM events WHERE source LIKE 'oslo.log%' "
                       "AND fields LIKE '%request %' GROUP BY 1").fetchall()
    assert dict(logs) == {r: 2 for r in expected}
