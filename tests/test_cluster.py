"""--cluster: ingest and the per-host analyses on Dask distributed equal the embedded run.

Data: the thesis traces (Nova/Cinder/OvS, host controller), loghub, the Trace Compass
synctraces (VM1 → VM3 scp, for sync) and two copies of many-threads made distinct (trace UUID
and hostname rewritten, as bench/kernel_analysis.py does), so five kernel/virt hosts.

Oracles: the embedded (in-process) run of the same commands — every JSON output and every
row of the store (per source: count and a hash sum over all columns) must be identical — and
the owners' published event counts (many-threads 240,644 per copy; synctraces 110,771 and
85,729; loghub 2,000 lines). Clusters: a LocalCluster of 2 worker processes started here, and
a `dask scheduler` + 2 `dask worker` processes started as real subprocesses on 127.0.0.1 (free
ports, stopped by PID), one of whose workers is killed with SIGKILL in the middle of an ingest.
`migrations` runs on a real live migration of the lab (two QEMUs), checked against QMP's own
sync count as well as against the embedded run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import need_data, need_program
from stacklens.errors import StacklensError
from stacklens.store import Store
from stacklens.store.ingest import ingest
from stacklens.store.objectstore import ObjectStore

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
PUBLISHED = {"VM1": 110_771, "VM3": 85_729}  # owners' counts (and 240,644 per many-threads copy)
MANY_THREADS = 240_644
ROW_HASH = ("SELECT host, layer, src, count(*) AS n, sum(hash(ts, host, layer, source, name, cpu, pid, tid, "
            "procname, request_id, instance, fields, pos)::HUGEINT) AS h FROM events_raw GROUP BY ALL ORDER BY ALL")


def _json(fn, *args) -> object:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args)
    return json.loads(buf.getvalue())


def findings(store: str, cluster: str | None) -> list[dict]:
    """`diagnose --json`'s findings."""
    from stacklens.diagnose.rules import diagnose_store
    return json.loads(json.dumps([f.to_dict() for f in diagnose_store(Store(store), cluster)]))


def analyses(store: str, cluster: str | None) -> dict:
    """The JSON of each per-host command (sync stores clock transforms: diagnose, after it,
    judges the clocks it stored)."""
    from stacklens.views.kernel import show_cpu, show_io, show_preemption, show_syscalls, show_threads
    from stacklens.views.ovs import show_ovs
    from stacklens.views.sync_report import run_sync
    return {
        "cpu": _json(show_cpu, store, None, None, None, "process", 0, True, cluster),
        "threads": _json(show_threads, store, None, None, "lttng%", 0, True, cluster),
        "preemption": _json(show_preemption, store, None, "lttng%", None, None, 0, True, cluster),
        "syscalls": _json(show_syscalls, store, None, None, 0, True, cluster),
        "io": _json(show_io, store, None, 0, True, cluster),
        "ovs": _json(show_ovs, store, True, None, None, 1.0, cluster),
        "sync": _json(run_sync, store, True, cluster),
        "clocks": {h: vars(t) for h, t in Store(store).clocks().items()},
        "diagnose": findings(store, cluster),
    }


def rows(store: str) -> list[tuple]:
    return Store(store).connect().execute(ROW_HASH).fetchall()


def parts(results) -> list[dict]:  # noqa: ANN001
    return [r.to_dict() for r in results]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> list[Path]:
    sys.path.insert(0, str(ROOT / "bench"))
    from kernel_analysis import make_copies
    need_data("tracecompass", "many-threads")
    work = tmp_path_factory.mktemp("cluster-data")
    # a copy of scp_src at the end: the same content twice in one run (found "already"); a copy,
    # since the same directory given twice is not walked again (bundle.discover)
    again = work / "scp_src-again"
    shutil.copytree(need_data("tracecompass", "synctraces", "scp_src"), again)
    return [need_data("thesis"), need_data("openstack", "loghub"), need_data("tracecompass", "synctraces"),
            *make_copies(work / "many-threads", 2), again]


