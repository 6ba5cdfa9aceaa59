"""A small program logging Neutron agent task records in the thesis format through Python
logging and the LTTng-UST Python agent (Debian's python3-lttngust: run with /usr/bin/python3).

Not Neutron: the records follow the thesis instrumentation (table 4.4, event types prefixed
`dhcp-agent.` / `l3-agent.`; SPEC §3 dict-like `lttng_trace:{...}` with network/router keys,
single quotes, event_type unquoted as the thesis traces sometimes have it).

usage: neutron_agent_trace.py PLAN.json
PLAN: [{"agent": "dhcp-agent", "task": "network.create", "object_key": "network",
        "object": "net-a", "request_id": "req-…", "sleep_ms": 20}, …] run in order; a task
with "overlap": true starts before the previous one ends (interleaved on one worker).
"""

import json
import logging
import sys
import time

import lttngust  # noqa: F401  (registers the LTTng agent handler on import)

plan = json.loads(open(sys.argv[1]).read())
logging.basicConfig(level=logging.INFO, stream=sys.stderr)


def record(agent: str, event_type: str, key: str, obj: str, request_id: str) -> None:
    log = logging.getLogger(f"neutron.agent.{agent.replace('-', '_')}")
    # event_type unquoted, as in the thesis traces
    log.info("lttng_trace:{'event_type':%s,'%s':'%s','host':'controller','project_id':'demo',"
             "'request_id':'%s','msg':'%s %s'}", event_type, key, obj, request_id, agent, event_type)


pending = []
for step in plan:
    ev = f"{step['agent']}.{step['task']}"
    record(step["agent"], ev + ".start", step["object_key"], step["object"], step["request_id"])
    if step.get("overlap"):
        pending.append(step)
        time.sleep(step["sleep_ms"] / 1000)
        continue
    time.sleep(step["sleep_ms"] / 1000)
    record(step["agent"], ev + ".end", step["object_key"], step["object"], step["request_id"])
    while pending:
        p = pending.pop()
        record(p["agent"], f"{p['agent']}.{p['task']}.end", p["object_key"], p["object"], p["request_id"])
# give the agent thread time to hand the last events to the session daemon
time.sleep(0.5)
