"""Application-layer commands: `report`, `vm`, `request`, `tasks` (each with `--json`)."""

from __future__ import annotations

from typing import Any

import typer

from stacklens.errors import StacklensError
from stacklens.views.terminal import console, emit_json, fmt_duration, fmt_ts, print_table


def _store(path: str):
    from stacklens.store import Store
    return Store(path)


def _rows(table) -> list[dict[str, Any]]:
    return [{k: (float(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, (int, float)) else v)
             for k, v in r.items()} for r in table.to_pylist()]


def show_tasks(store_path: str, json_out: bool, task: str | None = None) -> None:
    from stacklens.models.service_tasks import task_statistics, unmatched_task_records
    con = _store(store_path).connect()
    stats = _rows(task_statistics(con))
    unmatched = unmatched_task_records(con)
    if task:
        stats = [s for s in stats if task in s["task"]]
        unmatched = [u for u in unmatched if task in u["task"]]
    if json_out:
        emit_json({"tasks": stats, "unmatched": unmatched})
        return
    print_table(["task", "count", "errors", "open", "min", "median", "mean", "max", "total"],
                [(s["task"], s["count"], s["errors"], s["count"] - s["closed"], fmt_duration(s["min_ns"]),
                  fmt_duration(s["median_ns"]), fmt_duration(s["mean_ns"]), fmt_duration(s["max_ns"]),
                  fmt_duration(s["total_ns"])) for s in stats],
                title="Service tasks (X.start → X.end/.error) per type",
                right=["count", "errors", "open", "min", "median", "mean", "max", "total"])
    if unmatched:
        print_table(["kind", "task", "worker", "host", "count", "first"],
                    [(u["kind"], u["task"], u["worker"], u["host"], u["count"], fmt_ts(u["first_ts"]))
                     for u in unmatched], title="Unmatched task records", right=["count"])


def show_vm(store_path: str, vm: str, json_out: bool) -> None:
    from stacklens.models.live_migration import live_migration_steps
    from stacklens.models.service_tasks import service_tasks
    from stacklens.models.vm_states import vm_state_timeline
    from stacklens.models.nova_logs import instance_lifecycle, instance_timings
    from stacklens.models.live_migration import failed_live_migrations
    from stacklens.models.vm_states import vm_candidates
    con = _store(store_path).connect()
    query = vm
    found = vm_candidates(con, vm)
    if len(found) > 1:
        raise StacklensError(f"{vm!r} is ambiguous: it names {len(found)} instances: "
                             + ", ".join(f"{c['instance']} ({c['vmname'] or '?'})" for c in found)
                             + "; give the uuid")
    if found:
        vm = found[0]["instance"]
    timeline = [r for r in vm_state_timeline(con).to_pylist()
                if vm in (r["vm"], r["instance"], r["vmname"])]
    # Nova's compute log knows instances by uuid only
    lifecycle = [r for r in instance_lifecycle(con).to_pylist() if r["instance"] == vm]
    timings = [r for r in instance_timings(con).to_pylist() if r["instance"] == vm]
    if not (timeline or lifecycle or timings):
        raise StacklensError(f"no VM named or with uuid {vm!r} in the store")
    keys = ({r["instance"] for r in timeline if r["instance"]} | {r["vmname"] for r in timeline if r["vmname"]}
            | {vm})
    tasks = [t for t in service_tasks(con).to_pylist() if t["instance"] in keys or t["vmname"] in keys]
    requests = sorted({t["request_id"] for t in tasks if t["request_id"]} |
                      {r["request_id"] for r in timeline + lifecycle + timings if r["request_id"]})
    migration = [m for m in live_migration_steps(con).to_pylist() if m["instance"] in keys]
    migration += [m for m in failed_live_migrations(con) if m["instance"] in keys]
    # where the VM is: its last state record, but not the source's live_migration_post.end,
    # whose payload still names the source after the VM moved
    placed = [r for r in vm_state_timeline(con, collapse=False).to_pylist()
              if r["instance"] in keys and r["node"] and r["node"] != "None"
              and r["event_type"] not in ("instance.live_migration_post.end",
                                          "compute.instance.live_migration._post.end")]
    final_host = placed[-1]["node"] if placed else None
    if json_out:
        emit_json({"vm": query, "instance": vm if found else None, "final_host": final_host, "states": timeline, "tasks": tasks, "requests": requests,
                   "live_migration": migration, "lifecycle": lifecycle, "timings": timings})
        return
    if lifecycle:
        print_table(["time", "lifecycle event", "process", "request"],
                    [(fmt_ts(r["ts"]), r["event"], r["procname"], r["request_id"]) for r in lifecycle],
                    title=f"VM {vm}: hypervisor lifecycle events (nova-compute log)")
    if timings:
        print_table(["time", "step", "seconds", "request"],
                    [(fmt_ts(r["ts"]), r["phrase"], f"{r['seconds']:.2f}", r["request_id"]) for r in timings],
                    title="Nova's own step timings (\"Took N seconds to …\")", right=["seconds"])
    if timeline:
        print_table(["time", "state", "task state", "host", "event", "source"],
                    [(fmt_ts(r["ts"]), r["vm_state"], r["task_state"], r["node"], r["event_type"], r["source"])
                     for r in timeline], title=f"VM {vm}: state timeline")
    if tasks:
        print_table(["start", "task", "worker", "duration", "outcome", "request"],
                    [(fmt_ts(t["start_ts"]), t["task"], t["worker"], fmt_duration(t["duration_ns"]),
                      t["outcome"], t["request_id"]) for t in tasks], title="Tasks", right=["duration"])
    if migration:
        print_table(["step", "where", "host", "start", "duration", "outcome"],
                    [(m["step"], m["where"], m["host"], fmt_ts(m["start_ts"]), fmt_duration(m["duration_ns"]),
                      m["outcome"] + (f": {m['fault'][:120]} (stayed on {m['stayed_on']})" if m.get("fault") else ""))
                     for m in migration], title="Live migration (Nova steps)")
    if final_host:
        console.print(f"host: {final_host}")
    console.print(f"requests: {', '.join(requests) or '-'}")


