"""One host's kernel intervals for the views, built once over the whole host and kept next to
the events (store/summaries/kernel-<host>-<fingerprint>/, Parquet).

The web UI's kernel view draws, per window: who ran on each CPU, the states of up to 50
threads, their system calls and the CPUs' interrupts. Read from the window
(models/kernel_window.py) every request parses the window's sched events' JSON and replays the
state machine from a look-back: on one host of 5 M events a whole-trace window costs seconds.
Built once from the whole-host KernelModel (the same state machine) and stored as typed,
time-sorted Parquet, a window is a range read of a few columns (row groups outside it are
skipped): the answer is the same rows (tests/test_kernel_intervals.py), without the parsing.

The fingerprint covers the host's kernel files (names, sizes, mtimes), its clock transform and
SUMMARY_VERSION: new events, a new clock sync or a new layout build anew.

Both sources answer the same methods: running, thread_states, syscalls_irqs, processes, and
span_start / span_end / cpus / missing_cpus / missing_tids.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

SUMMARY_VERSION = 2  # 2: switches the trace lacks are inferred (kernel.inferred_switches)
WARM_MAX_ROWS = 4_000_000
VIEW_STATES = ("running", "runnable", "blocked", "io_wait")

# the events the view turns into system-call and interrupt intervals
SYSCALL_IRQ_EVENTS = """cpu IS NOT NULL AND (
  name LIKE 'syscall\\_%' ESCAPE '\\' OR name LIKE 'sys\\_%' ESCAPE '\\' OR name = 'exit_syscall'
  OR name IN ('irq_handler_entry', 'irq_handler_exit', 'softirq_entry', 'softirq_exit',
              'irq_softirq_entry', 'irq_softirq_exit'))"""


def syscall_irq_events_sql(where: str) -> str:
    """ts, src, pos, cpu, name, what of the system-call and interrupt events matching `where`."""
    return f"""SELECT ts, src, pos, cpu, name, coalesce(fields->>'name', fields->>'vec', fields->>'irq') AS what
               FROM events WHERE ({where}) AND {SYSCALL_IRQ_EVENTS}"""


def syscall_intervals_sql(kev: str, running: str, tid_filter: str = "TRUE") -> str:
    """tid, call, start, end: a system call from its entry to the thread's next event when that
    is an exit (the thread is who ran on the event's CPU: ASOF join on `running`)."""
    return f"""
        WITH s AS (SELECT k.ts, k.src, k.pos, k.name, r.tid FROM {kev} k ASOF JOIN {running} r
                   ON k.cpu = r.cpu AND k.ts >= r.start
                   WHERE k.name NOT LIKE '%irq%' AND ({tid_filter})),
        p AS (SELECT tid, ts, name, lead(ts) OVER w AS nts, lead(name) OVER w AS nname FROM s
              WINDOW w AS (PARTITION BY tid ORDER BY ts, src, pos))
        SELECT tid, regexp_replace(name, '^(syscall_entry_|sys_)', '') AS call, ts AS start, nts AS "end"
        FROM p WHERE (name LIKE 'syscall\\_entry\\_%' ESCAPE '\\' OR (name LIKE 'sys\\_%' ESCAPE '\\'))
          AND (nname LIKE 'syscall\\_exit\\_%' ESCAPE '\\' OR nname = 'exit_syscall')"""


def irq_intervals_sql(kev: str) -> str:
    """cpu, kind (irq / softirq), what, start, end: an *_entry to the CPU's next event of that
    kind when that is an exit."""
    return f"""
        WITH k AS (SELECT cpu, ts, src, pos, what,
                          CASE WHEN name LIKE '%softirq%' THEN 'softirq' ELSE 'irq' END AS kind,
                          name LIKE '%entry' AS entry FROM {kev} WHERE name LIKE '%irq%'),
        p AS (SELECT *, lead(ts) OVER w AS nts, lead(entry) OVER w AS nentry FROM k
              WINDOW w AS (PARTITION BY cpu, kind ORDER BY ts, src, pos))
        SELECT cpu, kind, what, ts AS start, nts AS "end" FROM p WHERE entry AND NOT nentry"""


# tid → (pid, name) from the trace's own fork and state-dump events
PROCESSES_SQL = """
    WITH f AS (
      SELECT TRY_CAST(fields->>'child_tid' AS BIGINT) AS tid, TRY_CAST(fields->>'child_pid' AS BIGINT) AS pid,
             fields->>'child_comm' AS comm, ts FROM events WHERE name = 'sched_process_fork'
      UNION ALL
      SELECT TRY_CAST(fields->>'tid' AS BIGINT), TRY_CAST(fields->>'pid' AS BIGINT), fields->>'name', ts
      FROM events WHERE name = 'lttng_statedump_process_state')
    SELECT tid, arg_max(pid, ts) AS pid, arg_max(comm, ts) AS comm FROM f WHERE tid IS NOT NULL GROUP BY tid"""


def processes_of(con: duckdb.DuckDBPyConnection, sql: str = PROCESSES_SQL) -> dict[int, tuple[int, str | None]]:
    return {int(t): (int(p) if p is not None else int(t), c) for t, p, c in con.execute(sql).fetchall()}


def _fingerprint(store, host: str) -> str:
    clock = store.clocks().get(host)
    files = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in store.event_files(host, "kernel")]
    return hashlib.sha1(repr((SUMMARY_VERSION, host, files, clock and sorted(clock.__dict__.items())))
                        .encode()).hexdigest()[:16]