@pytest.fixture(scope="module")
def embedded(bundle, tmp_path_factory) -> dict:
    store = tmp_path_factory.mktemp("embedded") / "store"
    results = ingest(Store(store, create=True), bundle)
    return {"parts": parts(results), "rows": rows(str(store)), "analyses": analyses(str(store), None),
            "store": str(store)}


def copy_hosts(bundle: list[Path]) -> list[str]:
    """The hostname each many-threads copy's metadata names (the copier gives each its own)."""
    import re
    return [re.search(rb'hostname = "([^"]*)"', (p / "metadata").read_bytes()).group(1).decode()
            for p in bundle if p.parent.name == "many-threads"]


def test_embedded_matches_published_counts(embedded, bundle):
    counts: dict[str, int] = {}
    for host, _, _, n, _ in embedded["rows"]:
        counts[host] = counts.get(host, 0) + n
    published = PUBLISHED | {h: MANY_THREADS for h in copy_hosts(bundle)}
    assert len(published) == len(PUBLISHED) + 2
    assert {h: counts.get(h) for h in published} == published
    assert sum(n for h, layer, _, n, _ in embedded["rows"] if layer == "app" and h == "unknown") >= 2000
    sync = {h["host"]: h["quality"] for h in embedded["analyses"]["sync"]["hosts"]}
    assert sync["VM1"] == "reference" and sync["VM3"] == "accurate"  # the scp gives both directions
    assert embedded["parts"][-1]["status"] == "already"  # scp_src given twice
    # what the cluster runs must equal is not empty: syscalls of the many-threads copies, the
    # synctraces' disk requests, findings of the per-host rules (OvS kprobes, clocks)
    kernel = {h["host"]: h for h in embedded["analyses"]["syscalls"]["hosts"]}
    assert all(kernel[h]["segments"] > 0 for h in copy_hosts(bundle))
    disk = {h["host"]: h["requests"] for h in embedded["analyses"]["io"]["hosts"]}
    assert disk["VM1"] > 0 and disk["VM3"] > 0
    rules = {f["rule"] for f in embedded["analyses"]["diagnose"]}
    assert {"clock_sync", "ovs_lost_upcalls", "ovs_upcall_bursts"} <= rules


@pytest.fixture(scope="module")
def local_cluster():
    from distributed import LocalCluster

    import stacklens.cluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as lc:
        try:
            yield lc.scheduler_address
        finally:
            stacklens.cluster.close()


def test_local_cluster_equals_embedded(bundle, embedded, local_cluster, tmp_path):
    from stacklens.cluster.ingest import ingest_on_cluster
    store = tmp_path / "store"
    url = "file://" + str(store)  # the store given as an fsspec URL: committed by manifest objects
    done: list[str] = []
    at_url = Store(url, create=True)
    assert isinstance(at_url, ObjectStore)
    results = ingest_on_cluster(local_cluster, at_url, bundle,
                                on_done=lambda part, size: done.append(str(part.path)))
    assert len(done) == sum(r["status"] != "unrecognised" for r in parts(results))  # one per task
    out = analyses(url, local_cluster)
    assert parts(results) == embedded["parts"]
    assert rows(str(store)) == embedded["rows"]
    assert (store / "manifests").is_dir() and not (store / "tmp").exists()  # written by the workers, no staging
    for name, value in embedded["analyses"].items():
        assert out[name] == value, name


async def _stealing(dask_scheduler, on: bool) -> None:  # noqa: ANN001 - run on the scheduler
    ext = dask_scheduler.extensions["stealing"]
    await (ext.start() if on else ext.stop())


def _ran_on(stream: list[dict], names: tuple[str, ...]) -> dict[str, list[str]]:
    """host → the workers that ran its tasks (one entry per task), from the scheduler's task
    stream; per-host task keys are NAME-HOST-RUN (stacklens.cluster.task_key)."""
    out: dict[str, list[str]] = {}
    for rec in stream:
        key = str(rec["key"])
        name = next((n for n in names if key.startswith(n + "-")), None)
        if name is not None:
            out.setdefault(key[len(name) + 1:key.rindex("-")], []).append(rec["worker"])
    return out


