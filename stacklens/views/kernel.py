"""Kernel-layer commands: cpu, threads, preemption, syscalls, io (each with --json)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import pyarrow as pa
import typer

from stacklens.views.terminal import console, emit_json, fmt_duration, fmt_ts, print_table


def _hosts(store_path: str, host: str | None, per_host: str | None = None, cluster: str | None = None) -> list[str]:
    """The hosts to analyse: `host`, or every host with kernel events. `per_host` names an
    option that only means something on one host (a tid): with several hosts and no --host,
    that is ambiguous and refused in one line naming the hosts."""
    from stacklens.errors import StacklensError
    from stacklens.models.kernel import kernel_hosts
    from stacklens.store import Store
    store = Store(store_path)
    if cluster:  # from the partitions' names: the client reads no event
        from stacklens.cluster import partition_hosts
        hosts = partition_hosts(store, "kernel")
    else:
        hosts = kernel_hosts(store)
    if host is not None:
        if host not in hosts:
            raise StacklensError(f"host {host!r} has no kernel events (hosts with kernel events: {', '.join(hosts) or 'none'})")
        hosts = [host]
    if not hosts:
        raise StacklensError(f"{store_path}: no kernel events in the store (ingest an LTTng kernel trace or ftrace text)")
    if per_host and len(hosts) > 1:
        raise StacklensError(f"{per_host} is ambiguous: {store_path} holds kernel events of {len(hosts)} hosts "
                             f"({', '.join(hosts)}); choose one with --host")
    return hosts


def _one_at_a_time(store, hosts: list[str]):
    """Each host's model in turn, its DuckDB connection (and temp tables: switches, running
    intervals, states) closed before the next host's is built: memory is one host's, whatever
    the number of hosts. Cyclic GC is paused while a model is built and used."""
    from stacklens.gcpause import paused_gc
    from stacklens.models.kernel import KernelModel
    for h in hosts:
        m = KernelModel(store, h)
        try:
            with paused_gc():
                yield m
        finally:
            m.con.close()


@contextmanager
def _model(store_path: str, host: str):
    """One host's model (a per-host task, in-process or on a cluster worker), closed after."""
    from stacklens.cluster import open_store
    yield from _one_at_a_time(open_store(store_path), [host])


@contextmanager
def _stream(store_path: str, host: str):
    """One host's streamed aggregates (models/kernel_stream.py: memory follows the host's
    threads and CPUs, not its events), closed after; cyclic GC paused meanwhile."""
    from stacklens.gcpause import paused_gc
    from stacklens.models.kernel_stream import KernelStream
    from stacklens.cluster import open_store
    s = KernelStream(open_store(store_path), host)
    try:
        with paused_gc():
            yield s
    finally:
        s.close()


def _per_host(cluster: str | None, fn, store_path: str, hosts: list[str], *args) -> list[dict]:
    """fn(store_path, host, *args) per host: in-process, or one task per host on the cluster."""
    from stacklens.cluster import per_host
    return per_host(cluster, fn, store_path, hosts, *args)


def _rows(table: pa.Table, limit: int) -> list[dict]:
    rows = table.to_pylist()
    return rows if limit <= 0 else rows[:limit]


def cpu_host(store: str, host: str, start: int | None, end: int | None, by: str, limit: int) -> dict:
    """`cpu` of one host (a cluster task)."""
    with _stream(store, host) as m:
        lo, hi = m._range(start, end)
        agg = m.aggregates(lo, hi)
        per_cpu = agg.cpu_by_cpu()
        per = agg.cpu_by_process() if by == "process" else agg.cpu_by_thread()
        return {"host": m.host, "start": lo, "end": hi, "cpus": per_cpu.to_pylist(),
                by + "es" if by == "process" else "threads": _rows(per, limit),
                "missed_switches": _missed_switches(m.missed_switches(), lo, hi)}


