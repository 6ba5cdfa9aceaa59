"""`stacklens ovs`: Open vSwitch packet paths (thesis kprobes) and datapath statistics (netdev)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stacklens.views.terminal import console, emit_json, fmt_duration, fmt_ts, print_table


def ovs_models_of_host(store_path: str, host: str) -> dict:
    """The OvS models of one host, over its partitions only (a cluster task)."""
    from stacklens.analyses.ovs_report import host_models
    from stacklens.store import Store
    return host_models(Store(store_path).connect(host=host), host)


def show_ovs(store_path: str, json_out: bool, png: Path | None = None, host: str | None = None,
             bin_s: float = 1.0, cluster: str | None = None) -> int:
    from stacklens.analyses.ovs_report import (STAGE_COLUMNS, histogram_lines, live_report, stage_histograms,
                                              stage_latencies, thesis_report)
    from stacklens.store import Store
    store = Store(store_path)
    con = store.connect()
    models = None
    if cluster:  # per-host models on the workers, the reports' figures here over all of them
        from stacklens.analyses.ovs_report import merge_models
        from stacklens.cluster import partition_hosts, per_host
        hosts = [host] if host is not None else partition_hosts(store)
        models = merge_models(per_host(cluster, ovs_models_of_host, store_path, hosts))
    thesis = thesis_report(con, host, bin_ns=int(bin_s * 1e9), models=models)
    live = live_report(con, host, models=models)
    packets = thesis.pop("_packets", None)
    hists = stage_histograms(packets) if packets is not None else {}
    if png is not None and hists:
        from stacklens.views.figures import close, ovs_latency_figure
        lat = stage_latencies(packets)
        close(ovs_latency_figure({c: (STAGE_COLUMNS[c], lat[c]) for c in STAGE_COLUMNS}, png))
    if json_out:
        emit_json({"datapath_kprobes": thesis or None, "netdev_statistics": live or None,
                   "histograms": {k: {"edges_ns": e.tolist(), "counts": c.tolist()} for k, (e, c) in hists.items()},
                   "png": str(png) if png is not None and hists else None})
        return 0
    if not thesis and not live:
        console.print("no Open vSwitch events in the store (datapath kprobes addons_lttng_ovs_* or "
                      "ovs-appctl samples needed)")
        return 0
    if thesis:
        _show_thesis(thesis, hists, histogram_lines)
    if live:
        _show_live(live)
    if png is not None and hists:
        console.print(f"latency histograms: {png}")
    elif png is not None:
        console.print(f"no per-packet datapath latencies (kprobe events) in the store: {png} not written")
    return 0


def _show_thesis(r: dict, hists: dict, histogram_lines) -> None:
    ev = r["events"]
    console.print(f"[bold]datapath kprobes[/]: {ev['vport_receive']} receive, {ev['upcall_start']} upcall_start, "
                  f"{ev['upcall_end']} upcall_end, {ev['vport_send']} send")
    u = r["untagged"]
    console.print(f"tagged packets: {r['tagged_packets']}; untagged receives: {u['untagged']} of {u['received']} "
                  f"({_pct(u['share'])}); slow-path share: {_pct(r['slow_path_share'])}")
    print_table(["path", "packets"], [[k, v] for k, v in r["paths"].items() if v], right=["packets"])
    print_table(["protocol", "packets", "slow", "flood", "median latency", "median upcall"],
                [[p["proto"], p["packets"], p["slow"], p["flood"], fmt_duration(p["median_latency_ns"]),
                  fmt_duration(p["median_upcall_ns"])] for p in r["per_protocol"]],
                right=["packets", "slow", "flood", "median latency", "median upcall"])
    for kind, q in (("fast path (no upcall)", r["fast_latency"]), ("slow path (upcall)", r["slow_latency"])):
        if q.get("n"):
            console.print(f"{kind}: median receive → send {fmt_duration(q['p50'])} over {q['n']} packets "
                          f"(p90 {fmt_duration(q['p90'])}, max {fmt_duration(q['max'])})", highlight=False)
    print_table(["stage", "n", "min", "median", "p90", "max"],
                [[s["label"], s["n"], fmt_duration(s.get("min")), fmt_duration(s.get("p50")),
                  fmt_duration(s.get("p90")), fmt_duration(s.get("max"))] for s in r["latency"].values()],
                right=["n", "min", "median", "p90", "max"])
    for col, (edges, counts) in hists.items():
        if counts.size:
            console.print(f"{r['latency'][col]['label']}:")
            for line in histogram_lines(edges, counts):
                console.print(line, highlight=False)
    bins = [b for b in r["upcall_rate"]["bins"] if b["upcalls"]]
    console.print(f"upcalls per {r['upcall_rate']['bin_ns'] / 1e9:g} s: {len(bins)} non-empty bins; "
                  f"bursts: {len(r['upcall_bursts'])}")
    for b in r["upcall_bursts"]:
        console.print(f"  burst {fmt_ts(b['start'])} → {fmt_ts(b['end'])}: {b['total']} upcalls (peak {b['peak']})")


def _show_live(r: dict) -> None:
    for dp in r["datapaths"]:
        console.print(f"[bold]{dp['datapath']}[/] on {dp['host']}: {dp['samples']} samples every "
                      f"{fmt_duration(dp['sample_interval_ns'])}; hit {dp['last']['hit']}, missed {dp['last']['missed']}, "
                      f"lost {dp['last']['lost']}, flows {dp['last']['flows']}")
        for b in dp["miss_bursts"]:
            console.print(f"  miss burst {fmt_ts(b['start'])} → {fmt_ts(b['end'])}: {b['total']} misses (peak {b['peak']})")
        for c in dp["reconfigurations"]:
            console.print(f"  {c['command']} at {fmt_ts(c['ts'])}: slow-path share {fmt_duration(c['window_ns'])} before "
                          f"{_pct(c['slow_share_before']['share'])}, after {_pct(c['slow_share_after']['share'])}, first interval after "
                          f"{_pct(c['first_interval_after']['share'])}"
                          + (f"; burst at {fmt_ts(c['burst']['start'])}" if c["burst"] else "; no burst"))
    if r["upcalls_by_vm"]:
        print_table(["from VM", "to VM", "port", "miss upcalls"],
                    [[u["src_vm"] or "-", u["dst_vm"] or "(broadcast)", u["interface"] or "-", u["upcalls"]]
                     for u in r["upcalls_by_vm"]], right=["miss upcalls"])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def register(app: typer.Typer) -> None:
    from stacklens.cli import DEFAULT_STORE, ClusterOpt, JsonOpt

    @app.command()
    def ovs(store: str = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory."),
            host: Optional[str] = typer.Option(None, help="Only this host."),
            png: Optional[Path] = typer.Option(None, help="Also save the stage latency histograms as PNG."),
            bin_s: float = typer.Option(1.0, "--bin", help="Upcall-rate bin width, seconds."),
            cluster: Optional[str] = ClusterOpt, json_out: bool = JsonOpt) -> None:
        """Open vSwitch: packet paths (fast/slow/flood), stage latencies, upcall bursts, datapath statistics."""
        raise typer.Exit(show_ovs(store, json_out, png, host, bin_s, cluster))
