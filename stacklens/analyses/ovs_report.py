"""Open vSwitch figures from the OvS models: path shares, stage latency histograms on shared
log-spaced bins (terminal bars here; the PNG is drawn by stacklens.views.figures), upcall rate and bursts,
slow-path share before/after a reconfiguration, slow packets named by their VMs."""

from __future__ import annotations


import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute in merge_models

from stacklens.models import ovs

STAGE_COLUMNS = {"latency_ns": "receive → first send", "to_upcall_ns": "receive → upcall_start",
                 "upcall_ns": "upcall (start → end)", "reinject_ns": "upcall_end → send"}


def find_bursts(ts: np.ndarray, counts: np.ndarray, factor: float = 4.0, min_count: int = 5) -> list[dict]:
    """Runs of consecutive intervals whose count is at least max(min_count, factor × median).

    `ts[i]` is the end of interval i and `counts[i]` what happened in it (upcalls, misses).
    A burst reports its first and last interval end, the total and the peak."""
    counts = np.asarray(counts, dtype=np.float64)
    ts = np.asarray(ts, dtype=np.int64)
    if counts.size == 0:
        return []
    threshold = max(float(min_count), factor * float(np.median(counts)))
    hot = counts >= threshold
    bursts: list[dict] = []
    i = 0
    while i < hot.size:
        if hot[i]:
            j = i
            while j + 1 < hot.size and hot[j + 1]:
                j += 1
            bursts.append({"start": int(ts[i]), "end": int(ts[j]), "total": int(counts[i:j + 1].sum()),
                           "peak": int(counts[i:j + 1].max()), "threshold": threshold})
            i = j + 1
        else:
            i += 1
    return bursts