def test_placement_keeps_each_host_on_one_worker(embedded, local_cluster, tmp_path):
    """`io` then `diagnose`, twice: every task of one host (4 for a kernel host, 2 for the
    others) runs on the same worker — the one its hash names — and the hosts are spread over
    both workers; an ingest part whose host is given (--host) is written by that worker too.
    Where the tasks ran is read from the scheduler's task stream. Work stealing is paused
    meanwhile: with it (Dask's default) an idle worker may take a queued task, which the
    README states; this checks that the preference itself is given and kept."""
    from distributed import Client, get_task_stream

    from stacklens.cluster import partition_hosts, preferred_worker
    from stacklens.cluster.ingest import ingest_on_cluster
    from stacklens.models.kernel import kernel_hosts
    from stacklens.views.kernel import show_io
    store = embedded["store"]
    io_now = _json(show_io, store, None, 0, True, None)  # under the clocks sync stored since
    with Client(local_cluster, timeout=30) as c:
        c.run_on_scheduler(_stealing, on=False)
        try:
            with get_task_stream(client=c) as stream:
                for _ in range(2):
                    assert _json(show_io, store, None, 0, True, local_cluster) == io_now
                    assert findings(store, local_cluster) == embedded["analyses"]["diagnose"]
                ingest_on_cluster(local_cluster, Store(tmp_path / "s", create=True),
                                  [need_data("tracecompass", "synctraces", "scp_src")], host="VM1")
            workers = {a: str(w["name"]) for a, w in c.scheduler_info(n_workers=-1)["workers"].items()}
        finally:
            c.run_on_scheduler(_stealing, on=True)
    (wrote,) = [rec["worker"] for rec in stream.data if str(rec["key"]).startswith("ingest-")]
    ran = _ran_on(stream.data, ("io_host", "host_facts"))
    assert set(ran["VM1"]) == {wrote}
    kernel = set(kernel_hosts(Store(store)))
    assert set(ran) == set(partition_hosts(Store(store)))
    for host, where in ran.items():
        assert len(where) == (4 if host in kernel else 2), (host, where)
        assert set(where) == {preferred_worker(host, workers)}, (host, where)
    assert len({w for where in ran.values() for w in where}) == 2  # both workers have hosts


def test_preferred_worker_moves_only_the_hosts_of_a_worker_that_left():
    """Rendezvous hashing: with a worker gone, the hosts it had move, no other host does; the
    choice does not depend on the order the workers are listed in."""
    from stacklens.cluster import preferred_worker
    hosts = [f"compute-{i}" for i in range(200)]
    four = {f"tcp://10.0.0.{i}:8788": f"w{i}" for i in range(4)}
    before = {h: preferred_worker(h, four) for h in hosts}
    assert before == {h: preferred_worker(h, dict(reversed(four.items()))) for h in hosts}
    assert all(25 <= list(before.values()).count(a) <= 75 for a in four)  # 200 hosts over 4: spread
    gone = "tcp://10.0.0.2:8788"
    three = {a: n for a, n in four.items() if a != gone}
    after = {h: preferred_worker(h, three) for h in hosts}
    assert {h for h in hosts if after[h] != before[h]} == {h for h in hosts if before[h] == gone}


