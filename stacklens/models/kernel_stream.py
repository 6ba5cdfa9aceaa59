"""The aggregates of `cpu`, `threads` and `preemption` for one host in one ordered pass, in
memory bounded by the host's threads and CPUs, not by its events.

KernelModel (kernel.py) materialises one host's sched_switch rows, running intervals and state
intervals as DuckDB tables: its memory grows with the host's events (~520 MB for 5 M events on
one host). The commands only need sums over those intervals, so here the host's sched_switch and
sched_wakeup rows are read once in (ts, src, pos) order — DuckDB sorts them with a memory limit,
spilling to a temporary directory past it — in Arrow batches, and folded by one compiled loop
(`_fold`) that keeps per CPU the thread running since the last switch, and per thread its open
state run. Each interval is added to the sums when it closes and then forgotten.

The semantics are the whole-host model's (its docstring and state_machine_sql):
  * running: on each CPU a switch starts `next_tid`'s interval, the next switch on that CPU or the
    trace end ends it; before a CPU's first switch, its prev_tid ran since the trace start (the
    rows that say so are put in the stream at the trace start, where the model's are); the
    switches the trace lacks are inferred by the model's own query and put in the stream;
  * states: a switch-in starts `running`, a switch-out what prev_state says (same SQL mapping),
    a wakeup `runnable` only when the last switch left the thread blocked / io_wait or there was
    none; equal consecutive states merge; `unknown` from the trace start to the first evidence;
    exited and empty intervals are left out; a state's cpu is the first known one of its run;
  * preemption: a waiting (runnable) interval of a victim belongs to the CPU of the switch-in
    that starts exactly at its end; the threads that ran on that CPU meanwhile (not idle, not
    the victim) are its preemptors. The running intervals of each CPU are kept only as far back
    as the oldest wait still open (or closed but not yet matched to its switch-in): memory is
    the longest wait's worth of switches, not the trace's.
Tables at the end are shaped by the model's own SQL (same columns, order, rounding), over the
sums instead of the intervals. tests/test_kernel_stream.py checks both against the model and
against sums computed in the test from babeltrace2's text and from plain rows.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager

import numba as nb
import numpy as np
import pyarrow as pa
from numba import types
from numba.typed import Dict

from stacklens.errors import StacklensError
from stacklens.models.kernel import (_ENTERED_STATE, MISSED_SWITCH_COLUMNS, NAME_ORDER, STATES, SWITCH_ROWS_SQL,
                                     WAKEUP_ROWS_SQL, KernelModel, inferred_switches, missed_switches_sql)

RUNNING, RUNNABLE, BLOCKED, IO_WAIT, EXITED, UNKNOWN = range(6)
assert STATES == ("running", "runnable", "blocked", "io_wait", "exited", "unknown")
K_SWITCH, K_FIRST, K_WAKEUP = 0, 1, 2  # stream row kinds (K_FIRST: a CPU's prev_tid at the trace start)

BATCH_ROWS = 1 << 18
SORT_MEMORY = "256MB"  # DuckDB's memory limit for the ordered stream: beyond it the sort spills to disk
LOG_START = 1 << 14  # running intervals kept per CPU for preemption at first (grows x2 when needed)
NULL_TID = -1  # dense id of a NULL tid; dense id 0 is tid 0 (idle)


@nb.njit(cache=True, nogil=True)
def _log_trim(now, lo, st_cur, st_start, is_victim, pend_on, pend_ws, pend_we, log_e, log_head, log_len):
    """Forget the running intervals no open wait can overlap any more (those ending at or before
    the oldest open wait's start); drop pending waits the stream has passed."""
    oldest = np.iinfo(np.int64).max
    for t in range(st_cur.shape[0]):
        if not is_victim[t]:
            continue
        if st_cur[t] == RUNNABLE and st_start[t] < oldest:
            oldest = st_start[t]
        if pend_on[t]:
            if pend_we[t] < now:
                pend_on[t] = 0
            elif pend_ws[t] < oldest:
                oldest = pend_ws[t]
    if oldest < lo:
        oldest = lo
    cap = log_e.shape[1]
    for c in range(log_len.shape[0]):
        while log_len[c] > 0 and log_e[c, log_head[c]] <= oldest:
            log_head[c] = (log_head[c] + 1) % cap
            log_len[c] -= 1


@nb.njit(cache=True, nogil=True)
def _fold(i0, ts, kind, cpu_i, cpu_raw, cpu_ok, a, b, entered, span_start, span_end, lo, hi,
          c_tid, c_start, c_has, c_sums, c_seen,
          st_cur, st_start, st_cpu, st_cpu_ok, last_sw, totals, run_ns, run_seen, wait_ns, wait_seen,
          use_log, is_victim, pend_on, pend_ws, pend_we, pre_ns, pre_seen, pairs, log_s, log_e, log_t, log_head, log_len,
          keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n, final):
    """Fold stream rows i0.. (see the module docstring); with `final`, close every open interval
    at span_end instead. Returns the row it stopped at: len(ts) when done, less when a CPU's
    interval log is full (the caller grows it and calls again from there; nothing of that row
    was applied). Sizes are checked by the caller (_check)."""
    n = ts.shape[0]
    cap = log_s.shape[1]
    if final:
        for c in range(c_tid.shape[0]):
            if c_has[c]:
                _close_run_interval(c, c_tid[c], c_start[c], span_end, lo, hi, c_sums, c_seen, run_ns, run_seen)
        for t in range(st_cur.shape[0]):
            if st_cur[t] >= 0:
                _close_state(t, span_end, st_cur, st_start, st_cpu, st_cpu_ok, totals, lo, hi, wait_ns, wait_seen,
                             keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n)
        return n
    for i in range(i0, n):
        t_now = ts[i]
        k = kind[i]
        c = cpu_i[i]
        if k == K_SWITCH:
            if use_log and c_has[c] and c_start[c] < hi:
                if log_len[c] == cap:
                    _log_trim(t_now, lo, st_cur, st_start, is_victim, pend_on, pend_ws, pend_we, log_e, log_head, log_len)
                    if 2 * log_len[c] > cap:  # still over half full: grow, so trims (O(threads)) stay rare
                        return i
                j = (log_head[c] + log_len[c]) % cap
                log_s[c, j] = c_start[c]
                log_e[c, j] = t_now
                log_t[c, j] = c_tid[c]
                log_len[c] += 1
            if c_has[c]:
                _close_run_interval(c, c_tid[c], c_start[c], t_now, lo, hi, c_sums, c_seen, run_ns, run_seen)
            c_tid[c] = b[i]
            c_start[c] = t_now
            c_has[c] = 1
            p = a[i]
            if p > 0:  # the switch-out first (the model orders kind 0 before 1 at equal rows)
                last_sw[p] = entered[i]
                _transition(p, t_now, entered[i], cpu_raw[i], True, span_start, st_cur, st_start, st_cpu,
                            st_cpu_ok, totals, lo, hi, wait_ns, wait_seen, is_victim, pend_on, pend_ws, pend_we,
                            keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n)
            q = b[i]
            if q > 0:
                last_sw[q] = RUNNING
                _transition(q, t_now, RUNNING, cpu_raw[i], True, span_start, st_cur, st_start, st_cpu,
                            st_cpu_ok, totals, lo, hi, wait_ns, wait_seen, is_victim, pend_on, pend_ws, pend_we,
                            keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n)
                if use_log and pend_on[q] and pend_we[q] == t_now:
                    # the wait that just ended was for this CPU: who ran here meanwhile
                    pend_on[q] = 0
                    ws = max(pend_ws[q], lo)
                    we = min(pend_we[q], hi)
                    if pend_we[q] > lo and pend_ws[q] < hi:
                        # the log is in time order: the first interval ending after ws by bisection
                        m0, m1 = 0, log_len[c]
                        while m0 < m1:
                            mid = (m0 + m1) // 2
                            if log_e[c, (log_head[c] + mid) % cap] > ws:
                                m1 = mid
                            else:
                                m0 = mid + 1
                        for m in range(m0, log_len[c]):
                            j = (log_head[c] + m) % cap
                            if log_s[c, j] >= we:
                                break
                            r = log_t[c, j]
                            if r > 0 and r != q and log_s[c, j] < we and log_e[c, j] > ws:
                                pre_ns[r] += min(log_e[c, j], we) - max(log_s[c, j], ws)
                                pre_seen[r] = 1
                                pairs[(np.int64(r) << 32) | np.int64(q)] = 1
        elif k == K_FIRST:
            c_tid[c] = a[i]
            c_start[c] = t_now
            c_has[c] = 1
            p = a[i]
            if p > 0:
                last_sw[p] = RUNNING
                _transition(p, t_now, RUNNING, cpu_raw[i], True, span_start, st_cur, st_start, st_cpu,
                            st_cpu_ok, totals, lo, hi, wait_ns, wait_seen, is_victim, pend_on, pend_ws, pend_we,
                            keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n)
        else:  # wakeup: counts only when it ends a block (or comes before any switch of the thread)
            p = a[i]
            if p > 0:
                before = last_sw[p]
                if before < 0 or before == BLOCKED or before == IO_WAIT:
                    _transition(p, t_now, RUNNABLE, cpu_raw[i], cpu_ok[i] != 0, span_start, st_cur, st_start,
                                st_cpu, st_cpu_ok, totals, lo, hi, wait_ns, wait_seen, is_victim, pend_on, pend_ws,
                                pend_we, keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n)
    return n


@nb.njit(cache=True, nogil=True, inline="always")
def _close_run_interval(c, tid, start, end, lo, hi, c_sums, c_seen, run_ns, run_seen):
    """A running interval [start, end) of dense `tid` on CPU c, clipped to [lo, hi)."""
    if end > lo and start < hi:
        ov = min(end, hi) - max(start, lo)
        c_seen[c] = 1
        c_sums[c, 2] += ov  # known
        if tid == 0:
            c_sums[c, 1] += ov  # idle
        elif tid > 0:
            c_sums[c, 0] += ov  # busy
            run_ns[tid] += ov
            run_seen[tid] = 1


@nb.njit(cache=True, nogil=True, inline="always")
def _emit(t, state, start, end, cpu, cpu_ok, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n):
    j = out_n[0]
    out_tid[j] = t
    out_state[j] = state
    out_start[j] = start
    out_end[j] = end
    out_cpu[j] = cpu
    out_cpu_ok[j] = cpu_ok
    out_n[0] = j + 1


@nb.njit(cache=True, nogil=True, inline="always")
def _close_state(t, end, st_cur, st_start, st_cpu, st_cpu_ok, totals, lo, hi, wait_ns, wait_seen,
                 keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n):
    s = st_cur[t]
    start = st_start[t]
    if s != EXITED and end > start:
        totals[t, s] += end - start
        if s == RUNNABLE and end > lo and start < hi:
            wait_ns[t] += min(end, hi) - max(start, lo)
            wait_seen[t] = 1
        if keep[t]:
            _emit(t, s, start, end, st_cpu[t], st_cpu_ok[t], out_tid, out_state, out_start, out_end, out_cpu,
                  out_cpu_ok, out_n)


@nb.njit(cache=True, nogil=True, inline="always")
def _transition(t, now, state, cpu, cpu_ok, span_start, st_cur, st_start, st_cpu, st_cpu_ok, totals, lo, hi,
                wait_ns, wait_seen, is_victim, pend_on, pend_ws, pend_we,
                keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n):
    cur = st_cur[t]
    if cur < 0:  # first evidence: unknown since the trace start
        if now > span_start:
            totals[t, UNKNOWN] += now - span_start
            if keep[t]:
                _emit(t, UNKNOWN, span_start, now, 0, False, out_tid, out_state, out_start, out_end, out_cpu,
                      out_cpu_ok, out_n)
    elif cur == state:
        if not st_cpu_ok[t] and cpu_ok:  # the run's cpu: its first known one
            st_cpu[t] = cpu
            st_cpu_ok[t] = True
        return
    else:
        if cur == RUNNABLE and is_victim[t] and now > st_start[t]:
            pend_on[t] = 1
            pend_ws[t] = st_start[t]
            pend_we[t] = now
        _close_state(t, now, st_cur, st_start, st_cpu, st_cpu_ok, totals, lo, hi, wait_ns, wait_seen,
                     keep, out_tid, out_state, out_start, out_end, out_cpu, out_cpu_ok, out_n)
    st_cur[t] = state
    st_start[t] = now
    st_cpu[t] = cpu
    st_cpu_ok[t] = cpu_ok


class _Ids:
    """Dense ids for tids (0 is tid 0, the idle task) or CPUs, assigned as values appear."""

    def __init__(self, seed: list[int] = ()) -> None:
        self.ids: dict[int, int] = {}
        for v in seed:
            self.ids[v] = len(self.ids)

    def map(self, values: pa.Array) -> np.ndarray:
        """Dense ids of `values` (NULL → NULL_TID), new values given the next ids."""
        valid = np.asarray(values.is_valid())
        raw = np.asarray(values.fill_null(0), dtype=np.int64)
        uniq, inverse = np.unique(raw[valid], return_inverse=True)
        ids = self.ids
        dense = np.fromiter((ids.setdefault(v, len(ids)) for v in uniq.tolist()), np.int64, len(uniq))
        out = np.full(len(raw), NULL_TID, np.int64)
        out[valid] = dense[inverse]
        return out

    def values(self) -> np.ndarray:
        out = np.empty(len(self.ids), np.int64)
        out[np.fromiter(self.ids.values(), np.int64, len(self.ids))] = np.fromiter(self.ids.keys(), np.int64,
                                                                                    len(self.ids))
        return out

    def __len__(self) -> int:
        return len(self.ids)


def _grown(arr: np.ndarray, n: int, fill=0) -> np.ndarray:
    """`arr` with its first axis at least n long (doubling), new rows set to `fill`."""
    if arr.shape[0] >= n:
        return arr
    out = np.full((max(n, 2 * arr.shape[0]),) + arr.shape[1:], fill, arr.dtype)
    out[:arr.shape[0]] = arr
    return out


class KernelStream(KernelModel):
    """The cpu / threads / preemption aggregates of one host from one ordered pass (see the
    module docstring). Thread names come from the model's own `names` / `threads` tables, built
    from aggregates (their size is the host's threads, not its switches)."""

    def __init__(self, store, host: str) -> None:
        super().__init__(store, host)
        self._tmp = tempfile.mkdtemp(prefix="stacklens-sort-")
        self.con.execute(f"SET memory_limit = '{SORT_MEMORY}'")
        self.con.execute(f"SET temp_directory = '{self._tmp}'")
        self.con.execute("SET preserve_insertion_order = false")

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _build_threads(self) -> None:
        # the switch names aggregated straight from the events (no switches table): one row per
        # (tid, comm), each switch row read once for both of its threads
        self._build_thread_tables(f"""
              SELECT x.tid, NULL, x.comm, max(ts), 'switch' FROM (
                SELECT ts, unnest([{{'tid': prev_tid, 'comm': prev_comm}}, {{'tid': next_tid, 'comm': next_comm}}]) AS x
                FROM ({SWITCH_ROWS_SQL})) GROUP BY x.tid, x.comm""")

    def _build_thread_tables(self, switch_names_sql: str) -> None:
        with self._duckdb_errors("naming its threads"):
            super()._build_thread_tables(switch_names_sql)

    def name_changes(self, tids: list[int] | None = None) -> pa.Table:
        """KernelModel.name_changes of `tids` only (all threads when None): the rows of those
        threads are filtered before they are ordered, so memory follows them, not the host."""
        self.con.register("_name_tids", pa.table({"tid": pa.array(tids or [], pa.int64())}))
        keep = "" if tids is None else "AND tid IN (SELECT tid FROM _name_tids)"
        return self.con.sql(f"""
            WITH named AS (
              SELECT * FROM ({self._named_events_sql(order=True)}
                UNION ALL SELECT x.tid, NULL, x.comm, ts, 'switch', src, pos, x.side FROM (
                  SELECT ts, src, pos, unnest([{{'tid': prev_tid, 'comm': prev_comm, 'side': 0}},
                                               {{'tid': next_tid, 'comm': next_comm, 'side': 1}}]) AS x
                  FROM ({SWITCH_ROWS_SQL}))
              ) WHERE tid IS NOT NULL AND name IS NOT NULL AND name NOT IN ('<...>', '<idle>') {keep})
            SELECT tid, name, since, how FROM (
              SELECT *, lag(name) OVER (PARTITION BY tid ORDER BY {NAME_ORDER}) AS before FROM named)
            WHERE before IS DISTINCT FROM name ORDER BY tid, {NAME_ORDER}""", params={"host": self.host}).to_arrow_table()

    # ---- the ordered stream ----------------------------------------------------------------
    def _first_switches(self, src_no: dict[str, int]) -> pa.Table:
        """Per CPU whose first switch comes after the trace start, a K_FIRST row at the trace
        start: its prev_tid ran there since (the first switch by (ts, src, pos))."""
        rows = self.con.execute(f"""
            WITH firsts AS (SELECT cpu, min(ts) AS t0 FROM events
                            WHERE host = $host AND name = 'sched_switch' AND cpu IS NOT NULL GROUP BY cpu)
            SELECT e.cpu, e.src, e.pos, CAST(coalesce(j[1], j[2]) AS BIGINT) AS prev_tid FROM (
              SELECT e.cpu, e.src, e.pos, json_extract_string(e.fields, ['prev_tid', 'prev_pid']) AS j
              FROM events e JOIN firsts f ON e.cpu = f.cpu AND e.ts = f.t0
              WHERE e.host = $host AND e.name = 'sched_switch' AND f.t0 > $start) e""",
                                {"host": self.host, "start": self.span.start}).fetchall()
        first: dict[int, tuple] = {}
        for cpu, src, pos, tid in rows:
            key = (src_no[src], pos)
            if cpu not in first or key < first[cpu][0]:
                first[cpu] = (key, tid)
        keep = [(cpu, key, tid) for cpu, (key, tid) in sorted(first.items()) if tid is not None]
        return pa.table({"ts": pa.array([self.span.start] * len(keep), pa.int64()),
                         "src_no": pa.array([k[0] for _, k, _ in keep], pa.int32()),
                         "pos": pa.array([k[1] for _, k, _ in keep], pa.int64()),
                         "cpu": pa.array([c for c, _, _ in keep], pa.int32()),
                         "a": pa.array([t for _, _, t in keep], pa.int64())})

    def _inferred_switches(self) -> pa.Table:
        """The switches the trace lacks, inferred as the whole model does (kernel.inferred_switches);
        one pass over the host's switches in (cpu, ts) order, done once."""
        if self.inferred is None:
            with self._duckdb_errors("looking for switches the trace lacks"):
                missed = self.con.sql(missed_switches_sql(f"({SWITCH_ROWS_SQL})"),
                                      params={"host": self.host}).to_arrow_table()
                self.inferred = inferred_switches(self.con, missed, self.host)
        return self.inferred

    def missed_switches(self) -> pa.Table:
        """As KernelModel.missed_switches, without materialising the host's switches."""
        return self._inferred_switches().select(MISSED_SWITCH_COLUMNS)

    def _stream(self):
        """Arrow batches of the host's scheduling rows in the model's order (ts, src, pos):
        ts, kind, cpu, a (prev_tid / the woken tid / the K_FIRST tid), b (next_tid), entered."""
        srcs = sorted(r[0] for r in self.con.execute("SELECT DISTINCT src FROM events").fetchall())
        src_no = {s: i for i, s in enumerate(srcs)}
        self.con.register("_src_no", pa.table({"src": pa.array(srcs, pa.string()),
                                               "src_no": pa.array(range(len(srcs)), pa.int32())}))
        self.con.register("_first_rows", self._first_switches(src_no))
        self.con.register("_inferred_rows", self._inferred_switches())
        codes = "[" + ", ".join(f"'{s}'" for s in STATES) + "]"
        sql = f"""
            SELECT ts, kind, cpu, a, b, entered FROM (
              SELECT ts, src_no, pos, {K_SWITCH} AS kind, cpu, prev_tid AS a, next_tid AS b,
                     CAST(list_position({codes}, {_ENTERED_STATE}) - 1 AS TINYINT) AS entered
              FROM ({SWITCH_ROWS_SQL}) JOIN _src_no USING (src)
              UNION ALL
              SELECT ts, src_no, pos, {K_WAKEUP}, cpu, tid, NULL, NULL
              FROM ({WAKEUP_ROWS_SQL}) JOIN _src_no USING (src)
              UNION ALL  -- the switches the trace lacks (kernel.inferred_switches): the hidden thread's state is unknown after
              SELECT ts, src_no, pos, {K_SWITCH}, cpu, prev_tid, next_tid, {STATES.index("unknown")}
              FROM _inferred_rows JOIN _src_no USING (src)
              UNION ALL
              SELECT ts, src_no, pos, {K_FIRST}, cpu, a, NULL, NULL FROM _first_rows
            ) ORDER BY ts, src_no, pos, kind"""
        return self.con.sql(sql, params={"host": self.host}).to_arrow_reader(BATCH_ROWS)

    def _batches(self):
        """The stream's batches; a DuckDB failure (the sort out of memory or out of disk in its
        temporary directory, a field that is not a number) becomes one line naming the host."""
        with self._duckdb_errors("reading its sched_switch / sched_wakeup events in time order"):
            reader = self._stream()
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                yield batch

    @contextmanager
    def _duckdb_errors(self, what: str):
        import duckdb
        try:
            yield
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StacklensError(f"host {self.host!r}: {what} (DuckDB memory limit {SORT_MEMORY}, spilling to "
                                 f"{self._tmp}) failed: {first}") from None

    def fold(self, lo: int, hi: int, victims: list[int] | None = None, keep: list[int] | None = None) -> "Folded":
        """Fold the host's stream over [lo, hi): per-CPU and per-thread sums; with `victims`
        (tids) the preemption sums; with `keep` (tids) their state intervals."""
        tids, cpus = _Ids([0]), _Ids()
        victim_set, keep_set = set(victims or ()), set(keep or ())
        use_log = bool(victim_set)
        T, C = 1024, 64
        c_tid = np.full(C, NULL_TID, np.int64)
        c_start = np.zeros(C, np.int64)
        c_has = np.zeros(C, np.uint8)
        c_sums = np.zeros((C, 3), np.int64)
        c_seen = np.zeros(C, np.uint8)
        st_cur = np.full(T, -1, np.int8)
        st_start = np.zeros(T, np.int64)
        st_cpu = np.zeros(T, np.int32)
        st_cpu_ok = np.zeros(T, np.bool_)
        last_sw = np.full(T, -1, np.int8)
        totals = np.zeros((T, len(STATES)), np.int64)
        run_ns = np.zeros(T, np.int64)
        run_seen = np.zeros(T, np.uint8)
        wait_ns = np.zeros(T, np.int64)
        wait_seen = np.zeros(T, np.uint8)
        is_victim = np.zeros(T, np.uint8)
        is_keep = np.zeros(T, np.uint8)
        pend_on = np.zeros(T, np.uint8)
        pend_ws = np.zeros(T, np.int64)
        pend_we = np.zeros(T, np.int64)
        pre_ns = np.zeros(T, np.int64)
        pre_seen = np.zeros(T, np.uint8)
        pairs = Dict.empty(types.int64, types.int64)
        cap = LOG_START if use_log else 1
        log_s = np.zeros((C, cap), np.int64)
        log_e = np.zeros((C, cap), np.int64)
        log_t = np.zeros((C, cap), np.int64)
        log_head = np.zeros(C, np.int64)
        log_len = np.zeros(C, np.int64)
        out: list[tuple] = []
        out_n = np.zeros(1, np.int64)
        span_start, span_end = self.span.start, self.span.end
        flagged = 0  # tids already checked against victims / keep

        def outputs(rows: int):
            return (np.empty(rows, np.int64), np.empty(rows, np.int8), np.empty(rows, np.int64),
                    np.empty(rows, np.int64), np.empty(rows, np.int32), np.empty(rows, np.bool_))

        for batch in self._batches():
            n = batch.num_rows
            if n == 0:
                continue
            ts = np.asarray(batch.column("ts"), dtype=np.int64)
            kind = np.asarray(batch.column("kind").cast(pa.int8()), dtype=np.int8)
            cpu_col = batch.column("cpu")
            cpu_ok = np.asarray(cpu_col.is_valid()).astype(np.uint8)
            cpu_raw = np.asarray(cpu_col.fill_null(0), dtype=np.int32)
            is_cpu_row = kind != K_WAKEUP
            cpu_i = np.zeros(n, np.int64)
            if is_cpu_row.any():
                cpu_i[is_cpu_row] = cpus.map(pa.array(cpu_raw[is_cpu_row]))
            a = tids.map(batch.column("a"))
            b = tids.map(batch.column("b"))
            entered = np.asarray(batch.column("entered").fill_null(UNKNOWN), dtype=np.int8)
            # sizes for the new tids / CPUs of this batch
            T = len(tids)
            if T > st_cur.shape[0]:
                st_cur, last_sw = _grown(st_cur, T, -1), _grown(last_sw, T, -1)
                st_start, st_cpu, st_cpu_ok = _grown(st_start, T), _grown(st_cpu, T), _grown(st_cpu_ok, T)
                totals, run_ns, run_seen = _grown(totals, T), _grown(run_ns, T), _grown(run_seen, T)
                wait_ns, wait_seen, is_victim, is_keep = (_grown(wait_ns, T), _grown(wait_seen, T),
                                                          _grown(is_victim, T), _grown(is_keep, T))
                pend_on, pend_ws, pend_we = _grown(pend_on, T), _grown(pend_ws, T), _grown(pend_we, T)
                pre_ns, pre_seen = _grown(pre_ns, T), _grown(pre_seen, T)
            if T > flagged:
                vals = tids.values()[flagged:T]
                if victim_set:
                    is_victim[flagged:T] = np.isin(vals, list(victim_set))
                if keep_set:
                    is_keep[flagged:T] = np.isin(vals, list(keep_set))
                flagged = T
            Cn = len(cpus)
            if Cn > c_tid.shape[0]:
                c_tid, c_start, c_has = _grown(c_tid, Cn, NULL_TID), _grown(c_start, Cn), _grown(c_has, Cn)
                c_sums, c_seen = _grown(c_sums, Cn), _grown(c_seen, Cn)
                log_s, log_e, log_t = _grown(log_s, Cn), _grown(log_e, Cn), _grown(log_t, Cn)
                log_head, log_len = _grown(log_head, Cn), _grown(log_len, Cn)
            o = outputs(2 * n if keep_set else 0)
            out_n[0] = 0
            _check(n, ts, kind, cpu_i, cpu_raw, cpu_ok, a, b, entered, st_cur.shape[0], c_tid.shape[0])
            i = 0
            while True:
                i = _fold(i, ts, kind, cpu_i, cpu_raw, cpu_ok, a, b, entered, span_start, span_end, lo, hi,
                          c_tid, c_start, c_has, c_sums, c_seen,
                          st_cur, st_start, st_cpu, st_cpu_ok, last_sw, totals, run_ns, run_seen, wait_ns, wait_seen,
                          use_log, is_victim, pend_on, pend_ws, pend_we, pre_ns, pre_seen, pairs,
                          log_s, log_e, log_t, log_head, log_len, is_keep, *o, out_n, False)
                if i >= n:
                    break
                log_s, log_e, log_t, log_head = _grow_log(log_s, log_e, log_t, log_head, log_len)
            if keep_set and out_n[0]:
                out.append(tuple(x[:out_n[0]].copy() for x in o))
        o = outputs(st_cur.shape[0] if keep_set else 0)
        out_n[0] = 0
        empty = np.zeros(0, np.int64)
        _fold(0, empty, empty.astype(np.int8), empty, empty.astype(np.int32), empty.astype(np.uint8), empty, empty,
              empty.astype(np.int8), span_start, span_end, lo, hi, c_tid, c_start, c_has, c_sums, c_seen,
              st_cur, st_start, st_cpu, st_cpu_ok, last_sw, totals, run_ns, run_seen, wait_ns, wait_seen,
              use_log, is_victim, pend_on, pend_ws, pend_we, pre_ns, pre_seen, pairs,
              log_s, log_e, log_t, log_head, log_len, is_keep, *o, out_n, True)
        if keep_set and out_n[0]:
            out.append(tuple(x[:out_n[0]].copy() for x in o))
        T, Cn = len(tids), len(cpus)
        return Folded(tids.values(), cpus.values(), c_sums[:Cn], c_seen[:Cn], totals[:T], run_ns[:T], run_seen[:T],
                      wait_ns[:T], wait_seen[:T], pre_ns[:T], pre_seen[:T],
                      np.fromiter(pairs.keys(), np.int64, len(pairs)), out)

    # ---- the commands' tables (the model's SQL over the sums) --------------------------------
    def aggregates(self, start: int | None = None, end: int | None = None, victims: list[int] | None = None,
                   keep: list[int] | None = None) -> "Aggregates":
        self._need("threads")
        lo, hi = self._range(start, end)
        return Aggregates(self, lo, hi, self.fold(lo, hi, victims, keep))


class Folded:
    """What one pass leaves: dense-id arrays (see KernelStream.fold)."""

    def __init__(self, tid_values, cpu_values, c_sums, c_seen, totals, run_ns, run_seen, wait_ns, wait_seen,
                 pre_ns, pre_seen, pair_keys, intervals) -> None:
        self.tid_values, self.cpu_values = tid_values, cpu_values
        self.c_sums, self.c_seen, self.totals = c_sums, c_seen, totals
        self.run_ns, self.run_seen, self.wait_ns, self.wait_seen = run_ns, run_seen, wait_ns, wait_seen
        self.pre_ns, self.pre_seen, self.pair_keys, self.intervals = pre_ns, pre_seen, pair_keys, intervals


class Aggregates:
    """The tables of cpu / threads / preemption from one fold, shaped like KernelModel's."""

    def __init__(self, stream: KernelStream, lo: int, hi: int, f: Folded) -> None:
        self.con, self.lo, self.hi, self.f = stream.con, lo, hi, f

    def cpu_by_cpu(self) -> pa.Table:
        f = self.f
        seen = f.c_seen.astype(bool)
        self.con.register("_cpu_sums", pa.table({
            "cpu": pa.array(f.cpu_values[seen].astype(np.int32)), "busy": f.c_sums[seen, 0],
            "idle": f.c_sums[seen, 1], "known": f.c_sums[seen, 2]}))
        return self.con.sql("""
            SELECT cpu, CAST(busy AS BIGINT) AS busy_ns, CAST(idle AS BIGINT) AS idle_ns,
                   CAST(known AS BIGINT) AS known_ns, round(busy_ns / nullif(known_ns, 0), 4) AS usage
            FROM _cpu_sums ORDER BY cpu""").to_arrow_table()

    def cpu_by_thread(self) -> pa.Table:
        f = self.f
        seen = (f.run_seen | f.wait_seen).astype(bool)
        seen[0] = False  # the idle task is not a thread
        self.con.register("_thread_sums", pa.table({
            "tid": f.tid_values[seen], "cpu_ns": f.run_ns[seen], "wait_cpu_ns": f.wait_ns[seen]}))
        return self.con.sql("""
            SELECT tid, t.name, t.pid, t.process, s.cpu_ns, s.wait_cpu_ns
            FROM _thread_sums s LEFT JOIN threads t USING (tid)
            ORDER BY cpu_ns DESC, tid""").to_arrow_table()

    def cpu_by_process(self) -> pa.Table:
        per_thread = self.cpu_by_thread()
        return self.con.sql("""
            SELECT coalesce(pid, tid) AS pid, any_value(process) AS process, count(*) AS threads,
                   CAST(sum(cpu_ns) AS BIGINT) AS cpu_ns, CAST(sum(wait_cpu_ns) AS BIGINT) AS wait_cpu_ns
            FROM per_thread GROUP BY ALL ORDER BY cpu_ns DESC, pid""").to_arrow_table()

    def time_in_state(self) -> dict[int, dict[str, int]]:
        """tid → {state: ns} over the whole trace (the threads command's summary)."""
        f = self.f
        out: dict[int, dict[str, int]] = {}
        rows, cols = np.nonzero(f.totals)
        vals = f.totals[rows, cols]
        for t, s, v in zip(f.tid_values[rows].tolist(), cols.tolist(), vals.tolist()):
            if t != 0:
                out.setdefault(t, {})[STATES[s]] = v
        return out

    def thread_states(self) -> pa.Table:
        """tid, state, start, end, cpu of the kept tids (KernelModel.thread_states' rows)."""
        f = self.f
        parts = f.intervals or [(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64),
                                 np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.bool_))]
        tid, state, start, end, cpu, cpu_ok = (np.concatenate([p[k] for p in parts]) for k in range(6))
        order = np.lexsort((start, f.tid_values[tid]))
        return pa.table({"tid": pa.array(f.tid_values[tid][order]),
                         "state": pa.array(np.array(STATES, dtype=object)[state[order]].tolist(), pa.string()),
                         "start": pa.array(start[order]), "end": pa.array(end[order]),
                         "cpu": pa.array(cpu[order], pa.int32(), mask=~cpu_ok[order])})

    def preemption(self) -> pa.Table:
        f = self.f
        keys = f.pair_keys
        self.con.register("_pairs", pa.table({"preemptor_tid": f.tid_values[keys >> 32],
                                              "victim_tid": f.tid_values[keys & 0xFFFFFFFF]}))
        seen = f.pre_seen.astype(bool)
        self.con.register("_pre_ns", pa.table({"preemptor_tid": f.tid_values[seen], "ns": f.pre_ns[seen]}))
        return self.con.sql("""
            WITH per AS (SELECT preemptor_tid, count(DISTINCT victim_tid) AS victims,
                                list(DISTINCT victim_tid ORDER BY victim_tid) AS victim_tids
                         FROM _pairs GROUP BY preemptor_tid)
            SELECT p.preemptor_tid, pt.name AS preemptor_name, pt.process AS preemptor_process,
                   CAST(n.ns AS BIGINT) AS ns, p.victims, p.victim_tids
            FROM per p JOIN _pre_ns n USING (preemptor_tid) LEFT JOIN threads pt ON pt.tid = p.preemptor_tid
            ORDER BY ns DESC, preemptor_tid""").to_arrow_table()


