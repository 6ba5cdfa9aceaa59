"""What the web UI's views draw: time-window queries over the models with level of detail.

Every view answers `view(name, start, end, px)` with bars (lane, start, end, label, ids),
series (x, y) and points, in ns. Intervals shorter than one pixel (`(end - start) / px`)
are merged per lane and pixel bucket in DuckDB, so the answer size depends on the screen,
not on the store: the kernel view of a 10 M-event store returns at most lanes × px bars.
Labels are plain text here; the browser escapes them (textContent / Plotly-safe escaping).
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb
import pyarrow as pa

VIEWS = ("vm_states", "tasks", "requests", "migration", "ovs", "kernel", "resources")


class WebData:
    def __init__(self, store) -> None:
        self.store = store
        self._lock = threading.RLock()  # builders call other cached builders
        self._cache: dict[str, Any] = {}
        self.con = store.connect()

    def _cached(self, key: str, build):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    # ---- summary -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        def build():
            t0, t1, n = self.con.execute("SELECT min(ts), max(ts), count(*) FROM events").fetchall()[0]
            hosts = [r[0] for r in self.con.execute("SELECT DISTINCT host FROM events ORDER BY 1").fetchall()]
            from stacklens.models.correlation import vm_identities
            vms = vm_identities(self.con).to_pylist()
            reqs = [r[0] for r in self.con.execute(
                "SELECT request_id FROM events WHERE request_id IS NOT NULL GROUP BY 1 ORDER BY min(ts) LIMIT 500").fetchall()]
            return {"t0": t0, "t1": t1, "events": n, "hosts": hosts, "vms": vms, "requests": reqs, "views": list(VIEWS)}
        return self._cached("summary", build)

    def findings(self) -> list[dict[str, Any]]:
        def build():
            from stacklens.diagnose.rules import diagnose_store
            return [f.to_dict() for f in diagnose_store(self.store)]
        return self._cached("findings", build)

    def explain(self, vm: str | None, request: str | None) -> dict[str, Any]:
        from stacklens.analyses.explain import explain_request, explain_vm
        key = f"explain:{vm}:{request}"
        return self._cached(key, lambda: (explain_request(self.store, request) if request
                                          else explain_vm(self.store, vm)).to_dict())

    # ---- views -------------------------------------------------------------------------------
    def view(self, name: str, start: int | None, end: int | None, px: int = 1000) -> dict[str, Any]:
        s = self.summary()
        lo = s["t0"] if start is None else start
        hi = s["t1"] if end is None else end
        px = max(50, min(int(px), 4000))
        out = getattr(self, f"_view_{name}")(lo, hi, px)
        out.update({"view": name, "start": lo, "end": hi, "px": px})
        return out

    def _bars_in(self, table: pa.Table, lo: int, hi: int, px: int) -> list[dict]:
        """Rows (lane, start, end, label, layer, vm, request_id, tid) in the window with LOD."""
        bucket = max(1, (hi - lo) // px)
        con = duckdb.connect()
        con.register("t", table)
        rows = con.execute("""
            WITH w AS (SELECT *, coalesce("end", start) AS e FROM t WHERE start < $2 AND coalesce("end", start) >= $1),
            big AS (SELECT * FROM w WHERE e - start >= $3),
            small AS (  -- sub-pixel intervals: one bar per lane and pixel, labelled by the longest
              SELECT lane, min(start) AS start, max(e) AS e, arg_max(label, e - start) AS label, any_value(layer) AS layer,
                     arg_max(vm, e - start) AS vm, arg_max(request_id, e - start) AS request_id,
                     arg_max(tid, e - start) AS tid, count(*) AS merged
              FROM w WHERE e - start < $3 GROUP BY lane, (start - $1) // $3)
            SELECT lane, start, e, label, layer, vm, request_id, tid, 1 FROM big
            UNION ALL SELECT lane, start, e, label, layer, vm, request_id, tid, merged FROM small
            ORDER BY lane, start""", [lo, hi, bucket]).fetchall()
        return [{"lane": r[0], "start": r[1], "end": r[2], "label": r[3], "layer": r[4], "vm": r[5],
                 "request_id": r[6], "tid": r[7], "merged": r[8]} for r in rows]

    @staticmethod
    def _table(rows: list[dict]) -> pa.Table:
        schema = pa.schema([("lane", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("label", pa.string()),
                            ("layer", pa.string()), ("vm", pa.string()), ("request_id", pa.string()), ("tid", pa.int64())])
        return pa.Table.from_pylist(rows, schema=schema)

    def _view_vm_states(self, lo, hi, px):
        def build():
            from stacklens.models.vm_states import vm_state_timeline
            rows = vm_state_timeline(self.con).to_pylist()
            end = self.summary()["t1"]
            out = []
            for r, nxt in zip(rows, rows[1:] + [None]):
                same = nxt is not None and nxt["vm"] == r["vm"]
                out.append({"lane": f"{r['vmname'] or r['vm']}", "start": r["ts"], "end": nxt["ts"] if same else end,
                            "label": f"{r['vm_state']}/{r['task_state'] or '-'} on {r['node']}", "layer": "app",
                            "vm": r["vmname"] or r["vm"], "request_id": r["request_id"], "tid": None})
            return self._table(out)
        return {"bars": self._bars_in(self._cached("t:vm_states", build), lo, hi, px)}

    def _tasks_table(self):
        from stacklens.models.service_tasks import service_tasks
        return service_tasks(self.con).to_pylist()

    def _view_tasks(self, lo, hi, px):
        def build():
            end = self.summary()["t1"]
            return self._table([{"lane": f"{t['worker']}", "start": t["start_ts"], "end": t["end_ts"] or end,
                                 "label": f"{t['task']} ({t['outcome']})", "layer": "app",
                                 "vm": t["vmname"] or t["instance"], "request_id": t["request_id"], "tid": None}
                                for t in self._cached("tasks", self._tasks_table)])
        return {"bars": self._bars_in(self._cached("t:tasks", build), lo, hi, px)}

    def _view_requests(self, lo, hi, px):
        def build():
            rows = []
            for t in self._cached("tasks", self._tasks_table):
                if t["request_id"]:
                    rows.append({"lane": f"{t['host']} / {t['service'] or t['worker']}", "start": t["start_ts"],
                                 "end": t["end_ts"] or t["start_ts"], "label": f"{t['request_id']}: {t['task']}",
                                 "layer": "app", "vm": t["vmname"] or t["instance"], "request_id": t["request_id"], "tid": None})
            return self._table(rows)
        return {"bars": self._bars_in(self._cached("t:requests", build), lo, hi, px)}

    def _migrations(self):
        from stacklens.models.migration import migration_attempts
        return migration_attempts(self.con)

    def _view_migration(self, lo, hi, px):
        def build():
            rows, series = [], []
            for a in self._cached("migrations", self._migrations):
                lane = f"{a.vm} {a.source_host}→{a.dest_host or '?'}"
                rows.append({"lane": lane, "start": a.start, "end": a.end or a.start,
                             "label": f"migration: {a.verdict} ({a.reason})", "layer": "virt", "vm": a.vm,
                             "request_id": a.request_id, "tid": None})
                for r in a.rounds:
                    rows.append({"lane": lane + " rounds", "start": r.start, "end": r.end,
                                 "label": ("precopy" if r.index == 0 else f"round {r.index}") + f": {r.dirty_pages} dirty pages",
                                 "layer": "virt", "vm": a.vm, "request_id": a.request_id, "tid": None})
                if a.stop_copy_start is not None:
                    rows.append({"lane": lane + " rounds", "start": a.stop_copy_start, "end": a.stop_copy_end or a.end,
                                 "label": "stop&copy", "layer": "virt", "vm": a.vm, "request_id": a.request_id, "tid": None})
                for s in a.nova_steps:
                    if s.start is not None:
                        rows.append({"lane": lane + " nova", "start": s.start, "end": s.end or s.start,
                                     "label": f"nova {s.name}", "layer": "app", "vm": a.vm, "request_id": s.request_id, "tid": None})
                series.append({"name": f"dirty pages {a.vm}", "vm": a.vm, "x": [r.end for r in a.rounds],
                               "y": [r.dirty_pages for r in a.rounds]})
            return self._table(rows), series
        table, series = self._cached("t:migration", build)
        return {"bars": self._bars_in(table, lo, hi, px), "series": series}

    def _view_ovs(self, lo, hi, px):
        bucket = max(1, (hi - lo) // px)
        from stacklens.models.ovs import packet_paths
        paths = self._cached("ovs_paths", lambda: packet_paths(self.con))
        con = duckdb.connect()
        con.register("p", paths)
        rows = con.execute("""SELECT path, ($1 + ((receive_ts - $1) // $3) * $3) AS b, count(*) FROM p
                              WHERE receive_ts >= $1 AND receive_ts < $2 GROUP BY ALL ORDER BY b""",
                           [lo, hi, bucket]).fetchall()
        series: dict[str, dict] = {}
        for path, b, n in rows:
            s = series.setdefault(path, {"name": f"{path} packets", "x": [], "y": []})
            s["x"].append(b)
            s["y"].append(n)
        return {"bars": [], "series": list(series.values()), "bucket_ns": bucket}

    def _view_resources(self, lo, hi, px):
        from stacklens.models.vm_states import resources_per_host
        rows = self._cached("resources", lambda: resources_per_host(self.con).to_pylist())
        series: dict[str, dict] = {}
        for r in rows:
            s = series.setdefault(r["host"], {"name": f"VMs on {r['host']}", "x": [], "y": []})
            s["x"].append(r["ts"])
            s["y"].append(r["vms"])
        return {"bars": [], "series": list(series.values())}

    def _view_kernel(self, lo, hi, px):
        """Threads of VMs (state per tid, runnable = preempted) and what ran on each CPU, read
        from the window only (models/kernel_window.py: the window's sched events plus a bounded
        look-back), never the whole host's model. Without VM threads, the threads that ran most
        in the window are shown; at most KERNEL_THREAD_LANES thread lanes."""
        from stacklens.errors import StacklensError
        from stacklens.models.correlation import vm_threads
        from stacklens.models.kernel import kernel_hosts
        from stacklens.models.kernel_window import KernelWindow
        hosts = self._cached("khosts", lambda: kernel_hosts(self.store))
        if not hosts:
            return {"bars": []}
        host = hosts[0]
        try:
            kw = self._cached(f"kwindow:{host}", lambda: KernelWindow(self.store, host))
        except StacklensError:
            return {"bars": []}
        named = self._cached("vmthreads", lambda: {r["tid"]: r for r in vm_threads(self.con).to_pylist()
                                                  if r["role"] or r["via"] != "lab.json"})
        bucket = max(1, (hi - lo) // px)
        with self._lock:
            running = kw.running(lo, hi)
            # one in-memory connection for every kernel view (a new one costs ~17 ms)
            con = self._cached("kernel_view_con", duckdb.connect)
            con.register("running", running)
            if named:
                shown = sorted(named)[:KERNEL_THREAD_LANES]
            else:
                shown = [r[0] for r in con.execute(
                    'SELECT tid FROM running WHERE tid <> 0 GROUP BY tid ORDER BY sum("end" - start) DESC, tid LIMIT $1',
                    [KERNEL_THREAD_LANES]).fetchall()]
            con.register("states", kw.thread_states(shown, lo, hi))
            # level of detail: intervals shorter than a pixel merge per lane and pixel (the bar
            # spans them, labelled by the longest); longer ones are returned as they are
            states = con.execute("""
                SELECT tid, state, min(start), max("end"), count(*) FROM states
                GROUP BY tid, state, CASE WHEN "end" - start >= $2 THEN -1 - start ELSE (start - $1) // $2 END
                ORDER BY tid, 3""", [lo, bucket]).fetchall()
            cpus = con.execute("""
                SELECT cpu, arg_max(tid, "end" - start), arg_max(comm, "end" - start), min(start), max("end"), count(*)
                FROM running WHERE tid <> 0
                GROUP BY cpu, CASE WHEN "end" - start >= $2 THEN -1 - start ELSE (start - $1) // $2 END
                ORDER BY cpu, 4""", [lo, bucket]).fetchall()
            names = dict(con.execute('SELECT tid, arg_max(comm, "end" - start) FROM running GROUP BY tid').fetchall())
        bars = []
        for tid, state, s, e, n in states:
            r = named.get(tid)
            lane = (f"{r['vm']} {r['role'] or ''} {r['thread'] or ''} ({tid})" if r
                    else f"{names.get(tid) or '?'} ({tid})")
            bars.append({"lane": lane, "start": s, "end": e,
                         "label": f"{state}" + (" (preempted: waiting for CPU)" if state == "runnable" else ""),
                         "layer": "kernel", "state": state, "vm": r["vm"] if r else None, "request_id": None,
                         "tid": tid, "merged": n})
        for cpu, tid, comm, s, e, n in cpus:
            r = named.get(tid)
            bars.append({"lane": f"CPU {cpu}", "start": s, "end": e,
                         "label": f"{comm} ({tid})" + (f" of {r['vm']}" if r else ""), "layer": "kernel",
                         "state": "cpu", "vm": r["vm"] if r else None, "request_id": None, "tid": tid, "merged": n})
        return {"bars": bars, "host": host}

    # ---- events per host/layer and pixel in a window (the overview; bench/view_query.py) ----
    def _density_buckets(self) -> str:
        """Events per host, layer and DENSITY_BASE_NS bucket, computed once per store content and
        kept next to the events (summaries/density-<fingerprint>.parquet); loaded into a table
        sorted by bucket so a window reads a contiguous slice. Returns the table's name."""
        def build() -> str:
            import hashlib
            files = self.store.event_files()
            key = hashlib.sha1(repr([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])
                               .encode()).hexdigest()[:16]
            path = self.store.root / "summaries" / f"density-{key}.parquet"
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                tmp = path.with_suffix(".tmp")
                self.con.execute(f"""
                    COPY (SELECT host, layer, ts // {DENSITY_BASE_NS} AS b, count(*) AS n FROM events_raw
                          GROUP BY ALL ORDER BY b, host, layer) TO '{tmp}' (FORMAT parquet)""")
                tmp.replace(path)
                for old in path.parent.glob("density-*.parquet"):
                    if old != path:
                        old.unlink(missing_ok=True)
            self.con.execute(f"CREATE TEMP TABLE density_buckets AS SELECT * FROM read_parquet('{path}') ORDER BY b")
            return "density_buckets"
        return self._cached("density_buckets", build)

    def density(self, start: int, end: int, px: int = 1000) -> list[tuple]:
        """(host, layer, pixel, events) over [start, end). A pixel of at least DENSITY_MIN_RATIO
        base buckets is counted from the stored buckets (a base bucket straddling a pixel edge
        goes whole to the pixel of its start: at most 1/DENSITY_MIN_RATIO off at each edge);
        narrower pixels read the events, whose ts-sorted row groups the window prunes."""
        bucket = max(1, (end - start) // px)
        with self._lock:
            if bucket >= DENSITY_MIN_RATIO * DENSITY_BASE_NS:
                table = self._density_buckets()
                return self.con.execute(f"""
                    SELECT host, layer, greatest(b * {DENSITY_BASE_NS} - $1, 0) // $3 AS px, CAST(sum(n) AS BIGINT)
                    FROM {table} WHERE b >= $1 // {DENSITY_BASE_NS} AND b * {DENSITY_BASE_NS} < $2
                    GROUP BY ALL ORDER BY host, layer, px""", [start, end, bucket]).fetchall()
            return self.con.execute("""
                SELECT host, layer, (ts - $1) // $3 AS b, count(*) FROM events_raw
                WHERE ts >= $1 AND ts < $2 GROUP BY ALL ORDER BY host, layer, b""", [start, end, bucket]).fetchall()


DENSITY_BASE_NS = 1_000_000  # 1 ms buckets: 600 k per host and layer for ten minutes of trace
DENSITY_MIN_RATIO = 64
KERNEL_THREAD_LANES = 40  # thread lanes the kernel view returns at most (plus one per CPU)
