"""Virtualization-layer commands: `migrations` (QEMU live-migration report) and `lab run`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stacklens.views.terminal import console, emit_json, fmt_duration, fmt_ts, print_table


def preemptors_of_host(store_path: str, host: str, attempts: list) -> list[list]:
    """The preemptors of the attempts whose source is `host` (a cluster task: the kernel model
    of that host is built on the worker)."""
    from stacklens.models.migration import migration_preemptors
    from stacklens.store import Store
    store = Store(store_path)
    return [migration_preemptors(store, a) for a in attempts if a.source_host == host]


def show_migrations(store_path: str, json_out: bool, png: Path | None = None, cluster: str | None = None) -> int:
    from stacklens.analyses.migration_report import attempt_summary, dirty_curve_text
    from stacklens.models.migration import migration_attempts
    from stacklens.store import Store
    from stacklens.models.migration import migration_preemptors
    store = Store(store_path)
    con = store.connect()
    attempts = migration_attempts(con)
    # Nova's own view of the live migrations (notifications), shown whatever else is there
    from stacklens.models.live_migration import nova_live_migrations
    nova = nova_live_migrations(con)
    missing = [] if attempts else ["virt (no QEMU migration trace events: migration_bitmap_sync_*, QMP)"]
    if cluster:  # the attempts (across hosts) here, each source host's preemption on a worker
        from stacklens.cluster import per_host
        hosts = sorted({a.source_host for a in attempts})
        found = dict(zip(hosts, per_host(cluster, preemptors_of_host, store_path, hosts, attempts)))
        mine = {h: iter(found[h]) for h in hosts}
        preemptors = {id(a): next(mine[a.source_host]) for a in attempts}
    else:
        preemptors = {id(a): migration_preemptors(store, a) for a in attempts}
    if png is not None:
        from stacklens.views.figures import close, dirty_pages_figure
        close(dirty_pages_figure(attempts, png))
    if json_out:
        emit_json({"migrations": [attempt_summary(a) | {"preemptors": [
            {"tid": p.tid, "name": p.name, "vm": p.vm, "role": p.role, "ms": round(p.ns / 1e6, 3)}
            for p in preemptors[id(a)]]} for a in attempts], "nova_migrations": nova,
            "missing_layers": missing, "png": str(png) if png else None})
        return 0
    if nova:
        print_table(["start", "vm", "source → destination", "outcome", "duration", "host after", "reason"],
                    [(fmt_ts(m["start_ts"]), m["vmname"] or m["instance"], f"{m['source'] or '?'} → {m['destination'] or '?'}",
                      m["outcome"], fmt_duration((m["end_ts"] or m["start_ts"]) - m["start_ts"]), m["host_after"] or "?",
                      (m["reason"] or "")[:120]) for m in nova], title="Live migrations (Nova's steps)")
    if not attempts:
        console.print("no QEMU migration in the store: the virtualization layer is missing "
                      "(QEMU trace events migration_bitmap_sync_* and QMP records are needed for stages, "
                      "rounds and downtime)" + ("; Nova's view above" if nova else ""))
        return 0
    for a in attempts:
        s = attempt_summary(a)
        colour = {"converged": "green", "not converging": "red"}.get(a.verdict, "yellow")
        console.print(f"[bold]{a.vm}[/] ({a.instance or 'uuid unknown'}) {a.source_host} → {a.dest_host or '?'}"
                      f"  {fmt_ts(a.start)}  [{colour}]{a.verdict}[/] — {a.reason}")
        print_table(
            ["figure", "stacklens (trace)", "QEMU (QMP)"],
            [["total time", fmt_duration(a.total_ns), _ms(s["qmp_total_ms"])],
             ["setup", fmt_duration(a.setup_ns), _ms(a.qmp.get("setup-time-ms"))],
             ["precopy (first pass)", fmt_duration(a.precopy_ns), ""],
             ["bitmap syncs", a.syncs, s["qmp_dirty_sync_count"]],
             ["downtime (source: stop → sent)", fmt_duration(a.source_downtime_ns), _ms(s["qmp_downtime_ms"])],
             ["  vCPU pause (in the above)", fmt_duration(a.vcpu_pause_ns), ""],
             ["  hand-over (source done → running on dest)", fmt_duration(a.handover_ns), ""],
             ["downtime (guest-visible)", fmt_duration(a.downtime_ns), ""],
             ["dirty rate (pages/s)", s["dirty_rate_pages_s"], s["qmp_dirty_pages_rate"]],
             ["transfer rate (pages/s)", "", s["transfer_rate_pages_s"]],
             ["transferred", "", _bytes(s["transferred_bytes"])],
             ["throttle events", a.throttle_events, ""]],
            right=["stacklens (trace)", "QEMU (QMP)"])
        if a.rounds:
            print_table(["round", "start", "duration", "dirty pages"],
                        [["precopy" if r.index == 0 else r.index, fmt_ts(r.start), fmt_duration(r.end - r.start),
                          r.dirty_pages] for r in a.rounds], right=["duration", "dirty pages"])
            console.print("dirty pages per round:")
            for line in dirty_curve_text(a):
                console.print(line, highlight=False)
        if a.stop_copy_start is not None:
            console.print(f"stop&copy: {fmt_ts(a.stop_copy_start)} → {fmt_ts(a.stop_copy_end)}")
        if preemptors[id(a)]:
            console.print(f"who took the CPU from {a.vm}'s threads on {a.source_host} during the migration:")
            print_table(["thread", "tid", "VM", "role", "ran while they waited"],
                        [[p.name, p.tid, p.vm or "-", p.role or "-", fmt_duration(p.ns)] for p in preemptors[id(a)]],
                        right=["ran while they waited"])
        if a.nova_steps:
            print_table(["nova step", "host", "start", "duration"],
                        [[st.name, st.host, fmt_ts(st.start),
                          fmt_duration(st.end - st.start) if st.start is not None and st.end is not None else "-"]
                         for st in a.nova_steps], right=["duration"])
            console.print(f"request: {a.request_id}")
        console.print()
    if png is not None:
        console.print(f"dirty-pages plot: {png}")
    return 0


def _ms(v: float | int | None) -> str:
    return "" if v is None else f"{v} ms"


def _bytes(v: int | None) -> str:
    return "" if v is None else f"{v / 2**20:.1f} MiB"


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE, ClusterOpt, JsonOpt

    @app.command()
    def migrations(store: str = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory."),
                   png: Optional[Path] = typer.Option(None, help="Also save the dirty-pages plot as PNG."),
                   cluster: Optional[str] = ClusterOpt, json_out: bool = JsonOpt) -> None:
        """QEMU live migrations: stages, rounds, downtime, verdict (thesis Algorithm 1)."""
        raise typer.Exit(show_migrations(store, json_out, png, cluster))

    lab = typer.Typer(no_args_is_help=True, help="The real local migration lab (two QEMU processes).")
    app.add_typer(lab, name="lab")

    @lab.command("run")
    def lab_run(scenario: str = typer.Option("normal", help="normal | stressed | interference | network | openstack"),
                out: Path = typer.Option(..., help="Bundle directory to write (replaced if it is a lab bundle)."),
                broker: str = typer.Option("auto", help="Control plane: an amqp:// URL of a RabbitMQ on "
                                           "loopback, 'auto' (127.0.0.1:5672 if it answers) or 'none' (log driver)."),
                json_out: bool = JsonOpt) -> None:
        """Run a migration scenario for real and write a trace bundle (`stacklens ingest` reads it)."""
        import dataclasses
        from stacklens.lab.runner import run_scenario
        say = None if json_out else console.print
        if scenario == "network":  # the Open vSwitch lab (issue 6), not a migration
            from stacklens.lab.network import run_network
            result = run_network(out, progress=say)
        elif scenario == "openstack":  # real Nova 34 in its own virtualenv (issue 14)
            from stacklens.lab.openstack import run_openstack
            info = run_openstack(out, broker=None if broker == "none" else broker, progress=say)
            if json_out:
                emit_json(info)
            else:
                console.print(f"transport: {info['transport']} ({info['control_plane']})")
                for note in info["notes"]:
                    console.print(f"note: {note}")
            raise typer.Exit(0)
        else:
            result = run_scenario(scenario, out, progress=say, broker=None if broker == "none" else broker)
        if json_out:
            emit_json(dataclasses.asdict(result))
        elif hasattr(result, "control_plane"):
            console.print(f"control plane: {result.control_plane}; kernel trace: {result.kernel_trace or 'none'}")
            for note in result.notes:
                console.print(f"note: {note}")
        raise typer.Exit(0)