def show_request(store_path: str, request_id: str, json_out: bool) -> None:
    from stacklens.models.request_flow import request_flow
    flow = request_flow(_store(store_path).connect(), request_id)
    if not (flow.spans or flow.records or flow.hops):
        raise StacklensError(f"no event of request {request_id!r} in the store")
    if json_out:
        emit_json(flow.to_dict())
        return
    from rich.tree import Tree
    t0 = flow.start_ts or 0
    root = Tree(f"[bold]{request_id}[/] {fmt_ts(flow.start_ts)} → {fmt_ts(flow.end_ts)}"
                f" ({fmt_duration((flow.end_ts or 0) - t0) if flow.start_ts else '-'})")
    if flow.path:
        root.add("path: " + " → ".join(f"{p['service']}@{p['host']} (+{fmt_duration(p['start_ts'] - t0)})"
                                        for p in flow.path))
    if flow.hops:
        bus = root.add("RPC hops (bus)")
        for h in flow.hops:
            reply = f" → reply×{h['replies']}" if h["kind"] == "call" else ""
            bus.add(f"{h['caller']} → {h['topic']}: {h['kind']} {h['method']}{reply}"
                    + (f" [red]failure[/]" if h["failure"] else ""))
    by_worker: dict[str, Any] = {}
    for s in flow.spans:
        node = by_worker.get(s["worker"]) or root.add(f"{s['worker']} @ {s['host']}")
        by_worker[s["worker"]] = node
        node.add(f"+{fmt_duration(s['start_ts'] - t0)} {s['task']} {fmt_duration(s['duration_ns'])} {s['outcome']}")
    for w in flow.waits:
        root.add(f"wait {w['from']} → {w['to']}: {fmt_duration(w['wait_ns'])}")
    if flow.critical_path:
        total = flow.critical_path[-1]["end_ts"] - flow.critical_path[0]["start_ts"]
        cp = root.add(f"critical path ({fmt_duration(total)})")
        for seg in flow.critical_path:
            share = f"{100 * seg['duration_ns'] / total:.0f} %" if total else "-"
            what = seg["task"] + f" on {seg['worker']}" if seg["kind"] == "span" else \
                f"[yellow]wait[/] {seg['from']} → {seg['to']}"
            cp.add(f"{what}: {fmt_duration(seg['duration_ns'])} ({share})")
    if flow.records:
        logs = root.add(f"log records ({len(flow.records)})")
        for r in flow.records[:200]:
            logs.add(f"+{fmt_duration(r['ts'] - t0)} {r['procname'] or r['host']} {r['level'] or ''} "
                     f"{r['name']}: {(r['message'] or '')[:160]}")
    for p in flow.problems:
        root.add(f"[red]{p.get('level')}[/] {p.get('message')}")
    console.print(root)


