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
    def __init__(self, store, *, kernel_source: str = "auto") -> None:
        self.store = store
        self.kernel_mode = kernel_source  # auto | window | whole (kernel_source())
        self._kernel_whole: dict[str, Any] = {}
        self._kernel_building: dict[str, threading.Thread] = {}
        self._kernel_failed: dict[str, str] = {}
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
            from stacklens.models.kernel import kernel_hosts
            khosts = self._cached("khosts", lambda: kernel_hosts(self.store))
            return {"t0": t0, "t1": t1, "t0_str": str(t0), "t1_str": str(t1), "events": n, "hosts": hosts,
                    "kernel_hosts": khosts, "vms": vms, "requests": reqs, "views": list(VIEWS)}
        return self._cached("summary", build)

    def findings(self) -> list[dict[str, Any]]:
        def build():
            from stacklens.diagnose.rules import diagnose_store
            out = [f.to_dict() for f in diagnose_store(self.store)]
            for f in out:  # epoch ns exceed JavaScript's 53-bit numbers: as strings
                for d in [f, *f.get("evidence", [])]:
                    for k in ("start", "end"):
                        if isinstance(d.get(k), int):
                            d[k] = str(d[k])
            return out
        return self._cached("findings", build)

    def explain(self, vm: str | None, request: str | None) -> dict[str, Any]:
        from stacklens.analyses.explain import explain_request, explain_vm
        key = f"explain:{vm}:{request}"
        return self._cached(key, lambda: (explain_request(self.store, request) if request
                                          else explain_vm(self.store, vm)).to_dict())

    # ---- views -------------------------------------------------------------------------------
    def view(self, name: str, start: int | None, end: int | None, px: int = 1000, *,
             host: str | None = None, offset: int = 0, columns: bool = False) -> dict[str, Any]:
        """The view's bars/series in [start, end) (ns; None: the view's own extent, not the
        store's — a store may hold traces years apart). Times are absolute ns. `columns`: a
        view that builds its bars as columns (kernel) leaves them in out["columns"] (one list
        per field, `lane` an index into out["lanes"]) instead of making one dict per bar."""
        if name not in VIEWS:
            raise BadParam(f"unknown view {name!r}")
        px = max(50, min(int(px), 4000))
        if start is not None:  # keep window arithmetic (start - lo, bucket) far from int64 overflow
            s = self.summary()
            margin = max((s["t1"] or 0) - (s["t0"] or 0), 10**12)
            start, end = max(start, (s["t0"] or 0) - margin), min(end, (s["t1"] or 0) + margin)
            if start >= end:
                return {"view": name, "px": px, "bars": [], "series": [], "start": start, "end": start + 1,
                        "message": "this window is outside the store's time range"}
        out = getattr(self, f"_view_{name}")(start, end, px, host=host, offset=offset)
        out.setdefault("series", [])
        out.update({"view": name, "px": px})
        if out.get("start") is None:
            out["start"], out["end"] = self._extent(out)
        if out["end"] <= out["start"]:
            out["end"] = out["start"] + 1
        cols = out.get("columns")
        if cols is not None and not columns:
            out["bars"] = bars_from_columns(cols, out["lanes"], out.pop("bar_constants"))
            del out["columns"]
        if not (out["bars"] or cols and cols["start"]) and not any(s["x"] for s in out["series"]):
            out.setdefault("message", f"no {VIEW_NOUNS[name]} in this window" if start is not None
                           else f"no {VIEW_NOUNS[name]} in this store")
        return out

    def _extent(self, out: dict) -> tuple[int, int]:
        xs = [b["start"] for b in out["bars"]] + [x for s in out["series"] for x in s["x"]]
        ys = [b["end"] for b in out["bars"]] + [x for s in out["series"] for x in s["x"]]
        if xs:
            return min(xs), max(ys)
        s = self.summary()
        return s["t0"] or 0, s["t1"] or 1

    def view_json(self, name: str, start: int | None, end: int | None, px: int = 1000, *,
                  host: str | None = None, offset: int = 0) -> dict[str, Any]:
        """view() for the browser: JavaScript numbers hold 53 bits, epoch ns need 61, so the
        absolute times travel as strings (origin, start, end) and every bar and point as an
        offset from `origin` (exact below 104 days, which a window with detail always is)."""
        out = self.view(name, start, end, px, host=host, offset=offset, columns=True)
        origin = out["start"]
        for b in out["bars"]:
            b["s"], b["e"] = b.pop("start") - origin, b.pop("end") - origin
        cols = out.get("columns")
        if cols is not None:  # the browser makes the bar objects (static/app.js barsOf)
            cols["s"] = [x - origin for x in cols.pop("start")]
            cols["e"] = [x - origin for x in cols.pop("end")]
        for s in out["series"]:
            s["x"] = [x - origin for x in s["x"]]
        for k in ("start", "end", "extent_start", "extent_end"):
            if out.get(k) is not None:
                out[k] = str(out[k])
        out["origin"] = str(origin)
        return out

    def _bars_in(self, table: pa.Table, lo: int | None, hi: int | None, px: int) -> dict[str, Any]:
        """Rows (lane, start, end, label, state, layer, vm, request_id, tid, host) in the window
        with level of detail; lo/hi None: the table's own extent."""
        con = duckdb.connect()
        con.register("t", table)
        t0, t1 = con.execute('SELECT min(start), max(coalesce("end", start)) FROM t').fetchall()[0]
        if lo is None:
            if t0 is None:
                return {"bars": [], "start": None}
            lo, hi = t0, max(t1, t0 + 1)
            pad = max((hi - lo) // 50, 1)
            lo, hi = lo - pad, hi + pad
        bucket = max(1, (hi - lo) // px)
        rows = con.execute("""
            WITH w AS (SELECT *, coalesce("end", start) AS e FROM t WHERE start < $2 AND coalesce("end", start) >= $1),
            big AS (SELECT * FROM w WHERE e - start >= $3),
            small AS (  -- sub-pixel intervals: one bar per lane and pixel, labelled by the longest
              SELECT lane, min(start) AS start, max(e) AS e, arg_max(label, e - start) AS label,
                     arg_max(state, e - start) AS state, any_value(layer) AS layer,
                     arg_max(vm, e - start) AS vm, arg_max(request_id, e - start) AS request_id,
                     arg_max(tid, e - start) AS tid, arg_max(host, e - start) AS host, count(*) AS merged
              FROM w WHERE e - start < $3 GROUP BY lane, (start - $1) // $3)
            SELECT lane, start, e, label, state, layer, vm, request_id, tid, host, 1 FROM big
            UNION ALL SELECT lane, start, e, label, state, layer, vm, request_id, tid, host, merged FROM small
            ORDER BY lane, start""", [lo, hi, bucket]).fetchall()
        bars = [{"lane": r[0], "start": r[1], "end": r[2], "label": r[3], "state": r[4], "layer": r[5], "vm": r[6],
                 "request_id": r[7], "tid": r[8], "host": r[9], "merged": r[10]} for r in rows]
        return {"bars": bars, "start": lo, "end": hi, "extent_start": t0, "extent_end": t1}

    @staticmethod
    def _table(rows: list[dict]) -> pa.Table:
        schema = pa.schema([("lane", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("label", pa.string()),
                            ("state", pa.string()), ("layer", pa.string()), ("vm", pa.string()),
                            ("request_id", pa.string()), ("tid", pa.int64()), ("host", pa.string())])
        return pa.Table.from_pylist([{"state": None, "host": None, **r} for r in rows], schema=schema)

    def _view_vm_states(self, lo, hi, px, **_):
        def build():
            from stacklens.models.vm_states import vm_state_timeline
            from stacklens.models.correlation import vm_identities
            rows = vm_state_timeline(self.con).to_pylist()
            # lanes by VM name: a uuid-only record borrows the name another source gives it
            names = {r["instance"]: r["vm"] for r in vm_identities(self.con).to_pylist() if r["vm"]}
            for r in rows:
                r["vmname"] = r["vmname"] or names.get(r["vm"])
            out = []
            for r, nxt in zip(rows, rows[1:] + [None]):
                same = nxt is not None and nxt["vm"] == r["vm"]
                # the last state lasts until the VM's last event we know of, at least a second
                end = nxt["ts"] if same else r["ts"] + 1_000_000_000
                out.append({"lane": f"{r['vmname'] or r['vm']}", "start": r["ts"], "end": end,
                            "label": f"{r['vm_state']} / {r['task_state'] or '-'} on {r['node'] or '?'}",
                            "state": r["vm_state"] or "unknown", "layer": "app", "host": r["node"],
                            "vm": r["vmname"] or r["vm"], "request_id": r["request_id"], "tid": None})
            return self._table(out)
        return self._bars_in(self._cached("t:vm_states", build), lo, hi, px)

    def _tasks_table(self):
        from stacklens.models.service_tasks import service_tasks
        return service_tasks(self.con).to_pylist()

    def _view_tasks(self, lo, hi, px, **_):
        def build():
            return self._table([{"lane": f"{t['worker']}", "start": t["start_ts"], "end": t["end_ts"] or t["start_ts"],
                                 "label": f"{t['task']} ({t['outcome']})", "state": t["outcome"], "layer": "app",
                                 "host": t["host"], "vm": t["vmname"] or t["instance"], "request_id": t["request_id"],
                                 "tid": None}
                                for t in self._cached("tasks", self._tasks_table)])
        return self._bars_in(self._cached("t:tasks", build), lo, hi, px)

    def _view_requests(self, lo, hi, px, **_):
        """One bar per hop (a task of a request on a host/service); the browser draws an
        arrow from each hop to the next of the same request."""
        def build():
            rows = []
            for t in self._cached("tasks", self._tasks_table):
                if t["request_id"]:
                    rows.append({"lane": f"{t['host']} / {t['service'] or t['worker']}", "start": t["start_ts"],
                                 "end": t["end_ts"] or t["start_ts"], "label": f"{t['task']} ({t['outcome']})",
                                 "state": t["outcome"], "layer": "app", "host": t["host"],
                                 "vm": t["vmname"] or t["instance"], "request_id": t["request_id"], "tid": None})
            return self._table(rows)
        return self._bars_in(self._cached("t:requests", build), lo, hi, px)

    def _migrations(self):
        from stacklens.models.migration import migration_attempts
        return migration_attempts(self.con)

    def _view_migration(self, lo, hi, px, **_):
        def build():
            rows, series = [], []
            for a in self._cached("migrations", self._migrations):
                lane = f"{a.vm} {a.source_host}→{a.dest_host or '?'}"
                common = {"layer": "virt", "vm": a.vm, "request_id": a.request_id, "tid": None, "host": a.source_host}
                rows.append({"lane": lane, "start": a.start, "end": a.end or a.start, "state": "attempt",
                             "label": f"migration: {a.verdict} ({a.reason})", **common})
                for r in a.rounds:
                    rows.append({"lane": lane + " rounds", "start": r.start, "end": r.end,
                                 "state": "precopy" if r.index == 0 else "round",
                                 "label": ("precopy" if r.index == 0 else f"round {r.index}")
                                 + f": {r.dirty_pages} dirty pages", **common})
                if a.stop_copy_start is not None:
                    rows.append({"lane": lane + " rounds", "start": a.stop_copy_start,
                                 "end": a.stop_copy_end or a.end or a.stop_copy_start, "state": "stop&copy",
                                 "label": "stop&copy" + (f" (downtime {a.downtime_ns / 1e6:.1f} ms)"
                                                         if a.downtime_ns is not None else ""), **common})
                for s in a.nova_steps:
                    if s.start is not None:
                        rows.append({"lane": lane + " nova", "start": s.start, "end": s.end or s.start,
                                     "state": "nova", "label": f"nova {s.name}",
                                     **{**common, "layer": "app", "request_id": s.request_id}})
                series.append({"name": f"dirty pages {a.vm}", "vm": a.vm, "x": [r.end for r in a.rounds],
                               "y": [r.dirty_pages for r in a.rounds], "unit": "pages"})
            return self._table(rows), series
        table, series = self._cached("t:migration", build)
        out = self._bars_in(table, lo, hi, px)
        out["series"] = [dict(s) for s in series]
        return out

    def _view_ovs(self, lo, hi, px, **_):
        from stacklens.models.ovs import packet_paths
        paths = self._cached("ovs_paths", lambda: packet_paths(self.con))
        con = duckdb.connect()
        con.register("p", paths)
        if lo is None:
            t0, t1 = con.execute("SELECT min(receive_ts), max(receive_ts) FROM p").fetchall()[0]
            if t0 is None:
                return {"bars": [], "series": [], "start": None}
            lo, hi = t0, max(t1 + 1, t0 + 1)
        bucket = nice_bucket(max(1, (hi - lo) // px))
        rows = con.execute("""SELECT path, ($1 + ((receive_ts - $1) // $3) * $3) AS b, count(*) FROM p
                              WHERE receive_ts >= $1 AND receive_ts < $2 GROUP BY ALL ORDER BY b""",
                           [lo, hi, bucket]).fetchall()
        series: dict[str, dict] = {}
        for path, b, n in rows:
            s = series.setdefault(path, {"name": f"{path} packets", "x": [], "y": [], "unit": "packets"})
            s["x"].append(b)
            s["y"].append(n)
        return {"bars": [], "series": list(series.values()), "bucket_ns": bucket, "start": lo, "end": hi}

    def _view_resources(self, lo, hi, px, **_):
        from stacklens.models.vm_states import resources_per_host
        rows = self._cached("resources", lambda: resources_per_host(self.con).to_pylist())
        series: dict[str, dict] = {}
        for r in rows:
            if lo is not None and not lo <= r["ts"] < hi:
                continue
            s = series.setdefault(r["host"], {"name": f"VMs on {r['host']}", "x": [], "y": [], "unit": "VMs"})
            s["x"].append(r["ts"])
            s["y"].append(r["vms"])
        return {"bars": [], "series": list(series.values()), "start": lo, "end": hi}

    # ---- kernel ------------------------------------------------------------------------------
    def kernel_window(self, host: str):
        from stacklens.models.kernel_window import KernelWindow
        return self._cached(f"kwindow:{host}", lambda: KernelWindow(self.store, host))

    def kernel_source(self, host: str):
        """Where the kernel view of `host` reads its intervals: the whole host's stored intervals
        (models/kernel_intervals.py) once built — faster than reading the window at every window
        width, bench/view_query.py — else the window (models/kernel_window.py) while they are
        built in a background thread (started here, once per host). Both give the same bars
        (tests/test_kernel_intervals.py). `kernel_source` "window" / "whole" forces one."""
        from stacklens.models.kernel_intervals import KernelIntervals
        from pathlib import Path
        with self._lock:
            # a store at a URL keeps no summaries (as the density buckets): the window path
            if self.kernel_mode == "window" or not isinstance(self.store.root, Path):
                return self.kernel_window(host)
            ki = self._kernel_whole.get(host)
            if ki is not None:
                return ki
            if host not in self._kernel_building:
                ki = KernelIntervals.open(self.store, host)
                if ki is None and self.kernel_mode == "whole":
                    ki = KernelIntervals.build(self.store, host)
                if ki is not None:
                    ki.warm()
                    self._kernel_whole[host] = ki
                    return ki
                self._kernel_building[host] = threading.Thread(
                    target=self._build_kernel, args=(host,), name=f"kernel-intervals-{host}", daemon=True)
                self._kernel_building[host].start()
            return self.kernel_window(host)

    def prepare_kernel(self) -> None:
        """In a background thread: kernel_source() of the kernel view's default host (the first),
        so its stored intervals are open — or being built — when the view is first asked for."""
        def run() -> None:
            from stacklens.models.kernel import kernel_hosts
            try:
                hosts = self._cached("khosts", lambda: kernel_hosts(self.store))
                if hosts:
                    self._vm_threads()
                    source = self.kernel_source(hosts[0])
                    self._processes(hosts[0], source)
            except Exception as e:  # noqa: BLE001 - the view reports it when asked
                with self._lock:
                    self._kernel_failed["*"] = f"{type(e).__name__}: {e}"
        self.prepared = threading.Thread(target=run, name="kernel-prepare", daemon=True)
        self.prepared.start()

    def _build_kernel(self, host: str) -> None:
        from stacklens.models.kernel_intervals import KernelIntervals
        try:
            ki = KernelIntervals.build(self.store, host)
            ki.warm()
        except Exception as e:  # noqa: BLE001 - a store we cannot write to keeps the windowed path
            with self._lock:
                self._kernel_failed[host] = f"{type(e).__name__}: {e}"
            return
        with self._lock:
            self._kernel_whole[host] = ki

    def _vm_threads(self) -> dict[int, dict]:
        """tid → the VM thread it is (lab.json threads only with a role)."""
        from stacklens.models.correlation import vm_threads
        return self._cached("vmthreads", lambda: {r["tid"]: r for r in vm_threads(self.con).to_pylist()
                                                 if r["role"] or r["via"] != "lab.json"})

    def _processes(self, host: str, source) -> dict[int, tuple[int, str | None]]:
        """tid → (pid, process-side name) from the trace's own fork and state-dump events."""
        return self._cached(f"procs:{host}", source.processes)

    def _view_kernel(self, lo, hi, px, host=None, offset=0):
        """Threads (grouped by process: lanes ordered by pid, then tid) with their states —
        running, preempted (runnable), blocked, blocked on I/O, in a system call — and what ran
        on each CPU (coloured by thread) with its interrupts, read from the host's stored
        whole-host intervals or from the window (kernel_source()). VM threads first when the store names them; at most
        KERNEL_THREAD_LANES thread lanes per page (`offset` pages over all of them)."""
        from stacklens.errors import StacklensError
        from stacklens.models.kernel import kernel_hosts
        hosts = self._cached("khosts", lambda: kernel_hosts(self.store))
        if not hosts:
            return {"bars": [], "host": None, "message": "no kernel events in this store"}
        host = host or hosts[0]
        if host not in hosts:
            return {"bars": [], "host": host, "start": lo, "end": hi,
                    "message": f"host {host!r} has no kernel events (kernel hosts: {', '.join(hosts)})"}
        try:
            kw = self.kernel_source(host)
        except StacklensError as e:
            return {"bars": [], "host": host, "message": str(e)}
        if lo is None:
            lo, hi = kw.span_start, kw.span_end + 1
        named = self._vm_threads()
        procs = self._processes(host, kw)
        bucket = max(1, (hi - lo) // px)
        # level of detail: intervals shorter than a pixel merge per lane and pixel (the bar spans
        # them, labelled by the longest, ties by the earliest: one 128-bit key, as fast as a
        # plain arg_max where a (duration, -start) struct costs twice as much); longer ones are
        # returned as they are
        lod = 'CASE WHEN "end" - start >= $2 THEN -1 - start ELSE (start - $1) // $2 END'
        longest = '(CAST("end" - start AS HUGEINT) * 9223372036854775807 - start)'
        arrays = getattr(kw, "arrays", None)
        if arrays is not None:  # the stored intervals in NumPy (views/web/lod.py): no query
            # the threads in lane order (VM threads first, then by (pid, tid)), sorted once per host
            lane_order = self._cached(f"klaneorder:{host}", lambda: sorted(
                kw.arrays["running_by_tid"].keys.tolist(),
                key=lambda t: (t not in named, procs.get(t, (t, None))[0], t)))
            in_window = set(kw.np_in_window(lo, hi))
            order = [t for t in lane_order if t in in_window]
            shown = order[offset:offset + KERNEL_THREAD_LANES]
            labelled = sorted(set(shown) | {procs.get(t, (t, None))[0] for t in shown})
            names = kw.np_names(labelled, lo, hi)
            states, cpus, syscalls, irqs = kw.np_view(lo, hi, bucket, shown)
        else:
            with self._lock:
                kw.stage_running(lo, hi)  # the window's relations in kw.view_con: w_running(_by_tid), then w_states, w_sys, w_irq
                con = kw.view_con
                in_window = [r[0] for r in con.execute("SELECT DISTINCT tid FROM w_running WHERE tid <> 0").fetchall()]
                # VM threads first, then every thread by (pid, tid): a process's threads side by side
                order = sorted(set(in_window) | {t for t in named if t in in_window},
                               key=lambda t: (t not in named, procs.get(t, (t, None))[0], t))
                shown = order[offset:offset + KERNEL_THREAD_LANES]
                # the names the lanes show: of the shown threads and of their processes' main threads
                labelled = sorted(set(shown) | {procs.get(t, (t, None))[0] for t in shown}) or [-1]
                names = dict(con.execute(f"""SELECT tid, arg_max(comm, {longest}) FROM w_running_by_tid
                                             WHERE tid IN ({", ".join(map(str, labelled))}) GROUP BY tid""").fetchall())
                kw.stage_threads(shown, lo, hi, THREAD_STATES)
                def cols(sql: str) -> dict[str, list]:  # column lists (no per-row Python tuples)
                    return {k: v.tolist() for k, v in con.execute(sql, [lo, bucket]).fetchnumpy().items()}
                states = cols(f"""
                    SELECT tid, state, min(start) AS s, max("end") AS e, count(*) AS n FROM w_states
                    GROUP BY tid, state, {lod} ORDER BY tid, s""")
                cpus = cols(f"""
                    SELECT cpu, arg_max(tid, {longest}) AS tid, arg_max(comm, {longest}) AS comm, min(start) AS s,
                           max("end") AS e, count(*) AS n
                    FROM w_running WHERE tid <> 0 GROUP BY cpu, {lod} ORDER BY cpu, s""")
                syscalls = cols(f"""
                    SELECT tid, arg_max(call, {longest}) AS call, min(start) AS s, max("end") AS e, count(*) AS n
                    FROM w_sys GROUP BY tid, {lod} ORDER BY tid, s""")
                irqs = cols(f"""
                    SELECT cpu, kind, arg_max(what, {longest}) AS what, min(start) AS s, max("end") AS e,
                           count(*) AS n
                    FROM w_irq GROUP BY cpu, kind, {lod} ORDER BY cpu, s""")
        lanes_cpu = [f"CPU {c}" for c in sorted(set(cpus["cpu"]) | set(kw.cpus))]

        def thread_lane(tid: int) -> str:
            r = named.get(tid)
            if r:
                return f"{r['vm']} {r['role'] or ''} {r['thread'] or ''} ({tid})"
            pid, _ = procs.get(tid, (tid, None))
            pname = names.get(pid) or procs.get(pid, (pid, None))[1] or "?"
            return f"{pname} [{pid}] › {names.get(tid) or procs.get(tid, (0, '?'))[1] or '?'} ({tid})"
        irq_lanes = {f"CPU {c} IRQ" for c in irqs["cpu"]}
        lanes = [x for c in lanes_cpu for x in (c, c + " IRQ") if x in lanes_cpu or x in irq_lanes]
        lanes += [thread_lane(t) for t in shown]
        # the bars as columns (one list per field, lanes as indices into `lanes`): a whole-trace
        # answer holds ~30 k bars, and one Python object per bar (and per JSON object) was a
        # third of its cost; view() makes the objects for callers that want them
        index = {name: i for i, name in enumerate(lanes)}
        lane_of = {t: len(lanes) - len(shown) + k for k, t in enumerate(shown)}
        cpu_lane = {c: index[f"CPU {c}"] for c in cpus["cpu"]}
        irq_lane = {c: index[f"CPU {c} IRQ"] for c in irqs["cpu"]}
        vm_of = {t: r["vm"] for t, r in named.items()}
        def vms(tids: list) -> list:
            return [vm_of.get(t) for t in tids] if vm_of else [None] * len(tids)
        labels = {st: STATE_LABELS.get(st, st) for st in THREAD_STATES}
        n_st, n_sys, n_cpu, n_irq = len(states["s"]), len(syscalls["s"]), len(cpus["s"]), len(irqs["s"])
        columns = {
            "lane": [lane_of[t] for t in states["tid"]] + [lane_of[t] for t in syscalls["tid"]]
            + [cpu_lane[c] for c in cpus["cpu"]] + [irq_lane[c] for c in irqs["cpu"]],
            "start": states["s"] + syscalls["s"] + cpus["s"] + irqs["s"],
            "end": states["e"] + syscalls["e"] + cpus["e"] + irqs["e"],
            "label": [labels.get(st, st) for st in states["state"]]
            + [f"system call {c}" for c in syscalls["call"]]
            + [f"{comm} ({t})" + (f" of {vm_of[t]}" if t in vm_of else "") for t, comm in zip(cpus["tid"], cpus["comm"])]
            + [f"{k} {w}" for k, w in zip(irqs["kind"], irqs["what"])],
            "state": states["state"] + ["syscall"] * n_sys + ["cpu"] * n_cpu + irqs["kind"],
            "vm": vms(states["tid"]) + [None] * n_sys + vms(cpus["tid"])
            + [None] * n_irq,
            "tid": states["tid"] + syscalls["tid"] + cpus["tid"] + [None] * n_irq,
            "cpu": [None] * (n_st + n_sys) + cpus["cpu"] + irqs["cpu"],
            "merged": states["n"] + syscalls["n"] + cpus["n"] + irqs["n"],
        }
        return {"bars": [], "columns": columns, "bar_constants": {"layer": "kernel", "request_id": None, "host": host},
                "host": host, "start": lo, "end": hi, "lanes": lanes,
                "threads_total": len(order), "offset": offset, "page": KERNEL_THREAD_LANES,
                "extent_start": kw.span_start, "extent_end": kw.span_end,
                "source": "whole host" if kw.__class__.__name__ == "KernelIntervals" else "window",
                **({"source_problem": f"the host's whole-host intervals could not be built: {self._kernel_failed[host]}"}
                   if host in self._kernel_failed else {})}

    # ---- the events behind a bar -------------------------------------------------------------
    def events(self, start: int, end: int, *, host: str | None = None, tid: int | None = None,
               cpu: int | None = None, request_id: str | None = None, vm: str | None = None,
               text: str | None = None, limit: int = 500) -> dict[str, Any]:
        """The events in [start, end] (inclusive: a bar's closing event is at its end) matching
        every filter given: host, cpu, a thread (its tid column, a sched field naming it, or —
        on a kernel host — the events on a CPU while it ran there), a request, a VM (name or
        instance), a text in the name or fields. The first `limit` by time, and the total."""
        s = self.summary()
        start, end = max(start, (s["t0"] or 0) - 1), min(end, (s["t1"] or 0) + 1)  # no overflow below
        where, args = ["ts >= $start", "ts <= $end"], {"start": start, "end": end}
        if host is not None:
            where.append("host = $host")
            args["host"] = host
        if cpu is not None:
            where.append("cpu = $cpu")
            args["cpu"] = cpu
        if request_id is not None:
            where.append("request_id = $rid")
            args["rid"] = request_id
        if vm is not None:
            where.append("(instance = $vm OR procname = $vm OR instance IN (SELECT instance FROM vm_ids WHERE vm = $vm))")
            args["vm"] = vm
        if text:
            where.append("(name ILIKE $text ESCAPE '\\' OR fields ILIKE $text ESCAPE '\\')")
            args["text"] = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        ran = None
        if tid is not None:
            args["tid"] = tid
            mention = ("tid = $tid OR TRY_CAST(fields->>'prev_tid' AS BIGINT) = $tid OR "
                       "TRY_CAST(fields->>'next_tid' AS BIGINT) = $tid OR TRY_CAST(fields->>'tid' AS BIGINT) = $tid")
            if host is not None and host in self._cached("khosts", lambda: __import__(
                    "stacklens.models.kernel", fromlist=["kernel_hosts"]).kernel_hosts(self.store)):
                with self._lock:
                    ran = self.kernel_source(host).running(start, end + 1)
                where.append(f"({mention} OR EXISTS (SELECT 1 FROM ran WHERE ran.tid = $tid AND ran.cpu = e.cpu "
                             "AND e.ts >= ran.start AND e.ts < ran.\"end\"))")
            else:
                where.append(f"({mention})")
        sql_where = " AND ".join(where)
        with self._lock:
            con = self.con.cursor()
            try:
                from stacklens.models.correlation import vm_identities
                if vm is not None:
                    con.register("vm_ids", self._cached("vm_ids", lambda: vm_identities(self.con)))
                if ran is not None:
                    con.register("ran", ran)
                total = con.execute(f"SELECT count(*) FROM events e WHERE {sql_where}", args).fetchall()[0][0]
                rows = con.execute(f"""
                    SELECT ts, host, layer, name, cpu, tid, procname, request_id, instance, left(fields, 400)
                    FROM events e WHERE {sql_where} ORDER BY ts, src, pos LIMIT {int(limit)}""", args).fetchall()
            finally:
                con.close()
        cols = ("ts", "host", "layer", "name", "cpu", "tid", "procname", "request_id", "instance", "fields")
        return {"total": total, "limit": limit,
                "rows": [{**dict(zip(cols, r)), "ts": str(r[0])} for r in rows]}

    # ---- events per host/layer and pixel in a window (the overview; bench/view_query.py) ----
    def _density_buckets(self) -> str:
        """Events per host, layer and DENSITY_BASE_NS bucket, computed once per store content and
        kept next to the events (summaries/density-<fingerprint>.parquet); loaded into a table
        sorted by bucket so a window reads a contiguous slice. Returns the table's name."""
        def build() -> str:
            import hashlib
            from pathlib import Path
            if not isinstance(self.store.root, Path):  # a store at a URL: kept in memory only
                self.con.execute(f"""
                    CREATE TEMP TABLE density_buckets AS SELECT host, layer, ts // {DENSITY_BASE_NS} AS b,
                    count(*) AS n FROM events_raw GROUP BY ALL ORDER BY b, host, layer""")
                return "density_buckets"
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
KERNEL_THREAD_LANES = 50  # thread lanes per page of the kernel view (plus CPU and IRQ lanes)
THREAD_STATES = ("running", "runnable", "blocked", "io_wait")
STATE_LABELS = {"running": "running", "runnable": "runnable (preempted: waiting for CPU)",
                "blocked": "blocked (sleeping)", "io_wait": "blocked on I/O (uninterruptible)"}
VIEW_NOUNS = {"vm_states": "VM state changes", "tasks": "service tasks", "requests": "requests with ids",
              "migration": "live migrations", "ovs": "OvS packets", "kernel": "kernel scheduling events",
              "resources": "VM placement records"}


def bars_from_columns(columns: dict[str, list], lanes: list[str], constants: dict[str, Any]) -> list[dict]:
    """One dict per bar from a columnar answer (lane indices resolved, constants added)."""
    keys = [k for k in columns if k != "lane"]
    return [{"lane": lanes[row[0]], **dict(zip(keys, row[1:])), **constants}
            for row in zip(columns["lane"], *(columns[k] for k in keys))]


class BadParam(ValueError):
    """A request parameter that cannot be used: the web app answers 400 with this message."""


def nice_bucket(ns: int) -> int:
    """The 1-2-5 × 10^k ns at or above ns: histogram bins that read (100 ms, not 96.554 ms)."""
    k = 1
    while True:
        for m in (1, 2, 5):
            if m * k >= ns:
                return m * k
        k *= 10