def rate_bins(ts: np.ndarray, bin_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of `ts` per bin of `bin_ns`; returns (bin ends, counts)."""
    if len(ts) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    start = int(ts.min()) // bin_ns * bin_ns
    idx = (ts - start) // bin_ns
    counts = np.bincount(idx)
    return start + (np.arange(counts.size, dtype=np.int64) + 1) * bin_ns, counts


def shared_log_bins(values: dict[str, np.ndarray], bins_per_decade: int = 4) -> np.ndarray:
    """One set of log-spaced bin edges (ns) covering every series' positive values, so that
    histograms of different stages compare bin by bin."""
    pos = [v[v > 0] for v in values.values() if len(v)]
    pos = [v for v in pos if v.size]
    if not pos:
        return np.empty(0)
    lo = np.floor(np.log10(min(float(v.min()) for v in pos)) * bins_per_decade) / bins_per_decade
    hi = np.ceil(np.log10(max(float(v.max()) for v in pos)) * bins_per_decade + 1e-9) / bins_per_decade
    return 10 ** np.arange(lo, hi + 1e-9 + 1 / bins_per_decade, 1 / bins_per_decade)


def histogram_lines(edges: np.ndarray, counts: np.ndarray, width: int = 40) -> list[str]:
    from stacklens.views.terminal import fmt_duration
    top = int(counts.max()) if counts.size else 0
    return [f"{fmt_duration(edges[i]):>10} – {fmt_duration(edges[i + 1]):<10} {int(c):>5} │"
            + "█" * (round(width * c / top) if top else 0) for i, c in enumerate(counts)]


# The OvS models the reports are computed from, all per host (SQL partitioned or filtered by
# host): a cluster worker builds them next to one host's partitions (host_models), the client
# concatenates them (merge_models) and computes the reports' figures over every host.
MODELS = {"counts": ovs.stage_counts, "packets": ovs.packet_paths, "untagged": ovs.untagged_share,
          "upcalls": ovs.upcall_times, "series": ovs.datapath_series, "commands": ovs.reconfigurations,
          "miss_upcalls": ovs.miss_upcalls, "ports": ovs.port_vms}
# the order each table has when built over every host at once
_MERGED_ORDER = {"commands": ["ts"], "miss_upcalls": ["ts"]}


# every event name a model of MODELS reads (models/ovs.py)
MODEL_EVENT_NAMES = (*ovs.EVENT_NAMES, "ovs_datapath", "ovs_command", "ovs_interface", "ovs_miss_upcall")


def host_models(con: duckdb.DuckDBPyConnection, host: str | None = None) -> dict:
    """Every OvS model of `host` (of every host when None). Where there is no OvS event (most
    hosts: a diagnosis builds them for every host) the models are built over an empty event
    table — the same empty results, without scanning the host's events once per model."""
    names = ", ".join(f"'{n}'" for n in MODEL_EVENT_NAMES)
    if not con.execute(f"SELECT 1 FROM events WHERE name IN ({names}) AND ($host IS NULL OR host = $host) LIMIT 1",
                       {"host": host}).fetchall():
        con = _no_events()
    return {k: build(con, host) for k, build in MODELS.items()}


def _no_events() -> duckdb.DuckDBPyConnection:
    """A connection whose `events` view has the store's columns and no row."""
    from stacklens.store.schema import EVENT_SCHEMA
    d = duckdb.connect()
    d.register("_no_events", EVENT_SCHEMA.empty_table())
    d.execute("CREATE VIEW events AS SELECT *, ts AS ts_raw FROM _no_events")
    return d


def merge_models(parts: list[dict]) -> dict:
    """One set of models from per-host ones given in host order: counts summed, tables
    concatenated (re-sorted where the whole-store query orders by time alone)."""
    if not parts:  # no host: both reports are empty
        return {"counts": {s: 0 for s in ovs.STAGES}, "series": pa.table({})}
    counts = {s: sum(p["counts"][s] for p in parts) for s in ovs.STAGES}
    untagged = {k: sum(p["untagged"][k] for p in parts) for k in ("received", "untagged", "untagged_upcalls")}
    untagged["share"] = untagged["untagged"] / untagged["received"] if untagged["received"] else None
    out = {"counts": counts, "untagged": untagged}
    for k in MODELS:
        if k in out:
            continue
        t = pa.concat_tables([p[k] for p in parts], promote_options="permissive")
        if k in _MERGED_ORDER and t.num_rows:
            t = t.take(pa.compute.sort_indices(t, [(c, "ascending") for c in _MERGED_ORDER[k]]))
        out[k] = t
    return out


def _model(con: duckdb.DuckDBPyConnection, host: str | None, models: dict | None, key: str):
    return models[key] if models is not None else MODELS[key](con, host)


def thesis_report(con: duckdb.DuckDBPyConnection, host: str | None = None, bin_ns: int = 1_000_000_000,
                  models: dict | None = None) -> dict:
    """Per-packet analysis of the datapath kprobe events (empty dict when there are none).
    `models`: the OvS models already built (merge_models of a cluster's per-host ones)."""
    counts = _model(con, host, models, "counts")
    if not any(counts.values()):
        return {}
    packets = _model(con, host, models, "packets")
    d = duckdb.connect()
    d.register("p", packets)
    by_path = dict(d.sql("SELECT path, count(*) FROM p GROUP BY 1").fetchall())
    tagged = packets.num_rows
    slow = sum(by_path.get(k, 0) for k in ovs.SLOW_PATHS)
    per_proto = [dict(zip(("proto", "packets", "slow", "flood", "median_latency_ns", "median_upcall_ns"), r))
                 for r in d.sql("SELECT proto, count(*), count(*) FILTER (WHERE slow), count(*) FILTER (WHERE flood),"
                                " median(latency_ns), median(upcall_ns) FROM p GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()]
    latency = {}
    for col, label in STAGE_COLUMNS.items():
        v = [x for x in packets.column(col).to_pylist() if x is not None]
        latency[col] = {"label": label, "n": len(v), **_quantiles(v)}
    fast_lat = [r["latency_ns"] for r in packets.to_pylist() if r["path"] in ("fast", "fast_flood") and r["latency_ns"] is not None]
    slow_lat = [r["latency_ns"] for r in packets.to_pylist() if r["path"] in ("slow", "slow_flood") and r["latency_ns"] is not None]
    up = _model(con, host, models, "upcalls")
    ends, per_bin = rate_bins(up.column("ts").to_numpy(), bin_ns)
    return {
        "events": counts, "tagged_packets": tagged, "paths": {k: by_path.get(k, 0) for k in ovs.PATHS},
        "slow_path_share": slow / tagged if tagged else None,
        "untagged": _model(con, host, models, "untagged"), "per_protocol": per_proto, "latency": latency,
        "fast_latency": _quantiles(fast_lat), "slow_latency": _quantiles(slow_lat),
        "upcall_rate": {"bin_ns": bin_ns, "bins": [{"end": int(e), "upcalls": int(c)} for e, c in zip(ends, per_bin)]},
        "upcall_bursts": find_bursts(ends, per_bin, min_count=3),
        "_packets": packets,
    }


def live_report(con: duckdb.DuckDBPyConnection, host: str | None = None, window_ns: int = 1_000_000_000,
                models: dict | None = None) -> dict:
    """Sampled datapath statistics: miss series, bursts, slow-path share around reconfigurations,
    miss upcalls named by their VMs (empty dict when there are no samples). `models`: as in
    thesis_report."""
    series = _model(con, host, models, "series")
    if series.num_rows == 0:
        return {}
    rows = series.to_pylist()
    out: dict = {"datapaths": []}
    commands = _model(con, host, models, "commands").to_pylist()
    for dp in sorted({r["datapath"] for r in rows}):
        s = [r for r in rows if r["datapath"] == dp]
        inc = [r for r in s if r["d_missed"] is not None]
        ts = np.array([r["ts"] for r in inc], dtype=np.int64)
        missed = np.array([r["d_missed"] for r in inc], dtype=np.int64)
        intervals = [r["interval_ns"] for r in inc]
        entry = {
            "datapath": dp, "host": s[0]["host"], "samples": len(s),
            "sample_interval_ns": int(np.median(intervals)) if intervals else None,
            "first": {k: s[0][k] for k in ("ts", "hit", "missed", "lost", "flows")},
            "last": {k: s[-1][k] for k in ("ts", "hit", "missed", "lost", "flows")},
            "series": [{k: r[k] for k in ("ts", "d_hit", "d_missed", "d_lost", "flows", "slow_share")} for r in inc],
            "miss_bursts": find_bursts(ts, missed),
            "reconfigurations": [],
        }
        for c in commands:
            # Equal windows either side, so a start-up burst long before does not blur "before".
            before = [r for r in inc if c["ts"] - window_ns < r["ts"] <= c["ts"]]
            after = [r for r in inc if c["ts"] < r["ts"] <= c["ts"] + window_ns]
            entry["reconfigurations"].append({
                "ts": c["ts"], "command": c["command"], "window_ns": window_ns,
                "slow_share_before": _share(before), "slow_share_after": _share(after),
                "first_interval_after": _share(after[:1]),
                "burst": next((b for b in entry["miss_bursts"] if b["end"] >= c["ts"]), None)})
        out["datapaths"].append(entry)
    upcalls = _model(con, host, models, "miss_upcalls")
    out["miss_upcalls"] = upcalls.num_rows
    d = duckdb.connect()
    d.register("u", upcalls)
    out["upcalls_by_vm"] = [dict(zip(("src_vm", "dst_vm", "interface", "upcalls"), r)) for r in d.sql(
        "SELECT src_vm, dst_vm, interface, count(*) FROM u GROUP BY ALL ORDER BY 4 DESC, 1 NULLS FIRST, 2 NULLS FIRST, 3 NULLS FIRST").fetchall()]
    out["ports"] = _model(con, host, models, "ports").to_pylist()
    return out


def _share(rows: list[dict]) -> dict:
    hit = sum(r["d_hit"] or 0 for r in rows)
    missed = sum(r["d_missed"] or 0 for r in rows)
    return {"hit": hit, "missed": missed, "share": missed / (hit + missed) if hit + missed else None}


def _quantiles(v: list) -> dict:
    if not v:
        return {"n": 0}
    a = np.asarray(v, dtype=np.float64)
    return {"n": int(a.size), "min": float(a.min()), "p50": float(np.median(a)), "p90": float(np.quantile(a, 0.9)),
            "max": float(a.max()), "mean": float(a.mean())}


def stage_latencies(packets: pa.Table) -> dict[str, np.ndarray]:
    """{stage column: the positive latencies (ns) of the packets that went through it}."""
    out = {}
    for col in STAGE_COLUMNS:
        v = packets.column(col).to_numpy(zero_copy_only=False)
        v = np.asarray(v[~np.isnan(v.astype(float))] if v.dtype.kind == "f" else v, dtype=np.float64)
        out[col] = v[v > 0]
    return out


def stage_histograms(packets: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Counts per stage on one set of log-spaced bins shared by every stage (edges in ns)."""
    lat = stage_latencies(packets)
    edges = shared_log_bins(lat)
    return {col: (edges, np.histogram(v, bins=edges)[0] if edges.size else np.empty(0, np.int64))
            for col, v in lat.items()}
