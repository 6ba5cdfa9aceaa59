"""A conductor-like service with a pool of worker threads, instrumented as in the thesis: each
task logs `lttng_trace:{'event_type':X.start,…}` / `X.end` through Python logging into the real
LTTng-UST Python agent (run with /usr/bin/python3 and python3-lttngust, under a session daemon).

Its dispatcher is sticky (requests go to the worker their key hashes to, and every request here
has the same key), so one worker does all the builds while its peers only answer a ping at start.

usage: thesis_worker_pool.py WORKERS REQUESTS TASK_SECONDS
Prints JSON: {"workers": {thread name: {"busy_ns": …, "tasks": …}}, "first_ns", "last_ns"}
measured by the program itself (time.time_ns around each task).
"""

import json
import queue
import sys
import threading
import time

import lttngust  # noqa: F401  registers with the session daemon of LTTNG_HOME

import logging

LOG = logging.getLogger("nova.conductor.manager")
LOG.setLevel(logging.DEBUG)

workers_n, requests_n, task_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
queues = [queue.Queue() for _ in range(workers_n)]
busy = {f"worker-{i}": {"busy_ns": 0, "tasks": 0} for i in range(workers_n)}
times = []


def record(event_type: str, request_id: str) -> None:
    # the thesis record format: a Python-dict-like string, event_type unquoted
    LOG.info("lttng_trace:{'event_type':%s,'vmname':'','vm_state':'','host':'','project_id':'',"
             "'vm_task':'','request_id':'%s','msg':''}", event_type, request_id)


def work(i: int) -> None:
    me = busy[f"worker-{i}"]
    while True:
        item = queues[i].get()
        if item is None:
            return
        task, request_id, seconds = item
        t0 = time.time_ns()
        record(f"{task}.start", request_id)
        time.sleep(seconds)
        record(f"{task}.end", request_id)
        t1 = time.time_ns()
        me["busy_ns"] += t1 - t0
        me["tasks"] += 1
        times.extend((t0, t1))


threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(workers_n)]
for t in threads:
    t.start()
for i in range(workers_n):  # every worker answers one ping: it is known to the trace
    queues[i].put(("conductor.ping", f"req-ping-{i:04d}", 0.0))
time.sleep(0.05)
for r in range(requests_n):
    # sticky dispatch: every request has the same key, so they all go to the same worker
    queues[0].put(("conductor.build_instances", f"req-build-{r:04d}", task_s))
for q in queues:
    q.put(None)
for t in threads:
    t.join()
print(json.dumps({"workers": busy, "first_ns": min(times), "last_ns": max(times)}))
