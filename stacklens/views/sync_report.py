"""`stacklens sync`: match packets across hosts, compute and store the clock transforms."""

from __future__ import annotations

from typing import Optional

import typer

from stacklens.views.terminal import console, emit_json, fmt_duration, print_table


def sync_inputs_of_host(store_path: str, host: str) -> tuple:
    """What sync needs of one host, from its partitions only (a cluster task): its send and
    receive events (raw clocks) and its first and last raw timestamps."""
    from stacklens.store import Store
    from stacklens.sync.packets import host_sync_inputs
    return host_sync_inputs(Store(store_path).connect(host=host))


def run_sync(store_path: str, json_out: bool, cluster: str | None = None) -> None:
    from stacklens.store import Store
    from stacklens.sync import sync_store
    store = Store(store_path)
    if cluster:  # per host on the workers; matching and the convex hulls (cross-host) here
        import pyarrow as pa
        from stacklens.cluster import partition_hosts, per_host
        hosts = partition_hosts(store)
        found = per_host(cluster, sync_inputs_of_host, store_path, hosts)
        net = pa.concat_tables([n for n, _ in found]) if found else None
        report = (sync_store(store, net, {h: ts for h, (_, ts) in zip(hosts, found) if ts is not None}) if found
                  else sync_store(store))
    else:
        report = sync_store(store)
    if json_out:
        emit_json(report)
        return
    if not report["hosts"]:
        console.print("no events in the store")
        return
    console.print(f"reference clock: [bold]{report['reference']}[/]")
    print_table(["sent on", "received on", "matched packets"],
                [[p["send_host"], p["recv_host"], p["matches"]] for p in report["packets"]], right=["matched packets"])
    if report["pairs"]:
        print_table(["reference", "other", "hull quality", "matches", "hull points (up/low)", "slope accuracy"],
                    [[p["reference"], p["other"], p["quality"], f"{p['matches']} ({p['accurate_matches']} accurate)",
                      f"{p['upper_hull_points']}/{p['lower_hull_points']}", f"{p['slope_accuracy']:.3g}"]
                     for p in report["pairs"]], title="host pairs (Trace Compass's fully incremental convex hull)",
                    right=["matches", "hull points (up/low)", "slope accuracy"])
    print_table(["host", "quality", "offset at first event", "drift", "error (packets)", "error (trace ends)",
                 "matches", "note"],
                [[h["host"], h["quality"]] + (["-", "-", "-", "-"] if h["quality"] in ("reference", "failed") else [
                  fmt_duration(h["offset_ns"]), f"{h['drift_ppm']:+.3f} ppm",
                  f"±{fmt_duration(h['accuracy_window_ns'])}" if h["accuracy_window_ns"] is not None else "-",
                  f"±{fmt_duration(h['accuracy_ns'])}" if h["accuracy_ns"] is not None else "-"]) + [h["matches"],
                  (f"via {', '.join(h['via'])}; " if h["via"] else "") + (h["reason"] if h["quality"] != "reference" else "")]
                 for h in report["hosts"]],
                right=["offset at first event", "drift", "error (packets)", "error (trace ends)", "matches"])
    for h in report["hosts"]:
        if h["quality"] not in ("reference", "failed"):
            console.print(f"{h['host']}: t_{report['reference']} = {h['slope_decimal']} · t + {h['offset_decimal']} ns",
                          soft_wrap=True, highlight=False)
    wide = [h for h in report["hosts"] if h["accuracy_ns"] and h["accuracy_window_ns"] is not None
            and h["accuracy_ns"] > 2 * h["accuracy_window_ns"]]
    for h in wide:
        console.print(f"{h['host']}: the bounds diverge away from the matched packets "
                      f"(±{fmt_duration(h['accuracy_window_ns'])} over them, ±{fmt_duration(h['accuracy_ns'])} at the "
                      "trace's ends): trace traffic between the hosts over the whole recording for a tighter sync")
    console.print("transforms stored: every query now returns synchronized timestamps")


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE, ClusterOpt, JsonOpt

    @app.command()
    def sync(store: str = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory."),
             cluster: Optional[str] = ClusterOpt, json_out: bool = JsonOpt) -> None:
        """Synchronize host clocks from packets matched across hosts (convex hull) and store the transforms."""
        run_sync(store, json_out, cluster)