def _missed_switches(missed: pa.Table, lo: int, hi: int) -> list[dict]:
    """Per (cpu, thread that left unrecorded): how many switches the trace lacks in [lo, hi) and
    the time they moved from that thread to the one found running (`moved_ns`)."""
    import pyarrow.compute as pc
    inside = missed.filter(pc.and_(pc.greater(missed["at"], lo), pc.less(missed["ts"], hi)))
    moved = pc.subtract(pc.min_element_wise(inside["at"], hi), pc.max_element_wise(inside["ts"], lo))
    grouped = inside.append_column("moved_ns", moved).group_by(["cpu", "prev_tid"], use_threads=False).aggregate(
        [("prev_comm", "first"), ("ts", "count"), ("moved_ns", "sum")])
    return [{"cpu": r["cpu"], "tid": r["prev_tid"], "name": r["prev_comm_first"], "count": r["ts_count"],
             "moved_ns": r["moved_ns_sum"]}
            for r in sorted(grouped.to_pylist(), key=lambda r: (r["cpu"], r["prev_tid"]))]


def show_cpu(store: str, host: str | None, start: int | None, end: int | None, by: str, limit: int,
             json_out: bool, cluster: str | None = None) -> None:
    out = _per_host(cluster, cpu_host, store, _hosts(store, host, cluster=cluster), start, end, by, limit)
    if json_out:
        emit_json({"hosts": out})
        return
    for h in out:
        console.print(f"[bold]{h['host']}[/] {fmt_ts(h['start'])} → {fmt_ts(h['end'])} ({fmt_duration(h['end'] - h['start'])})")
        print_table(["cpu", "busy", "idle", "usage"],
                    [[c["cpu"], fmt_duration(c["busy_ns"]), fmt_duration(c["idle_ns"]),
                      f"{100 * (c['usage'] or 0):.1f} %"] for c in h["cpus"]], right=["busy", "idle", "usage"])
        if by == "process":
            print_table(["pid", "process", "threads", "cpu time", "wait for cpu"],
                        [[r["pid"], r["process"], r["threads"], fmt_duration(r["cpu_ns"]), fmt_duration(r["wait_cpu_ns"])]
                         for r in h["processes"]], right=["threads", "cpu time", "wait for cpu"])
        else:
            print_table(["tid", "thread", "pid", "process", "cpu time", "wait for cpu"],
                        [[r["tid"], r["name"], r["pid"], r["process"], fmt_duration(r["cpu_ns"]),
                          fmt_duration(r["wait_cpu_ns"])] for r in h["threads"]], right=["cpu time", "wait for cpu"])
        for g in h.get("missed_switches", []):
            n = g["count"]
            console.print(f"[yellow]CPU {g['cpu']}: {n} switch-out{'s' if n > 1 else ''} of {g['name'] or '?'} "
                          f"({g['tid']}) not in the trace: the {fmt_duration(g['moved_ns'])} after its last event "
                          f"{'were' if n > 1 else 'was'} counted to the thread found running at the next switch[/]")


def threads_host(store: str, host: str, tid: int | None, proc: str | None, limit: int) -> dict:
    """`threads` of one host (a cluster task)."""
    with _stream(store, host) as m:
        tids = [tid] if tid is not None else (m.thread_tids(proc) if proc else None)
        agg = m.aggregates(keep=tids)  # state intervals listed for the chosen threads only
        threads = m.threads()
        if tids is not None:
            import pyarrow.compute as pc
            threads = threads.filter(pc.is_in(threads["tid"], pa.array(tids, pa.int64())))
        by_tid = agg.time_in_state()
        rows = [{**t, "time_in_state_ns": {s: ns for s, ns in sorted(by_tid.get(t["tid"], {}).items())}}
                for t in threads.to_pylist()]
        rows.sort(key=lambda t: (-(t["time_in_state_ns"].get("running") or 0), t["tid"]))
        return {"host": m.host, "threads": _rows(pa.Table.from_pylist(rows), limit) if rows else [],
                "states": agg.thread_states().to_pylist() if tids is not None else None,
                "names": m.name_changes(tids).to_pylist() if tids is not None else None}