def show_report(store_path: str, json_out: bool) -> None:
    from stacklens.models.live_migration import live_migration_steps
    from stacklens.models.vm_states import resources_per_host, vm_state_timeline
    store = _store(store_path)
    con = store.connect()
    layers = [r[0] for r in con.execute("SELECT DISTINCT layer FROM events ORDER BY 1").fetchall()]
    out: dict[str, Any] = {"layers": layers}
    if "app" in layers:
        from stacklens.models.service_tasks import task_statistics
        stats = _rows(task_statistics(con))
        states = vm_state_timeline(con).to_pylist()
        vms = sorted({r["vm"] for r in states})
        last = {r["vm"]: r for r in states}
        res = resources_per_host(con).to_pylist()
        mig = live_migration_steps(con).to_pylist()
        out["app"] = {"tasks": stats, "vms": [last[v] for v in vms], "resources": res,
                      "live_migrations": sorted({m["instance"] for m in mig if m["instance"]})}
        from stacklens.models.nova_logs import api_statistics, instance_lifecycle, instance_timings
        out["app"]["api"] = _rows(api_statistics(con))
        out["app"]["instances"] = _instance_summary(instance_lifecycle(con).to_pylist(),
                                                    instance_timings(con).to_pylist())
        from stacklens.models.cinder import multi_attached_volumes, volume_attachments
        out["app"]["volume_attachments"] = volume_attachments(con).to_pylist()
        out["app"]["multi_attached_volumes"] = multi_attached_volumes(con).to_pylist()
        from stacklens.models.neutron import neutron_tasks
        out["app"]["neutron"] = _rows(neutron_tasks(con))
        from stacklens.models.scheduling import scheduling_decisions
        out["app"]["scheduling"] = [d.to_dict() for d in scheduling_decisions(con)]
    if json_out:
        emit_json(out)
        return
    console.print(f"layers: {', '.join(layers) or 'none'}")
    if "app" in out:
        a = out["app"]
        if a["tasks"]:
            print_table(["task", "count", "errors", "median", "max"],
                        [(s["task"], s["count"], s["errors"], fmt_duration(s["median_ns"]), fmt_duration(s["max_ns"]))
                         for s in a["tasks"][:30]], title="Application layer: service tasks",
                        right=["count", "errors", "median", "max"])
        if a["vms"]:
            print_table(["vm", "name", "last state", "host", "at"],
                        [(v["vm"], v["vmname"], v["vm_state"], v["node"], fmt_ts(v["ts"])) for v in a["vms"][:50]],
                        title=f"VMs ({len(a['vms'])})")
        if a["live_migrations"]:
            console.print(f"live migrations (Nova steps) for {len(a['live_migrations'])} instance(s)")
        if a["api"]:
            print_table(["method", "resource", "count", "errors", "median", "p95", "max"],
                        [(r["method"], r["resource"][:60], r["count"], r["errors"], _secs(r["median_s"]),
                          _secs(r["p95_s"]), _secs(r["max_s"])) for r in a["api"][:30]],
                        title="API requests (WSGI access log: time:)",
                        right=["count", "errors", "median", "p95", "max"])
        for f in a["multi_attached_volumes"]:
            console.print(f"[red]finding[/]: volume {f['volume']} attached to {f['instance']} ({f['host']}) and "
                          f"{f['other_instance']} ({f['other_host']}) at once since {fmt_ts(f['since_ts'])}")
        if a["neutron"]:
            print_table(["agent", "operation", "object", "start", "duration", "outcome", "request"],
                        [(t["agent"], t["operation"], t["resource"], fmt_ts(t["start_ts"]),
                          fmt_duration(t["duration_ns"]), t["outcome"], t["request_id"]) for t in a["neutron"][:50]],
                        title="Neutron agent tasks", right=["duration"])
        if a["scheduling"]:
            print_table(["request", "outcome", "host", "why"],
                        [(d["request_id"], d["outcome"], d["selected"] or "-", d["explanation"])
                         for d in a["scheduling"][:30]], title="Scheduling decisions")
        if a["instances"]:
            print_table(["instance", "lifecycle events", "spawn s", "build s", "last event"],
                        [(i["instance"], " ".join(i["lifecycle"]), _secs(i["spawn_s"], raw=True),
                          _secs(i["build_s"], raw=True), fmt_ts(i["last_ts"])) for i in a["instances"][:50]],
                        title=f"Instances in Nova's compute log ({len(a['instances'])})",
                        right=["spawn s", "build s"])