def _host_tag(host: str) -> str:
    return hashlib.sha1(host.encode()).hexdigest()[:10]


class KernelIntervals:
    """The whole host's view intervals, read from their stored Parquet files (open() / build())."""

    TABLES = ("running", "states", "syscalls", "irqs", "processes")

    def __init__(self, directory: Path, host: str) -> None:
        meta = json.loads((directory / "meta.json").read_text())
        self.host, self.directory = host, directory
        self.span_start, self.span_end = int(meta["span_start"]), int(meta["span_end"])
        self.cpus: list[int] = meta["cpus"]
        self.build_seconds: float = meta.get("build_seconds", 0.0)
        self.missing_cpus: list[int] = []  # the whole host is known: nothing is ever missing
        self.missing_tids: list[int] = []
        self.arrays: dict | None = None  # warm(): the intervals in NumPy
        self.con = duckdb.connect()
        self.con.execute("SET threads TO 2")
        for t in self.TABLES:
            self.con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{directory / (t + '.parquet')}')")
        self.con.execute("CREATE VIEW running_by_tid AS SELECT * FROM running")

    def warm(self, max_rows: int = WARM_MAX_ROWS) -> None:
        """Read the intervals into NumPy (views/web/lod.py Lanes: sorted by lane and start) when
        each table holds at most max_rows rows (5 M events: ~3 M rows in all, ~100 MB): a
        window is then a binary search per lane and the level of detail one compiled pass, no
        query. Until then (or for bigger hosts) the view queries the Parquet files. Runs on
        its own cursor (a background thread may call it while requests use self.con); sets
        self.arrays last, in one assignment."""
        import pyarrow.compute as pc
        cur = self.con.cursor()
        try:
            counts = {t: cur.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in self.TABLES[:4]}
            if max(counts.values()) > max_rows:
                return

            def table(sql: str) -> dict:
                t = cur.sql(sql).to_arrow_table()
                out = {}
                for name in t.column_names:
                    col = t[name]
                    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                        enc = pc.dictionary_encode(col).combine_chunks()  # codes, not a str per row
                        out[name] = enc.indices.to_numpy(zero_copy_only=False).astype(np.int32)
                        out[name + "_names"] = np.array(enc.dictionary.to_pylist(), dtype=object)
                    else:
                        out[name] = col.to_numpy()
                return out
            run = table('SELECT cpu, tid, comm, start, "end" FROM running WHERE tid <> 0')
            st = table('SELECT tid, state, start, "end" FROM states')
            sy = table('SELECT tid, call, start, "end" FROM syscalls')
            ir = table('SELECT cpu, kind, what, start, "end" FROM irqs')
        finally:
            cur.close()
        n_states = max(1, len(st["state_names"]))
        view = np.isin(st["state_names"][st["state"]], list(VIEW_STATES)) if len(st["tid"]) else np.zeros(0, bool)
        key_room = (1 << 62) // n_states  # tid * n_states + state must not wrap (np.abs(int64 min) does)
        if len(st["tid"]) and (int(st["tid"].max()) >= key_room or int(st["tid"].min()) <= -key_room):
            return  # thread ids no lane key can hold: the view keeps querying the files
        try:
            arrays = self._lanes(run, st, sy, ir, view, n_states)
        except ValueError:  # intervals Lanes refuses (an end before its start): the files answer
            return
        arrays["running"].bars(self.span_start, self.span_start, 1)  # load the compiled pass here, not in a request
        self.arrays = arrays

    @staticmethod
    def _lanes(run: dict, st: dict, sy: dict, ir: dict, view: np.ndarray, n_states: int) -> dict:
        from stacklens.views.web.lod import Lanes
        return {
            "running": Lanes(run["cpu"].astype(np.int64), run["start"], run["end"], tid=run["tid"], comm=run["comm"]),
            "running_by_tid": Lanes(run["tid"], run["start"], run["end"], comm=run["comm"]),
            # the view's states only, one lane per (thread, state): bars come out in the order the
            # view's SQL gives them, with no sort per request
            "states": Lanes(st["tid"][view] * n_states + st["state"][view], st["start"][view], st["end"][view],
                            tid=st["tid"][view], state=st["state"][view]),
            "syscalls": Lanes(sy["tid"], sy["start"], sy["end"], call=sy["call"]),
            "irqs": Lanes(ir["cpu"].astype(np.int64) * 2 + (ir["kind_names"][ir["kind"]] == "softirq")
                          if len(ir["cpu"]) else ir["cpu"].astype(np.int64),
                          ir["start"], ir["end"], what=ir["what"]),
            "names": {"comm": run["comm_names"], "state": st["state_names"], "call": sy["call_names"],
                      "what": ir["what_names"]},
        }

    # ---- the view's level of detail from the arrays (same answers as the SQL) ---------------
    def np_in_window(self, lo: int, hi: int) -> list[int]:
        """The threads (tid <> 0) that ran in [lo, hi)."""
        return self.arrays["running_by_tid"].lanes_with(lo, hi).tolist()

    def np_names(self, tids: list[int], lo: int, hi: int) -> dict[int, str | None]:
        """tid → its name on its longest interval in [lo, hi) (ties: the earliest)."""
        r = self.arrays["running_by_tid"]
        rep, _, _, _ = r.bars(lo, hi, 1 << 62, lanes=sorted(set(tids)))  # one bar per thread
        comm = self.arrays["names"]["comm"]
        return {int(t): comm[c] for t, c in zip(r.lane[rep].tolist(), r.payload["comm"][rep].tolist())}

    def np_view(self, lo: int, hi: int, bucket: int, shown: list[int]) -> tuple[dict, dict, dict, dict]:
        """The view's (states, cpus, syscalls, irqs) columns, as its SQL gives them."""
        a, names = self.arrays, self.arrays["names"]
        st = a["states"]
        k = max(1, len(names["state"]))
        codes = [c for c, name in enumerate(names["state"].tolist()) if name in VIEW_STATES]
        rep, gs, ge, n = st.bars(lo, hi, bucket, lanes=[t * k + c for t in shown for c in codes])
        states = {"tid": st.payload["tid"][rep].tolist(), "state": names["state"][st.payload["state"][rep]].tolist(),
                  "s": gs.tolist(), "e": ge.tolist(), "n": n.tolist()}
        r = a["running"]
        rows, gs, ge, n = r.bars(lo, hi, bucket)
        cpus = {"cpu": r.lane[rows].tolist(), "tid": r.payload["tid"][rows].tolist(),
                "comm": names["comm"][r.payload["comm"][rows]].tolist(), "s": gs.tolist(), "e": ge.tolist(),
                "n": n.tolist()}
        y = a["syscalls"]
        rows, gs, ge, n = y.bars(lo, hi, bucket, lanes=shown, clip=False)
        sys = {"tid": y.lane[rows].tolist(), "call": names["call"][y.payload["call"][rows]].tolist(),
               "s": gs.tolist(), "e": ge.tolist(), "n": n.tolist()}
        q = a["irqs"]
        rows, gs, ge, n = q.bars(lo, hi, bucket, clip=False)
        irqs = {"cpu": (q.lane[rows] // 2).tolist(), "kind": np.where(q.lane[rows] % 2 == 1, "softirq", "irq").tolist(),
                "what": names["what"][q.payload["what"][rows]].tolist(), "s": gs.tolist(), "e": ge.tolist(),
                "n": n.tolist()}
        return states, cpus, sys, irqs

    # ---- where, and whether, they are stored ------------------------------------------------
    @staticmethod
    def directory(store, host: str) -> Path:
        return store.root / "summaries" / f"kernel-{_host_tag(host)}-{_fingerprint(store, host)}"

    @classmethod
    def open(cls, store, host: str) -> "KernelIntervals | None":
        """The stored intervals of the host's current kernel events, or None (not built yet)."""
        d = cls.directory(store, host)
        return cls(d, host) if (d / "meta.json").is_file() else None

    @classmethod
    def build(cls, store, host: str) -> "KernelIntervals":
        """Build from the whole-host KernelModel and store them (replacing the host's older
        ones); the events of another process building the same are not lost (atomic rename)."""
        from stacklens.models.kernel import KernelModel
        t = time.perf_counter()
        final = cls.directory(store, host)
        tmp = final.with_name(f".{final.name}.{time.time_ns()}.tmp")
        tmp.mkdir(parents=True)
        try:
            m = KernelModel(store, host)
            m._need("running")
            m._need("states")
            con = m.con
            # zero-length intervals (two switches at one instant) are never drawn: dropped, so
            # the ASOF join below sees what the windowed path sees
            con.execute(f"""COPY (SELECT cpu, tid, comm, start, "end" FROM running WHERE "end" > start
                                  ORDER BY start, cpu) TO '{tmp / 'running.parquet'}' (FORMAT parquet)""")
            states = ", ".join(f"'{s}'" for s in VIEW_STATES)
            con.execute(f"""COPY (SELECT tid, state, start, "end" FROM states WHERE state IN ({states})
                                  ORDER BY tid, start) TO '{tmp / 'states.parquet'}' (FORMAT parquet)""")
            con.execute(f"CREATE TEMP TABLE _kev AS {syscall_irq_events_sql('TRUE')}")
            con.execute(f"""CREATE TEMP VIEW _drawn AS SELECT * FROM running WHERE "end" > start""")
            con.execute(f"""COPY ({syscall_intervals_sql('_kev', '_drawn')} ORDER BY tid, start)
                            TO '{tmp / 'syscalls.parquet'}' (FORMAT parquet)""")
            con.execute(f"""COPY ({irq_intervals_sql('_kev')} ORDER BY start)
                            TO '{tmp / 'irqs.parquet'}' (FORMAT parquet)""")
            con.execute(f"COPY ({PROCESSES_SQL}) TO '{tmp / 'processes.parquet'}' (FORMAT parquet)")
            cpus = [r[0] for r in con.execute(
                "SELECT DISTINCT cpu FROM events_raw WHERE name = 'sched_switch' AND cpu IS NOT NULL ORDER BY 1").fetchall()]
            con.close()
            (tmp / "meta.json").write_text(json.dumps({
                "host": host, "span_start": m.span.start, "span_end": m.span.end, "cpus": cpus,
                "build_seconds": round(time.perf_counter() - t, 3), "version": SUMMARY_VERSION}))
            try:
                tmp.rename(final)
            except OSError:  # another process stored the same meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in final.parent.glob(f"kernel-{_host_tag(host)}-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return cls(final, host)

    # ---- the window's rows (same columns and rows as KernelWindow's) ------------------------
    @staticmethod
    def _running_sql(lo: int, hi: int, table: str = "running") -> str:
        return f"""SELECT cpu, tid, comm, greatest(start, {lo}) AS start, least("end", {hi}) AS "end" FROM {table}
                   WHERE "end" > {lo} AND start < {hi} AND least("end", {hi}) > greatest(start, {lo})"""

    @staticmethod
    def _states_sql(tids: list[int], lo: int, hi: int, states: tuple[str, ...]) -> str:
        tids = sorted({int(t) for t in tids if t}) or [-1]
        return f"""SELECT tid, state, greatest(start, {lo}) AS start, least("end", {hi}) AS "end" FROM states
                   WHERE tid IN ({", ".join(map(str, tids))}) AND state IN ({", ".join(f"'{s}'" for s in states)})
                     AND "end" > {lo} AND start < {hi} AND least("end", {hi}) > greatest(start, {lo})"""

    @staticmethod
    def _syscalls_sql(tids: list[int], lo: int, hi: int) -> str:
        tids = sorted({int(t) for t in tids}) or [-1]
        return f"""SELECT tid, call, start, "end" FROM syscalls
                   WHERE tid IN ({", ".join(map(str, tids))}) AND start >= {lo} AND "end" < {hi}"""

    @staticmethod
    def _irqs_sql(lo: int, hi: int) -> str:
        return f"""SELECT cpu, kind, what, start, "end" FROM irqs WHERE start >= {lo} AND "end" < {hi}"""

    def running(self, lo: int, hi: int) -> pa.Table:
        """cpu, tid, comm, start, end clipped to [lo, hi) (tid 0 = idle)."""
        return self.con.sql(self._running_sql(int(lo), int(hi)) + " ORDER BY cpu, start").to_arrow_table()

    def thread_states(self, tids: list[int], lo: int, hi: int,
                      states: tuple[str, ...] = ("running", "runnable")) -> pa.Table:
        """tid, state, start, end of `tids` clipped to [lo, hi) (only `states`)."""
        return self.con.sql(self._states_sql(tids, int(lo), int(hi), states) + " ORDER BY tid, start").to_arrow_table()

    def syscalls_irqs(self, tids: list[int], lo: int, hi: int, running: pa.Table | None = None
                      ) -> tuple[pa.Table, pa.Table]:
        """(tid, call, start, end) of the system calls of `tids` and (cpu, kind, what, start,
        end) of the interrupts that begin and end in [lo, hi)."""
        lo, hi = int(lo), int(hi)
        return (self.con.sql(self._syscalls_sql(tids, lo, hi)).to_arrow_table(),
                self.con.sql(self._irqs_sql(lo, hi)).to_arrow_table())

    def processes(self) -> dict[int, tuple[int, str | None]]:
        return processes_of(self.con, "SELECT tid, pid, comm FROM processes")

    # ---- what the web view queries: the window's relations in view_con ----------------------
    @property
    def view_con(self) -> duckdb.DuckDBPyConnection:
        return self.con

    def stage_running(self, lo: int, hi: int) -> None:
        """`w_running` (and `w_running_by_tid`, the same rows for queries of a few threads) in
        view_con: running(lo, hi) (views: each query reads only its columns and the row groups
        of the window, or of the threads)."""
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW w_running AS {self._running_sql(int(lo), int(hi))}")
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW w_running_by_tid AS "
                         f"{self._running_sql(int(lo), int(hi), 'running_by_tid')}")

    def stage_threads(self, tids: list[int], lo: int, hi: int, states: tuple[str, ...]) -> None:
        """`w_states`, `w_sys`, `w_irq` in view_con: thread_states and syscalls_irqs of the window."""
        lo, hi = int(lo), int(hi)
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW w_states AS {self._states_sql(tids, lo, hi, states)}")
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW w_sys AS {self._syscalls_sql(tids, lo, hi)}")
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW w_irq AS {self._irqs_sql(lo, hi)}")