def test_migrations_on_cluster(local_cluster, tmp_path):
    """A real live migration (the lab's interference scenario: two QEMUs migrating, two busy
    VMs on the same CPU, the machine's scheduling recorded): the attempt is found on the
    client, its source host's preemptors on a worker; `explain --vm` and `diagnose` likewise
    (the QEMU threads joined on the client from each host's kernel threads, built on workers)."""
    need_program("qemu-system-x86_64")
    need_program("gcc")
    from stacklens.lab.runner import run_scenario
    from stacklens.views.migrations import show_migrations
    run_scenario("interference", tmp_path / "lab", broker=None)
    ingest(Store(tmp_path / "store", create=True), [tmp_path / "lab"])
    embedded = _json(show_migrations, str(tmp_path / "store"), True, None)
    assert _json(show_migrations, str(tmp_path / "store"), True, None, local_cluster) == embedded
    (m,) = embedded["migrations"]
    assert (m["source"], m["destination"], m["qemu_state"]) == ("lab-src", "lab-dst", "completed")
    assert m["qmp_dirty_sync_count"] == m["syncs"]  # QEMU's own count (QMP) = the trace's syncs
    # explain --vm and diagnose: the migration's thread times (kernel, per source host) on a
    # worker, the tree and the findings here; equal to the embedded ones
    from stacklens.analyses.explain import explain_vm
    store = str(tmp_path / "store")
    tree = explain_vm(Store(store), m["vm"]).to_dict()
    assert explain_vm(Store(store), m["vm"], cluster=local_cluster).to_dict() == tree
    (node,) = [c for c in tree["children"] if c["kind"] == "migration"]
    threads = [c for c in node["children"] if c["kind"] == "thread"]
    # the lab read the source QEMU's threads from /proc (lab.json): the tree's threads are those
    lab = json.loads((tmp_path / "lab" / "lab.json").read_text())
    lab_tids = {t["tid"] for p in lab["processes"] if p["host"] == m["source"] for t in p["threads"]}
    assert threads and {t["attrs"]["tid"] for t in threads} <= lab_tids
    assert sum(t["attrs"]["running_ns"] for t in threads) > 0
    diagnosed = findings(store, None)
    assert findings(store, local_cluster) == diagnosed
    # the busy VMs slowed it (the lab's own design): found on the cluster too
    assert "migration_interference" in {f["rule"] for f in diagnosed}


