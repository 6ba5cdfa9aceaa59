"""The remaining tracers of the fixed registry, each against the real program.

QMP poller: two real QEMUs migrate; the test drives the migration over its own monitor and
takes QEMU's final query-migrate as the oracle for what the poller recorded on its monitor.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from stacklens.collect.segments import sealed_segments
from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.collect_helpers import python, stop, wait_for
from tests.conftest import need_program

pytestmark = pytest.mark.timeout(180)


def _qemu(workdir: Path, name: str, guest: Path, instance: str, sockets: list[Path],
          incoming_fd: int | None = None) -> subprocess.Popen:
    """A lab-guest QEMU with one QMP monitor per socket (the test's and the tracer's)."""
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none",
           "-serial", "none", "-name", f"guest={name}", "-uuid", instance, "-kernel", str(guest),
           "-append", "rate=2500 wss=4096"]
    for s in sockets:
        cmd += ["-qmp", f"unix:{s},server=on,wait=off"]
    if incoming_fd is not None:
        cmd += ["-incoming", f"fd:{incoming_fd}"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(workdir / f"{name}-{len(sockets)}.stderr", "wb"),
                            pass_fds=() if incoming_fd is None else (incoming_fd,))


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()  # by the pid we started
        proc.wait(10)


def test_qmp_poller_records_a_running_migration(tmp_path):
    need_program("qemu-system-x86_64")
    need_program("gcc")
    from stacklens.lab.guest import build_guest
    from stacklens.lab.qmp import QmpClient
    from stacklens.lab.runner import migration_channel

    guest = build_guest(tmp_path / "guest")
    vm, instance = "instance-qmp-poller", str(uuidlib.uuid4())
    src_drive, src_tracer, dst_drive = (tmp_path / "src-drive.sock", tmp_path / "src-tracer.sock",
                                        tmp_path / "dst-drive.sock")
    mig_out, mig_in = migration_channel()
    src = dst = tracer = None
    clients: list[QmpClient] = []
    out = tmp_path / "segments"
    try:
        src = _qemu(tmp_path, vm, guest, instance, [src_drive, src_tracer])
        config = tmp_path / "qmp.json"
        config.write_text(json.dumps({"out": str(out), "vms": {vm: str(src_tracer)},
                                      "interval_s": 0.2, "seal_after_s": 1.0}))
        tracer = python("-m", "stacklens.collect.worker", "qmp", str(config),
                        stderr=open(tmp_path / "tracer.err", "ab"))
        status_file = out / ".status.json"
        wait_for(lambda: status_file.exists() and json.loads(status_file.read_text())[vm]["polls"] >= 3,
                 60, "the poller polling the idle VM")
        dst = _qemu(tmp_path, vm, guest, instance, [dst_drive], incoming_fd=mig_in.fileno())
        mig_in.close()
        s = QmpClient(src_drive)
        clients.append(s)
        clients.append(QmpClient(dst_drive))
        # 16 MiB/s: a few seconds of migration, many 0.2 s polls
        s.command("migrate-set-parameters", **{"max-bandwidth": 16 << 20, "downtime-limit": 100})
        s.command_with_fd("getfd", mig_out.fileno(), fdname="migration")
        mig_out.close()
        t_migrate = time.time_ns()
        s.command("migrate", uri="fd:migration")
        final = wait_for(lambda: _ended(s.command("query-migrate")), 90, "the migration to end",
                         interval=0.2)
        t_end = time.time_ns()
        time.sleep(0.6)  # a few more polls after the end: none of them recorded
        polls = json.loads(status_file.read_text())[vm]["polls"]
    finally:
        stop(tracer)
        for c in clients:
            c.close()
        _kill(src)
        _kill(dst)
        mig_out.close()
        mig_in.close()
    assert tracer.returncode == 0, (tmp_path / "tracer.err").read_text()[-2000:]
    assert final["status"] == "completed", final
    assert not list(out.glob("*.open"))

    store = Store(tmp_path / "store", create=True)
    results = ingest(store, sealed_segments(out), host="node1")
    assert {r.format for r in results} == {"qmp"}, [r.to_dict() for r in results]
    assert sum(r.skipped for r in results) == 0
    rows = store.connect().execute(
        "SELECT ts, name, procname, instance, fields FROM events WHERE name = 'query-migrate' "
        "ORDER BY ts").fetchall()
    assert rows and {r[2] for r in rows} == {vm} and {r[3] for r in rows} == {instance}
    replies = [json.loads(r[4]) for r in rows]
    statuses = [m.get("status") for m in replies]
    # only the migration: in progress samples, then the one completed reply (no idle polls)
    assert statuses[-1] == "completed" and statuses.count("completed") == 1
    assert set(statuses[:-1]) <= {"setup", "active", "device"}, statuses
    assert statuses.count("active") >= 3, statuses
    assert len(rows) < polls
    assert all(t_migrate <= r[0] <= t_end + 1_000_000_000 for r in rows)
    # QEMU's own final figures, read by the test on its monitor, are what the poller recorded
    last = replies[-1]
    for key in ("total-time", "downtime", "setup-time"):
        assert last[key] == final[key], key
    for key in ("transferred", "total", "duplicate", "normal", "dirty-sync-count"):
        assert last["ram"][key] == final["ram"][key], key
    moved = [m["ram"]["transferred"] for m in replies if m.get("status") == "active"]
    assert moved == sorted(moved) and moved[-1] <= final["ram"]["transferred"]


def _ended(info: dict) -> dict | None:
    return info if info.get("status") in ("completed", "failed", "cancelled") else None


CHILD = """
import sys, time
for _ in range(40):
    time.sleep(0.005)