def show_threads(store: str, host: str | None, tid: int | None, proc: str | None, limit: int, json_out: bool,
                 cluster: str | None = None) -> None:
    hosts = _hosts(store, host, per_host=None if tid is None else f"--tid {tid}", cluster=cluster)
    out = _per_host(cluster, threads_host, store, hosts, tid, proc, limit)
    if proc and not any(h["threads"] for h in out):
        from stacklens.errors import StacklensError
        raise StacklensError(f"no thread or process named {proc!r} on "
                             f"{'host' if len(out) == 1 else 'hosts'} {', '.join(h['host'] for h in out)}")
    if json_out:
        emit_json({"hosts": out})
        return
    for h in out:
        if not h["threads"]:
            console.print(f"[bold]{h['host']}[/]: no thread" + (f" or process named {proc!r}" if proc else "s"))
            continue
        console.print(f"[bold]{h['host']}[/]: {len(h['threads'])} thread(s) shown")
        cols = ["running", "runnable", "blocked", "io_wait"]
        print_table(["tid", "pid", "thread", "process"] + cols,
                    [[t["tid"], t["pid"], t["name"], t["process"]] +
                     [fmt_duration(t["time_in_state_ns"].get(c)) for c in cols] for t in h["threads"]], right=cols)
        if h["states"] is not None:
            print_table(["tid", "state", "start", "duration", "cpu"],
                        [[s["tid"], s["state"], fmt_ts(s["start"]), fmt_duration(s["end"] - s["start"]), s["cpu"]]
                         for s in h["states"][: limit if limit > 0 else None]], right=["duration"])


def preemption_host(store: str, host: str, proc: str, start: int | None, end: int | None, limit: int) -> dict:
    """`preemption` of one host (a cluster task)."""
    with _stream(store, host) as m:
        tids = m.thread_tids(proc)
        if not tids:
            return {"host": m.host, "threads": [], "waited_ns": 0, "preemptors": []}
        agg = m.aggregates(start, end, victims=tids)
        ranking = agg.preemption()
        per_thread = agg.cpu_by_thread().to_pylist()
        mine = [t for t in per_thread if t["tid"] in set(tids)]
        return {"host": m.host, "threads": mine, "waited_ns": sum(t["wait_cpu_ns"] for t in mine),
                "preemptors": _rows(ranking, limit)}


def show_preemption(store: str, host: str | None, proc: str, start: int | None, end: int | None, limit: int,
                    json_out: bool, cluster: str | None = None) -> None:
    out = _per_host(cluster, preemption_host, store, _hosts(store, host, cluster=cluster), proc, start, end, limit)
    if not any(h["threads"] for h in out):
        from stacklens.errors import StacklensError
        raise StacklensError(f"no thread or process named {proc!r} on "
                             f"{'host' if len(out) == 1 else 'hosts'} {', '.join(h['host'] for h in out)}")
    if json_out:
        emit_json({"proc": proc, "hosts": out})
        return
    for h in out:
        if not h["threads"]:
            console.print(f"[bold]{h['host']}[/]: no thread or process named {proc!r}")
            continue
        console.print(f"[bold]{h['host']}[/]: {len(h['threads'])} thread(s) of {proc!r} waited "
                      f"{fmt_duration(h['waited_ns'])} for a CPU; who ran meanwhile:")
        print_table(["tid", "thread", "process", "ran while they waited", "threads delayed"],
                    [[p["preemptor_tid"], p["preemptor_name"], p["preemptor_process"], fmt_duration(p["ns"]),
                      p["victims"]] for p in h["preemptors"]], right=["ran while they waited", "threads delayed"])