def test_ovs_datapath_statistics_on_cluster(local_cluster, tmp_path):
    """`ovs` over two hosts: the thesis kprobe trace (controller) and a real ovs-vswitchd's
    sampled statistics (the network lab, host lab-net): per-host models on the workers, the
    reports over both on the client. Oracle beyond the embedded run: OvS's own miss counter."""
    for prog in ("ovs-vswitchd", "ovsdb-server", "ovs-appctl", "ip"):
        need_program(prog)
    if os.geteuid() != 0:
        pytest.skip("the network lab needs root (network namespaces)")
    from stacklens.lab.network import run_network
    from stacklens.views.ovs import show_ovs
    run_network(tmp_path / "net")
    lab = json.loads((tmp_path / "net" / "lab.json").read_text())
    store = str(tmp_path / "store")
    ingest(Store(store, create=True), [tmp_path / "net", need_data("thesis", "ovs-switch")])
    embedded = _json(show_ovs, store, True, None, None, 1.0)
    on_cluster = _json(show_ovs, store, True, None, None, 1.0, local_cluster)
    for part in embedded:
        assert on_cluster[part] == embedded[part], f"ovs {part}: the cluster's differs from the embedded one"
    (dp,) = embedded["netdev_statistics"]["datapaths"]
    # the datapath's miss count, as OvS's own dpif-netdev/pmd-stats-show gave it to the lab
    assert dp["last"]["missed"] == lab["ovs_counters_end"]["miss_success"] + lab["ovs_counters_end"]["miss_failed"]
    assert embedded["datapath_kprobes"]["events"]["vport_receive"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, stopped by PID."""
    work = tmp_path_factory.mktemp("dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=ENV, cwd=work, stdout=subprocess.DEVNULL,
                              stderr=open(work / "scheduler.log", "w"))]
    for i in range(2):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
             "--no-dashboard", "--local-directory", str(work / f"w{i}"), "--name", f"w{i}"],
            env=ENV, cwd=work, stdout=subprocess.DEVNULL, stderr=open(work / f"worker{i}.log", "w")))
    try:
        from distributed import Client
        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=90)
        yield address
    finally:
        import stacklens.cluster
        stacklens.cluster.close()
        for p in procs[::-1]:  # workers first (a nanny takes its worker with it), then the scheduler
            p.send_signal(signal.SIGTERM)
        for p in procs[::-1]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "stacklens.cli", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def _run_killing_a_worker(address: str, run) -> dict:  # noqa: ANN001
    """Call `run()` in a thread and SIGKILL the worker process running one of its ingest
    tasks; {"value": …} or {"error": …} when it is over."""
    from distributed import Client
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = run()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            result["error"] = e

    t = threading.Thread(target=target)
    with Client(address, timeout=30) as c:
        t.start()
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and t.is_alive():
            for worker, keys in c.processing().items():
                if any(str(k).startswith("ingest-") for k in keys):
                    victim = worker
                    break
            time.sleep(0.05)
        assert victim is not None, "no ingest task seen running"
        pid = c.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        t.join(timeout=300)
        assert victim not in c.scheduler_info()["workers"]  # gone; its nanny starts another
    assert not t.is_alive()
    return result


def test_scheduler_and_worker_processes_survive_a_killed_worker(bundle, embedded, dask_processes, tmp_path):
    """`stacklens ingest --cluster` on a `dask scheduler` + 2 `dask worker` processes, with
    SIGKILL to the worker running one of its tasks: its nanny starts a new one, the scheduler
    runs the lost task again, and the parts and the store end as the embedded ingest left them;
    then `cpu`, `io` and `diagnose` with the address from STACKLENS_CLUSTER equal the embedded ones."""
    store = str(tmp_path / "store")
    result = _run_killing_a_worker(dask_processes, lambda: _cli(
        "ingest", *map(str, bundle), "--store", store, "--cluster", dask_processes, "--json"))
    assert "error" not in result, result["error"]  # the scheduler retries up to 3 deaths
    for got, want in zip(json.loads(result["value"].stdout)["parts"], embedded["parts"], strict=True):
        if got["message"] and "died before answering" in got["message"]:
            got["message"], want = None, {**want, "message": None}  # committed just before the kill
        assert got == want
    assert rows(store) == embedded["rows"]
    env = {**ENV, "STACKLENS_CLUSTER": dask_processes}  # the address from the environment
    cpu = json.loads(_cli("cpu", "--store", store, "--by", "process", "--limit", "0", "--json", env=env).stdout)
    assert cpu == embedded["analyses"]["cpu"]
    io_ = json.loads(_cli("io", "--store", store, "--limit", "0", "--json", env=env).stdout)
    assert io_ == embedded["analyses"]["io"]
    diagnosed = json.loads(_cli("diagnose", "--store", store, "--json", env=env).stdout)["findings"]
    assert diagnosed == findings(store, None)  # this store has no clocks yet: judged in-process here


def test_worker_killed_past_the_retries(bundle, embedded, local_cluster, tmp_path):
    """With no retry allowed, the same kill fails the run in one line naming the part, and
    nothing of that part stays in the store: every row there belongs to a committed source
    and equals the embedded ingest's."""
    from distributed import Client

    from stacklens.cluster.ingest import ingest_on_cluster
    store = tmp_path / "store"
    with Client(local_cluster, timeout=30) as c:
        c.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 0))
        try:
            result = _run_killing_a_worker(local_cluster, lambda: ingest_on_cluster(
                local_cluster, Store(store, create=True), bundle[3:]))
        finally:
            c.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 3))
    error = result.get("error")
    assert isinstance(error, StacklensError), result
    assert "ingest of" in str(error) and "died" in str(error) and "\n" not in str(error)
    committed = {s["src"] for s in Store(store).sources()}
    left = rows(str(store))
    assert {r[2] for r in left} <= committed
    assert set(left) <= set(embedded["rows"])


def test_unreachable_scheduler_is_one_line(tmp_path, monkeypatch):
    import stacklens.cluster
    from stacklens.views.kernel import show_cpu
    monkeypatch.setattr(stacklens.cluster, "CONNECT_TIMEOUT_S", 2)
    ingest(Store(tmp_path / "s", create=True), [need_data("tracecompass", "synctraces", "scp_src")])
    with pytest.raises(StacklensError) as e:
        show_cpu(str(tmp_path / "s"), None, None, None, "thread", 10, True, f"tcp://127.0.0.1:{_free_port()}")
    assert "cannot connect to the Dask scheduler" in str(e.value) and "\n" not in str(e.value)


def test_object_store_without_its_fsspec_implementation_is_one_line(tmp_path):
    try:
        import s3fs  # noqa: F401
        pytest.skip("s3fs is installed: s3:// is a store location here")
    except ImportError:
        pass
    with pytest.raises(StacklensError, match="pip install s3fs"):
        Store("s3://bucket/store")