print("ready", flush=True)
sys.stdin.read()
"""


def test_ftrace_tracer_records_a_process_switches(tmp_path):
    """Oracle: the kernel's own count of the child's voluntary context switches
    (/proc/PID/status, read while the child is blocked) = its sched_switch events that leave
    it sleeping (prev_state not R), up to the moment of the read."""
    import os
    from stacklens.collect.ftrace import TRACEFS
    if os.geteuid() != 0 or not TRACEFS.is_dir():
        pytest.skip("needs root and tracefs")
    out = tmp_path / "segments"
    config = tmp_path / "ftrace.json"
    config.write_text(json.dumps({"out": str(out), "interval_s": 0.2, "seal_after_s": 0.5,
                                  "events": ["sched/sched_switch"], "instance": f"stacklens-test-{os.getpid()}"}))
    tracer = python("-m", "stacklens.collect.worker", "ftrace", str(config), stderr=open(tmp_path / "tracer.err", "ab"))
    child = None
    try:
        wait_for(lambda: (out / ".status.json").exists(), 60, "the ftrace tracer recording")
        assert (TRACEFS / "instances" / f"stacklens-test-{os.getpid()}").is_dir()
        t0 = time.time_ns()
        child = subprocess.Popen([python_exe(), "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        # blocked on stdin: its last switch has happened, and it is counted
        wait_for(lambda: _proc_state(child.pid) == "S", 10, "the child asleep on stdin")
        voluntary = _proc_field(child.pid, "voluntary_ctxt_switches")
        t_read = time.time_ns()
        time.sleep(1.0)  # a few drain rounds and a seal
    finally:
        if child is not None:
            child.kill()
            child.wait(10)
        stop(tracer)
    assert tracer.returncode == 0, (tmp_path / "tracer.err").read_text()[-2000:]
    assert not (TRACEFS / "instances" / f"stacklens-test-{os.getpid()}").exists()  # removed
    segs = sealed_segments(out)
    assert len(segs) >= 2 and not list(out.glob("*.open"))
    store = Store(tmp_path / "store", create=True)
    results = ingest(store, segs, host="node1")
    assert {r.format for r in results} == {"ftrace"}, [r.to_dict() for r in results]
    con = store.connect()
    (sleeps,) = con.execute(
        "SELECT count(*) FROM events WHERE name = 'sched_switch' "
        "AND CAST(json_extract(fields, '$.prev_pid') AS BIGINT) = ? "
        "AND json_extract_string(fields, '$.prev_state') NOT LIKE 'R%' AND ts <= ?",
        [child.pid, t_read]).fetchall()[0]
    assert voluntary >= 40 and sleeps == voluntary
    # UTC timestamps (the segments' clock comments applied), within the recording
    (t_min, t_max) = con.execute("SELECT min(ts), max(ts) FROM events").fetchall()[0]
    assert t0 - 5_000_000_000 < t_min and t_max < time.time_ns()


def python_exe() -> str:
    import sys
    return sys.executable


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _proc_field(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_ovs_sampler_follows_a_port_added_mid_run(tmp_path):
    """A real ovs-vswitchd (the lab's private daemons); a port added while sampling. Oracles:
    the test's own `ovs-appctl dpctl/show` (ports by number) and the time of the add."""
    import os
    import re
    import uuid
    for prog in ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovs-appctl"):
        need_program(prog)
    if os.geteuid() != 0:
        pytest.skip("ovs-vswitchd's netdev ports need root")
    from stacklens.lab.network import OvsDaemons
    tag = uuid.uuid4().hex[:6]
    bridge, late = f"slt{tag}", f"slt{tag}x"
    rundir = tmp_path / "ovs"
    rundir.mkdir()
    out = tmp_path / "segments"
    daemons = tracer = None
    try:
        daemons = OvsDaemons(rundir, rundir / "ovs-vswitchd.log")
        daemons.vsctl("add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=netdev")
        config = tmp_path / "ovs.json"
        config.write_text(json.dumps({"out": str(out), "unixctl": str(daemons.ctl), "db": f"unix:{daemons.db_sock}",
                                      "interval_s": 0.25, "interfaces_every_s": 0.5, "seal_after_s": 1.0}))
        tracer = python("-m", "stacklens.collect.worker", "ovs", str(config), stderr=open(tmp_path / "tracer.err", "ab"))
        status = out / ".status.json"
        wait_for(lambda: status.exists() and json.loads(status.read_text())["samples"] >= 3, 60, "3 samples")
        t_add = time.time_ns()
        daemons.vsctl("add-port", bridge, late, "--", "set", "Interface", late, "type=internal",
                      "external_ids:vm-id=vm-late")
        wait_for(lambda: late in daemons.appctl("dpctl/show"), 30, "the port in the datapath")
        n = json.loads(status.read_text())["samples"]
        wait_for(lambda: json.loads(status.read_text())["samples"] >= n + 3, 30, "3 more samples")
        stop(tracer)
        truth = {int(num): name for num, name in re.findall(r"^\s+port (\d+): (\S+)", daemons.appctl("dpctl/show"), re.M)}
    finally:
        stop(tracer)
        if daemons is not None:
            daemons.stop()
    assert tracer.returncode == 0, (tmp_path / "tracer.err").read_text()[-2000:]
    assert json.loads(status.read_text())["failures"] == 0
    assert late in truth.values() and bridge in truth.values()
    store = Store(tmp_path / "store", create=True)
    results = ingest(store, sealed_segments(out), host="node1")
    assert {r.format for r in results} == {"ovs-appctl"}, [r.to_dict() for r in results]
    con = store.connect()
    rows = con.execute("SELECT ts, fields FROM events WHERE name = 'ovs_datapath' ORDER BY ts").fetchall()
    ports = [(ts, {int(k): v for k, v in json.loads(f)["ports"].items()}) for ts, f in rows]
    assert ports[-1][1] == truth
    with_late = [ts for ts, p in ports if late in p.values()]
    assert with_late and min(with_late) > t_add
    assert any(ts < t_add for ts, p in ports if late not in p.values())
    iface = con.execute("SELECT ts, fields FROM events WHERE name = 'ovs_interface'").fetchall()
    late_rows = [(ts, json.loads(f)) for ts, f in iface if json.loads(f).get("name") == late]
    assert late_rows and all(ts > t_add and f["external_ids"]["vm-id"] == "vm-late" for ts, f in late_rows)


LTTNG_APP = """
import logging, sys, time
import lttngust  # registers with the session daemon of LTTNG_HOME
log = logging.getLogger("stacklens.lttngtest")
log.setLevel(logging.DEBUG)
n, seconds = int(sys.argv[1]), float(sys.argv[2])
for i in range(n):
    log.info("seq=%d", i)
    time.sleep(seconds / n)
"""


def test_lttng_tracer_rotates_python_agent_records_into_chunks(tmp_path):
    """Own lttng-sessiond (no kernel: the modules cannot load here, which the tracer must
    report); a python3-lttngust program logs N records across several rotations. Oracles:
    babeltrace2's event count over the chunks, and the program's own sequence numbers."""
    import os
    import re
    from tests.conftest import need_python_lttngust, own_lttng_sessiond
    bt2 = need_program("babeltrace2")
    need_python_lttngust()
    from stacklens.collect.client import _unpack_trace_chunk
    home = tmp_path / "lttng-home"
    home.mkdir()
    env = dict(os.environ, LTTNG_HOME=str(home))
    out = tmp_path / "segments"
    tracer = None
    n = 300
    with own_lttng_sessiond(env):
        try:
            config = tmp_path / "lttng.json"
            config.write_text(json.dumps({"out": str(out), "lttng_home": str(home), "rotate_s": 1.0,
                                          "python_loggers": ["stacklens.lttngtest"],
                                          "kernel_events": ["sched_switch"]}))
            tracer = python("-m", "stacklens.collect.worker", "lttng", str(config),
                            stdout=open(tmp_path / "tracer.out", "ab"), stderr=open(tmp_path / "tracer.err", "ab"))
            status = out / ".status.json"
            wait_for(lambda: status.exists(), 60, "the session started")
            subprocess.run(["/usr/bin/python3", "-c", LTTNG_APP, str(n), "3.0"], env=env, check=True, timeout=60,
                           capture_output=True)
            stop(tracer, timeout=60)
        finally:
            stop(tracer)
    assert tracer.returncode == 0, (tmp_path / "tracer.err").read_text()[-2000:]
    st = json.loads(status.read_text())
    assert st["domains"] == ["python"]
    # the kernel domain is reported unavailable, with lttng's reason
    assert st["kernel"].startswith("unavailable: lttng list --kernel:"), st["kernel"]
    assert "kernel domain skipped" in (tmp_path / "tracer.out").read_text()
    segs = sealed_segments(out)
    assert len(segs) >= 3 and all(s.name.endswith(".ctf.tar") for s in segs), segs  # rotated
    traces = [_unpack_trace_chunk(s) for s in segs]
    per_chunk = []
    for t in traces:
        text = subprocess.run([bt2, str(t)], capture_output=True, text=True, timeout=60, check=True).stdout
        per_chunk.append(len(re.findall(r"lttng_python:event", text)))
    assert sum(per_chunk) == n and sum(1 for c in per_chunk if c) >= 2, per_chunk

    store = Store(tmp_path / "store", create=True)
    results = ingest(store, traces, host="node1")
    assert all(r.status == "ingested" for r in results), [r.to_dict() for r in results]
    msgs = [m for (m,) in store.connect().execute(
        "SELECT json_extract_string(fields, '$.msg') FROM events WHERE name = 'lttng_python:event'").fetchall()]
    assert sorted(int(m.split("=")[1]) for m in msgs) == list(range(n))