def syscalls_host(store: str, host: str, proc: str | None, limit: int) -> dict:
    """`syscalls` of one host (a cluster task)."""
    with _model(store, host) as m:
        segs = m.syscalls()
        stats = m.con.sql("""
            SELECT syscall, count(*) AS count, CAST(sum(duration) AS BIGINT) AS total_ns,
                   CAST(min(duration) AS BIGINT) AS min_ns, CAST(avg(duration) AS BIGINT) AS mean_ns,
                   CAST(quantile_disc(duration, 0.99) AS BIGINT) AS p99_ns, CAST(max(duration) AS BIGINT) AS max_ns
            FROM segs WHERE $1 IS NULL OR process ILIKE $1 OR thread ILIKE $1
            GROUP BY syscall ORDER BY total_ns DESC""", params=[proc]).to_arrow_table()
        per_proc = m.con.sql("""
            SELECT pid, any_value(process) AS process, count(*) AS count, CAST(sum(duration) AS BIGINT) AS total_ns,
                   CAST(max(duration) AS BIGINT) AS max_ns
            FROM segs WHERE $1 IS NULL OR process ILIKE $1 OR thread ILIKE $1
            GROUP BY pid ORDER BY total_ns DESC""", params=[proc]).to_arrow_table()
        return {"host": m.host, "segments": segs.num_rows, "by_syscall": _rows(stats, limit),
                "by_process": _rows(per_proc, limit)}


def show_syscalls(store: str, host: str | None, proc: str | None, limit: int, json_out: bool,
                  cluster: str | None = None) -> None:
    out = _per_host(cluster, syscalls_host, store, _hosts(store, host, cluster=cluster), proc, limit)
    if json_out:
        emit_json({"hosts": out})
        return
    for h in out:
        console.print(f"[bold]{h['host']}[/]: {h['segments']} syscall latency segments")
        print_table(["syscall", "count", "total", "min", "mean", "p99", "max"],
                    [[r["syscall"], r["count"], fmt_duration(r["total_ns"]), fmt_duration(r["min_ns"]),
                      fmt_duration(r["mean_ns"]), fmt_duration(r["p99_ns"]), fmt_duration(r["max_ns"])]
                     for r in h["by_syscall"]], right=["count", "total", "min", "mean", "p99", "max"])
        print_table(["pid", "process", "count", "total", "max"],
                    [[r["pid"], r["process"], r["count"], fmt_duration(r["total_ns"]), fmt_duration(r["max_ns"])]
                     for r in h["by_process"]], right=["count", "total", "max"])


OPS = {"R": "read", "W": "write", "D": "discard", "F": "flush", "N": "other"}


def io_host(store: str, host: str, limit: int) -> dict:
    """`io` of one host (a cluster task)."""
    with _model(store, host) as m:
        reqs = m.disk_requests()
        m.con.register("_reqs", reqs)
        m._need("threads")
        by_dev = m.con.sql("""
            SELECT dev, op, count(*) AS requests, count(issue) AS issued, CAST(sum(nr_sector) AS BIGINT) AS sectors,
                   CAST(avg(service_ns) AS BIGINT) AS mean_service_ns, CAST(max(service_ns) AS BIGINT) AS max_service_ns,
                   CAST(avg(queue_ns) AS BIGINT) AS mean_queue_ns, count(*) FILTER (WHERE error <> 0) AS errors
            FROM _reqs GROUP BY dev, op ORDER BY dev, requests DESC""").to_arrow_table()
        by_proc = m.con.sql("""
            SELECT coalesce(t.pid, r.tid) AS pid, any_value(t.process) AS process, count(*) AS requests,
                   CAST(sum(nr_sector) AS BIGINT) AS sectors,
                   CAST(avg(service_ns) AS BIGINT) AS mean_service_ns, CAST(max(service_ns) AS BIGINT) AS max_service_ns
            FROM _reqs r LEFT JOIN threads t ON t.tid = r.tid
            WHERE r.tid IS NOT NULL GROUP BY ALL ORDER BY requests DESC, pid""").to_arrow_table()
        return {"host": m.host, "requests": reqs.num_rows,
                "unattributed": sum(1 for t in reqs.column("tid").to_pylist() if t is None),
                "by_device": by_dev.to_pylist(), "by_process": _rows(by_proc, limit)}