def _secs(v: float | None, raw: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if raw else fmt_duration(int(v * 1e9))


def _instance_summary(lifecycle: list[dict], timings: list[dict]) -> list[dict[str, Any]]:
    """Per instance: its lifecycle events in order and Nova's spawn/build figures."""
    out: dict[str, dict[str, Any]] = {}

    def entry(uuid: str) -> dict[str, Any]:
        return out.setdefault(uuid, {"instance": uuid, "lifecycle": [], "spawn_s": None, "build_s": None,
                                     "timings": [], "last_ts": None})
    for r in lifecycle:
        e = entry(r["instance"])
        e["lifecycle"].append(r["event"])
        e["last_ts"] = max(e["last_ts"] or r["ts"], r["ts"])
    for r in timings:
        e = entry(r["instance"])
        e["timings"].append({"step": r["step"], "seconds": r["seconds"], "ts": r["ts"]})
        if r["step"] in ("spawn", "build"):
            e[f"{r['step']}_s"] = r["seconds"]
        e["last_ts"] = max(e["last_ts"] or r["ts"], r["ts"])
    return sorted(out.values(), key=lambda e: e["last_ts"] or 0)


def show_scheduling(store_path: str, json_out: bool, request_id: str | None = None) -> None:
    from stacklens.models.scheduling import scheduling_decisions
    decisions = scheduling_decisions(_store(store_path).connect())
    if request_id:
        decisions = [d for d in decisions if d.request_id == request_id]
    if json_out:
        emit_json({"decisions": [d.to_dict() for d in decisions]})
        return
    if not decisions:
        console.print("no nova-scheduler filter/weigher records in the store (they are logged at debug level)")
        return
    print_table(["time", "request", "outcome", "host", "select_destinations", "why"],
                [(fmt_ts(d.ts), d.request_id, d.outcome, d.selected or "-",
                  fmt_duration(d.select_destinations_ns), d.explanation()) for d in decisions],
                title="Scheduling decisions (nova-scheduler debug log)")


def register(app: typer.Typer) -> None:
    from stacklens.cli import JsonOpt, StoreOpt

    @app.command()
    def report(store: str = StoreOpt, json_out: bool = JsonOpt) -> None:
        """Summary per layer present in the store."""
        show_report(store, json_out)

    @app.command()
    def vm(name: str = typer.Argument(..., help="VM name or instance uuid."),
           store: str = StoreOpt, json_out: bool = JsonOpt) -> None:
        """A VM's state timeline, tasks, requests and live-migration steps."""
        show_vm(store, name, json_out)

    @app.command()
    def request(request_id: str = typer.Argument(..., help="Request id or global request id."),
                store: str = StoreOpt, json_out: bool = JsonOpt) -> None:
        """The flow of one request as a tree: RPC hops, spans per service, waits, log records."""
        show_request(store, request_id, json_out)

    @app.command()
    def tasks(store: str = StoreOpt, task: str = typer.Option(None, help="Only task types containing this."),
              json_out: bool = JsonOpt) -> None:
        """Duration statistics per service task type."""
        show_tasks(store, json_out, task)

    @app.command()
    def scheduling(store: str = StoreOpt, request: str = typer.Option(None, help="Only this request id."),
                   json_out: bool = JsonOpt) -> None:
        """Why nova-scheduler chose a host (filters, weights) or found none (NoValidHost)."""
        show_scheduling(store, json_out, request)