def _grow_log(log_s, log_e, log_t, log_head, log_len):
    """The per-CPU interval logs with twice the room, each CPU's ring unrolled from its head."""
    C, cap = log_s.shape
    out = [np.zeros((C, 2 * cap), np.int64) for _ in range(3)]
    for c in range(C):
        idx = (log_head[c] + np.arange(log_len[c])) % cap
        for src, dst in zip((log_s, log_e, log_t), out):
            dst[c, :log_len[c]] = src[c, idx]
    return out[0], out[1], out[2], np.zeros(C, np.int64)


def _check(n, ts, kind, cpu_i, cpu_raw, cpu_ok, a, b, entered, tid_room, cpu_room) -> None:
    """Every size and id the compiled loop indexes with, checked before it runs (it does no
    bounds checks of its own)."""
    arrays = (ts, kind, cpu_i, cpu_raw, cpu_ok, a, b, entered)
    if any(x.shape[0] != n for x in arrays):
        raise StacklensError("kernel stream: batch columns of different lengths")
    if n == 0:
        return
    if kind.min() < K_SWITCH or kind.max() > K_WAKEUP:
        raise StacklensError("kernel stream: bad row kind")
    for ids in (a, b):
        if ids.min() < NULL_TID or ids.max() >= min(tid_room, 1 << 31):
            raise StacklensError("kernel stream: thread id out of range")
    if cpu_i.min() < 0 or cpu_i.max() >= cpu_room:
        raise StacklensError("kernel stream: cpu id out of range")
    sw = kind == K_SWITCH
    if sw.any() and (entered[sw].min() < 0 or entered[sw].max() >= len(STATES)):
        raise StacklensError("kernel stream: bad thread state code")