def show_io(store: str, host: str | None, limit: int, json_out: bool, cluster: str | None = None) -> None:
    out = _per_host(cluster, io_host, store, _hosts(store, host, cluster=cluster), limit)
    if json_out:
        emit_json({"hosts": out})
        return
    for h in out:
        console.print(f"[bold]{h['host']}[/]: {h['requests']} disk requests completed "
                      f"({h['unattributed']} without a known issuer: issued before the trace, or never issued)")
        if h["requests"]:
            print_table(["device", "op", "requests", "sectors", "mean queue", "mean service", "max service", "errors"],
                        [[r["dev"], OPS.get(r["op"], r["op"]), r["requests"], r["sectors"],
                          fmt_duration(r["mean_queue_ns"]), fmt_duration(r["mean_service_ns"]),
                          fmt_duration(r["max_service_ns"]), r["errors"]] for r in h["by_device"]],
                        right=["requests", "sectors", "mean queue", "mean service", "max service", "errors"])
            print_table(["pid", "process", "requests", "sectors", "mean service", "max service"],
                        [[r["pid"], r["process"], r["requests"], r["sectors"], fmt_duration(r["mean_service_ns"]),
                          fmt_duration(r["max_service_ns"])] for r in h["by_process"]],
                        right=["requests", "sectors", "mean service", "max service"])


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE, ClusterOpt, JsonOpt, parse_time

    StoreOpt = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory.")
    HostOpt = typer.Option(None, help="Only this host (default: every host with kernel events).")
    FromOpt = typer.Option(None, "--from", help="Start: ISO time (UTC) or ns.")
    ToOpt = typer.Option(None, "--to", help="End (exclusive): ISO time or ns.")

    @app.command()
    def cpu(store: str = StoreOpt, host: Optional[str] = HostOpt, from_: Optional[str] = FromOpt,
            to: Optional[str] = ToOpt,
            by: str = typer.Option("thread", help="thread or process."),
            limit: int = typer.Option(30, help="Rows at most (0: all)."), cluster: Optional[str] = ClusterOpt,
            json_out: bool = JsonOpt) -> None:
        """CPU usage per CPU and per thread / process over a time range, with wait-for-CPU time."""
        if by not in ("thread", "process"):
            raise typer.BadParameter("--by is thread or process")
        show_cpu(store, host, parse_time(from_), parse_time(to), by, limit, json_out, cluster)

    @app.command()
    def threads(store: str = StoreOpt, host: Optional[str] = HostOpt,
                tid: Optional[int] = typer.Option(None, help="One thread: also list its state intervals."),
                proc: Optional[str] = typer.Option(None, help="Threads of processes named like this (SQL LIKE)."),
                limit: int = typer.Option(50, help="Rows at most (0: all)."), cluster: Optional[str] = ClusterOpt,
                json_out: bool = JsonOpt) -> None:
        """Threads with their process and time in each state (running, runnable, blocked, io_wait)."""
        show_threads(store, host, tid, proc, limit, json_out, cluster)

    @app.command()
    def preemption(proc: str = typer.Option(..., "--proc", help="Process or thread name (SQL LIKE, e.g. qemu%)."),
                   store: str = StoreOpt, host: Optional[str] = HostOpt, from_: Optional[str] = FromOpt,
                   to: Optional[str] = ToOpt, limit: int = typer.Option(20, help="Rows at most (0: all)."),
                   cluster: Optional[str] = ClusterOpt, json_out: bool = JsonOpt) -> None:
        """Who ran on the CPU while the threads of PROC waited for it, ranked by time."""
        show_preemption(store, host, proc, parse_time(from_), parse_time(to), limit, json_out, cluster)

    @app.command()
    def syscalls(store: str = StoreOpt, host: Optional[str] = HostOpt,
                 proc: Optional[str] = typer.Option(None, help="Only processes/threads named like this."),
                 limit: int = typer.Option(30, help="Rows at most (0: all)."), cluster: Optional[str] = ClusterOpt,
                 json_out: bool = JsonOpt) -> None:
        """Syscall latency per syscall and per process."""
        show_syscalls(store, host, proc, limit, json_out, cluster)

    @app.command()
    def io(store: str = StoreOpt, host: Optional[str] = HostOpt,
           limit: int = typer.Option(30, help="Rows at most (0: all)."), cluster: Optional[str] = ClusterOpt,
           json_out: bool = JsonOpt) -> None:
        """Disk request latency per device and per process (block_rq_insert/issue/complete)."""
        show_io(store, host, limit, json_out, cluster)
