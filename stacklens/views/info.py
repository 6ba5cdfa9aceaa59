"""`stacklens info`: what a store holds."""

from __future__ import annotations

from typing import Any

from stacklens.store.store import Store
from stacklens.views.terminal import console, emit_json, fmt_ts, print_table


def store_summary(store: Store, top: int = 30) -> dict[str, Any]:
    con = store.connect()
    from stacklens.models.app_ops import TIMED
    # events without a real time (Nova's doc samples, at the epoch) stay out of the ranges
    total, t0, t1, untimed = con.execute(
        f"SELECT count(*), min(ts) FILTER ({TIMED}), max(ts) FILTER ({TIMED}),"
        f" count(*) FILTER (NOT ({TIMED})) FROM events").fetchall()[0]
    per_host = con.sql(f"SELECT host, layer, count(*) AS n, min(ts) FILTER ({TIMED}), max(ts) FILTER ({TIMED})"
                       " FROM events GROUP BY ALL ORDER BY host, layer").fetchall()
    names = con.sql("SELECT name, layer, count(*) AS n FROM events GROUP BY ALL ORDER BY n DESC, name"
                    + (f" LIMIT {int(top)}" if top else "")).fetchall()
    n_names = con.execute("SELECT count(DISTINCT name) FROM events").fetchall()[0][0]
    lost_total, lost_packets = con.execute("SELECT coalesce(sum(count), 0), count(*) FROM lost").fetchall()[0]
    lost_by_src = con.sql("SELECT l.host, s.path, sum(l.count), min(l.ts_begin), max(l.ts_end) FROM lost l "
                          "LEFT JOIN sources s USING (src) GROUP BY ALL ORDER BY 3 DESC").fetchall()
    sources = con.sql("SELECT format, host, count(*), sum(rows), sum(skipped) FROM sources GROUP BY ALL "
                      "ORDER BY format, host").fetchall()
    clocks = store.clocks()
    return {
        "store": str(store.root),
        "events": total,
        "time_range": {"begin": t0, "end": t1, "begin_utc": fmt_ts(t0) if t0 else None,
                       "end_utc": fmt_ts(t1) if t1 else None},
        "events_without_time": untimed,
        "hosts": [{"host": h, "layer": l, "events": n, "begin": a, "end": b} for h, l, n, a, b in per_host],
        "sources": [{"format": f, "host": h, "parts": p, "events": r, "skipped": s}
                    for f, h, p, r, s in sources],
        "event_names": n_names,
        "counts": [{"name": n, "layer": l, "events": c} for n, l, c in names],
        "lost": {"events": int(lost_total), "packets": lost_packets,
                 "by_source": [{"host": h, "path": p, "events": int(c), "begin": a, "end": b}
                               for h, p, c, a, b in lost_by_src]},
        "clocks": {h: t.__dict__ for h, t in clocks.items()},
    }


def show_info(store: Store, json_out: bool = False, top: int = 30) -> None:
    s = store_summary(store, top)
    if json_out:
        emit_json(s)
        return
    console.print(f"[bold]store[/] {s['store']}: {s['events']:,} events, "
                  f"{s['time_range']['begin_utc']} → {s['time_range']['end_utc']}"
                  + (f" ({s['events_without_time']:,} without a time: notification samples, kept out of the range)"
                     if s["events_without_time"] else ""))
    print_table(["host", "layer", "events", "begin (UTC)", "end (UTC)"],
                [(h["host"], h["layer"], f"{h['events']:,}", fmt_ts(h["begin"]), fmt_ts(h["end"]))
                 for h in s["hosts"]], title="hosts and layers", right=("events",))
    print_table(["format", "host", "parts", "events", "skipped"],
                [(x["format"], x["host"], x["parts"], f"{x['events']:,}", f"{x['skipped']:,}")
                 for x in s["sources"]], title="sources", right=("parts", "events", "skipped"))
    shown = len(s["counts"])
    print_table(["name", "layer", "events"],
                [(c["name"], c["layer"], f"{c['events']:,}") for c in s["counts"]],
                title=f"events per name ({shown} of {s['event_names']})", right=("events",))
    lost = s["lost"]
    if lost["events"]:
        print_table(["host", "source", "lost events", "from", "to"],
                    [(x["host"], x["path"], f"{x['events']:,}", fmt_ts(x["begin"]), fmt_ts(x["end"]))
                     for x in lost["by_source"]],
                    title=f"lost events: {lost['events']:,} in {lost['packets']:,} packets",
                    right=("lost events",))
    else:
        console.print("lost events: none")
    if s["clocks"]:
        print_table(["host", "quality", "offset (ns)", "drift", "reference"],
                    [(h, c["quality"], c["offset_ns"], f"{c['drift']:.3e}", c["reference"])
                     for h, c in s["clocks"].items()], title="clock transforms")
