"""Kernel running intervals and thread states of one time window, read from that window only.

The whole-host KernelModel (models/kernel.py) sorts every sched_switch of the host before it
can answer anything; a view that only draws [lo, hi) needs:
  * the sched_switch / sched_wakeup events of [lo, hi) (ts-bounded: the store's Parquet files
    are sorted by time, so DuckDB prunes the row groups outside the window);
  * a look-back before lo, found with ts-bounded queries over growing ranges (the window's width, at least 1 ms, then x16)
    until it holds the last sched_switch of every CPU (who was running at lo) and of every
    thread asked for (its state at lo), or reaches the trace start or LOOKBACK_MAX_NS;
  * when it reaches the trace start, each CPU's first switch (looked for after hi when the CPU
    has none before): its prev_tid ran there since the trace start, as in the whole model.
The switches the trace lacks are inferred among these rows as the whole model does.
Each row's `fields` JSON is parsed once, and the parsed ranges are kept (up to
PARSED_CACHE_ROWS rows) so later windows over the same time read only what is new.
The thread states come from the whole model's own state machine query (state_machine_sql,
same prev_state mapping) over these rows, clipped to the window, so they equal
the whole model's intervals clipped to [lo, hi) (tests/test_kernel_window.py checks this)
as long as the look-back found what it looked for within LOOKBACK_MAX_NS; what was not found
is reported in `missing_cpus` / `missing_tids` (its time before its first event in the
window is then not drawn).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import StacklensError
from stacklens.models.kernel import _ENTERED_STATE, inferred_switches, missed_switches_sql, state_machine_sql

LOOKBACK_FIRST_NS = 1_000_000  # at least 1 ms (else the window's width), xLOOKBACK_GROWTH until found
LOOKBACK_GROWTH = 16  # each look-back query costs ~10 ms however short: few, growing fast
PARSED_CACHE_ROWS = 2_000_000  # parsed sched rows kept across windows (~100 B each)
LOOKBACK_MAX_NS = 60_000_000_000  # a minute: beyond it a thread's state at lo is left unknown
_CLOCK_MARGIN_NS = 1_000  # the raw-time bounds are widened by this, then cut exactly on synced ts


class KernelWindow:
    """Windowed kernel queries on one host's kernel partition (its own DuckDB connection)."""

    def __init__(self, store, host: str) -> None:
        self.host = host
        self.con: duckdb.DuckDBPyConnection = store.connect(host=host, layer="kernel")
        self._clock = {h: t for h, t in store.clocks().items() if t.quality != "identity"}.get(host)
        lo, hi, n = self.con.execute("SELECT min(ts), max(ts), count(*) FROM events").fetchall()[0]
        if not n:
            raise StacklensError(f"host {host!r}: no kernel events in the store")
        self.span_start, self.span_end = int(lo), int(hi)
        self.cpus = [r[0] for r in self.con.execute(
            "SELECT DISTINCT cpu FROM events_raw WHERE name = 'sched_switch' AND cpu IS NOT NULL ORDER BY 1").fetchall()]
        self.missing_cpus: list[int] = []
        self.missing_tids: list[int] = []
        self._last: dict | None = None  # the last window's parsed rows and look-back
        self._cache: list[tuple[int, int, pa.Table]] = []  # (a, b, parsed sched rows of [a, b))
        self._first_after: dict[int, pa.Table] = {}  # cpu → its first switch after a window near the start
        self._view_con: duckdb.DuckDBPyConnection | None = None

    # ---- time bounds ------------------------------------------------------------------------
    def _raw(self, ts: int) -> int:
        """The raw timestamp whose synchronized time is about `ts` (inverse of ClockTransform)."""
        c = self._clock
        if c is None:
            return ts
        return ts - c.offset_ns - round((ts - c.offset_ns - c.base_ns) * c.drift / (1.0 + c.drift))

    def _between(self, a: int, b: int) -> str:
        """SQL condition for a <= ts < b: a raw-ts bound first (row groups are pruned on it)."""
        if self._clock is None:
            return f"ts_raw >= {int(a)} AND ts_raw < {int(b)}"
        return (f"ts_raw >= {self._raw(a) - _CLOCK_MARGIN_NS} AND ts_raw < {self._raw(b) + _CLOCK_MARGIN_NS}"
                f" AND ts >= {int(a)} AND ts < {int(b)}")

    def _sched_rows(self, a: int, b: int) -> pa.Table:
        """The sched_switch / sched_wakeup(_new) rows of [a, b), their `fields` JSON parsed once
        per row (one json_extract_string of every key needed, not one ->> per key)."""
        return self.con.sql(f"""
            SELECT ts, cpu, src, pos, name = 'sched_switch' AS is_switch,
                   CAST(coalesce(j[1], j[2]) AS BIGINT) AS prev_tid, CAST(coalesce(j[3], j[4]) AS BIGINT) AS next_tid,
                   j[5] AS prev_state, j[6] AS next_comm, CAST(coalesce(j[7], j[8]) AS BIGINT) AS woken_tid,
                   j[9] AS prev_comm
            FROM (SELECT ts, cpu, src, pos, name,
                         json_extract_string(fields, ['prev_tid', 'prev_pid', 'next_tid', 'next_pid', 'prev_state',
                                                      'next_comm', 'tid', 'pid', 'prev_comm']) AS j
                  FROM events WHERE {self._between(a, b)}
                    AND (name = 'sched_switch' AND cpu IS NOT NULL OR name IN ('sched_wakeup', 'sched_wakeup_new')))
            """).to_arrow_table()

    def _parsed(self, a: int, b: int) -> pa.Table:
        """The parsed sched rows of [a, b): ranges parsed for earlier windows (a view pans and
        zooms over the same time) come from memory, only the gaps are read; at most
        PARSED_CACHE_ROWS rows are kept (beyond, the cache starts over)."""
        pieces, cursor, added = [], a, []
        for ra, rb, table in self._cache:  # sorted, disjoint
            if rb <= cursor or ra >= b:
                continue
            if ra > cursor:
                gap = self._sched_rows(cursor, ra)
                pieces.append(gap)
                added.append((cursor, ra, gap))
            if ra >= cursor and rb <= b:
                pieces.append(table)
            else:
                x, y = max(ra, cursor), min(rb, b)
                pieces.append(table.filter(pc.and_(pc.greater_equal(table["ts"], x), pc.less(table["ts"], y))))
            cursor = rb
        if cursor < b:
            gap = self._sched_rows(cursor, b)
            pieces.append(gap)
            added.append((cursor, b, gap))
        if added:
            if sum(t.num_rows for _, _, t in self._cache + added) > PARSED_CACHE_ROWS:
                self._cache = []
            merged: list[tuple[int, int, pa.Table]] = []
            for ra, rb, table in sorted(self._cache + added, key=lambda r: r[0]):
                if merged and merged[-1][1] == ra:  # adjacent ranges become one table
                    merged[-1] = (merged[-1][0], rb, pa.concat_tables([merged[-1][2], table]))
                else:
                    merged.append((ra, rb, table))
            self._cache = merged
        return pa.concat_tables(pieces) if pieces else self._sched_rows(a, a)

    # ---- look-back ----------------------------------------------------------------------------
    def _rows(self, lo: int, hi: int, *, cpus: set[int] = frozenset(), tids: set[int] = frozenset()
              ) -> tuple[pa.Table, set[int], set[int]]:
        """The sched rows of [back, hi), back grown from lo (the window's width, at least 1 ms,
        then x16) until they hold a switch of every CPU in `cpus` and of every thread in `tids`
        (as prev or next), or reach the trace start or LOOKBACK_MAX_NS. Each range is read and
        parsed once: the parsed look-back of the last window is kept, so running() and
        thread_states() of the same window share it. Returns (rows, cpus not found, tids not found)."""
        c = self._last
        if c is None or c["lo"] != lo or c["hi"] != hi:
            c = self._last = {"lo": lo, "hi": hi, "parts": [self._parsed(lo, hi)], "step_hi": lo,
                              "length": max(LOOKBACK_FIRST_NS, hi - lo), "cpus": set(), "tids": set()}
        floor = max(self.span_start, lo - LOOKBACK_MAX_NS)
        while (cpus - c["cpus"] or tids - c["tids"]) and c["step_hi"] > floor:
            step_lo = max(floor, lo - c["length"])
            part = self._parsed(step_lo, c["step_hi"])
            switches = part.filter(part["is_switch"])
            c["cpus"].update(v for v in pc.unique(switches["cpu"]).to_pylist() if v is not None)
            c["tids"].update(v for v in pc.unique(pa.chunked_array(
                switches["prev_tid"].chunks + switches["next_tid"].chunks, pa.int64())).to_pylist() if v is not None)
            c["parts"].append(part)
            c["step_hi"], c["length"] = step_lo, c["length"] * LOOKBACK_GROWTH
        rows = pa.concat_tables(c["parts"][::-1])
        if c["step_hi"] <= self.span_start:  # the rows hold every switch from the trace start to hi
            rows = self._with_leading(rows, hi)
            switches = rows.filter(rows["is_switch"])
            c["cpus"].update(v for v in pc.unique(switches["cpu"]).to_pylist() if v is not None)
            c["tids"].update(v for v in pc.unique(switches["next_tid"]).to_pylist() if v is not None)
        key = (len(c["parts"]), rows.num_rows)
        if c.get("inferred_key") != key:
            c["inferred_key"], c["with_inferred"] = key, self._with_inferred(rows)
        return c["with_inferred"], set(cpus) - c["cpus"], set(tids) - c["tids"]

    def _with_inferred(self, rows: pa.Table) -> pa.Table:
        """`rows` plus the switches the trace lacks among them, inferred as the whole model does
        (kernel.inferred_switches). A switch whose predecessor on its CPU lies before the look-back
        is not checked: only windows whose look-back reaches past such a gap differ."""
        self.con.register("_kw_all", rows)
        try:
            missed = self.con.sql(missed_switches_sql("(SELECT * FROM _kw_all WHERE is_switch)")).to_arrow_table()
        finally:
            self.con.unregister("_kw_all")
        if not missed.num_rows:
            return rows
        a, b = pc.min(missed["since"]).as_py(), pc.max(missed["ts"]).as_py() + 1
        inferred = inferred_switches(self.con, missed, self.host, self._between(a, b))
        n = inferred.num_rows
        columns = {"is_switch": pa.repeat(pa.scalar(True), n), "woken_tid": pa.nulls(n, rows.schema.field("woken_tid").type)}
        extra = pa.table({f.name: (columns[f.name] if f.name in columns else inferred[f.name].cast(f.type))
                          for f in rows.schema}, schema=rows.schema)
        return pa.concat_tables([rows, extra])

    def _first_switch_after(self, cpu: int, at: int) -> pa.Table:
        """The first sched_switch of `cpu` at or after `at`, asked only when the CPU has none
        between the trace start and `at` (so it is the CPU's first, cached): ts-bounded reads over
        growing ranges, as the look-back's; one row, or none when the CPU never switches."""
        if cpu in self._first_after:
            return self._first_after[cpu]
        length, a, found = LOOKBACK_FIRST_NS, at, None
        while a <= self.span_end:
            b = min(self.span_end + 1, a + length)
            part = self._parsed(a, b)
            part = part.filter(pc.and_(part["is_switch"], pc.equal(part["cpu"], cpu)))
            if part.num_rows:
                found = part.sort_by([("ts", "ascending"), ("src", "ascending"), ("pos", "ascending")]).slice(0, 1)
                break
            a, length = b, length * LOOKBACK_GROWTH
        self._first_after[cpu] = found if found is not None else part.slice(0, 0)
        return self._first_after[cpu]

    def _with_leading(self, rows: pa.Table, hi: int) -> pa.Table:
        """`rows` (every sched row from the trace start to hi) plus, per CPU whose first switch
        comes after the trace start, a switch-in of that switch's prev_tid at the trace start:
        the whole model's rule that a CPU's first switched-out thread ran there since the start."""
        switches = rows.filter(rows["is_switch"]).sort_by([("cpu", "ascending"), ("ts", "ascending"),
                                                            ("src", "ascending"), ("pos", "ascending")])
        cpu = switches["cpu"].to_numpy(zero_copy_only=False)
        heads = np.flatnonzero(np.r_[True, cpu[1:] != cpu[:-1]]) if len(cpu) else np.empty(0, np.int64)
        firsts = [switches.take(pa.array(heads))]
        present = set(cpu[heads].tolist())
        firsts += [self._first_switch_after(c, hi) for c in self.cpus if c not in present]
        first = pa.concat_tables(firsts)
        first = first.filter(pc.greater(first["ts"], self.span_start))
        if not first.num_rows:
            return rows
        n = first.num_rows
        # a switch at the trace start into the first switch's prev_tid (no thread switched out)
        pseudo = first
        for name, column in (("ts", pa.array([self.span_start] * n, first.schema.field("ts").type)),
                             ("next_tid", first["prev_tid"]), ("next_comm", first["prev_comm"]),
                             ("prev_tid", pa.nulls(n, first.schema.field("prev_tid").type)),
                             ("prev_state", pa.nulls(n, first.schema.field("prev_state").type))):
            pseudo = pseudo.set_column(pseudo.schema.get_field_index(name), name, column)
        return pa.concat_tables([pseudo, rows])

    # ---- public -------------------------------------------------------------------------------
    def running(self, lo: int, hi: int) -> pa.Table:
        """cpu, tid, comm, start, end: who ran on each CPU, clipped to [lo, hi) (tid 0 = idle)."""
        lo, hi = int(lo), int(hi)
        rows, missing, _ = self._rows(lo, hi, cpus=set(self.cpus))
        self.missing_cpus = sorted(missing)
        self.con.register("_kw_rows", rows)
        return self.con.sql(f"""
            WITH sw AS (SELECT * FROM _kw_rows WHERE is_switch),
            before AS (  -- per CPU, the last switch before lo: who was running at lo
              SELECT * FROM sw WHERE ts < {lo}
              QUALIFY row_number() OVER (PARTITION BY cpu ORDER BY ts DESC, src DESC, pos DESC) = 1
            ), used AS (SELECT * FROM before UNION ALL SELECT * FROM sw WHERE ts >= {lo}),
            iv AS (
              SELECT cpu, next_tid AS tid, next_comm AS comm, ts AS start,
                     coalesce(lead(ts) OVER (PARTITION BY cpu ORDER BY ts, src, pos), {self.span_end}) AS "end"
              FROM used
            )
            SELECT cpu, tid, comm, greatest(start, {lo}) AS start, least("end", {hi}) AS "end"
            FROM iv WHERE "end" > {lo} AND least("end", {hi}) > greatest(start, {lo})
            ORDER BY cpu, start""").to_arrow_table()

    def thread_states(self, tids: list[int], lo: int, hi: int,
                      states: tuple[str, ...] = ("running", "runnable")) -> pa.Table:
        """tid, state, start, end of `tids` clipped to [lo, hi) (only `states`), with the
        whole model's rules: switch-in → running, switch-out → what prev_state says,
        first wakeup after a block → runnable (preempted = runnable after a switch-out in R)."""
        lo, hi = int(lo), int(hi)
        tids = sorted({int(t) for t in tids if t})
        empty = pa.table({"tid": pa.array([], pa.int64()), "state": pa.array([], pa.string()),
                          "start": pa.array([], pa.int64()), "end": pa.array([], pa.int64())})
        if not tids:
            self.missing_tids = []
            return empty
        self.con.register("_kw_tids", pa.table({"tid": pa.array(tids, pa.int64())}))
        rows, _, missing = self._rows(lo, hi, tids=set(tids))
        self.missing_tids = sorted(missing)
        self.con.register("_kw_rows", rows)
        return self.con.sql(f"""
            WITH sw AS (
              SELECT *, {_ENTERED_STATE} AS entered FROM _kw_rows
              WHERE is_switch AND ( prev_tid IN (SELECT tid FROM _kw_tids) OR next_tid IN (SELECT tid FROM _kw_tids))
            ), wakeups AS (
              SELECT ts, src, pos, cpu, woken_tid AS tid FROM _kw_rows WHERE NOT is_switch
            ), merged AS ({state_machine_sql("sw", "wakeups", self.span_end, "tid IN (SELECT tid FROM _kw_tids)")}
            )
            SELECT tid, state, greatest(start, {lo}) AS start, least("end", {hi}) AS "end" FROM merged
            WHERE state IN ({", ".join(f"'{s}'" for s in states)}) AND "end" > {lo} AND start < {hi}
              AND least("end", {hi}) > greatest(start, {lo})
            ORDER BY tid, start""").to_arrow_table()

    def syscalls_irqs(self, tids: list[int], lo: int, hi: int, running: pa.Table | None = None
                      ) -> tuple[pa.Table, pa.Table]:
        """(tid, call, start, end) of the system calls of `tids` and (cpu, kind, what, start,
        end) of the interrupts, both from the events of [lo, hi) (an entry and its exit both in
        the window); `running`: this window's running(lo, hi), when already read."""
        from stacklens.models.kernel_intervals import irq_intervals_sql, syscall_intervals_sql, syscall_irq_events_sql
        lo, hi = int(lo), int(hi)
        if running is None:
            running = self.running(lo, hi)
        ev = self.con.sql(syscall_irq_events_sql(f"ts >= {lo} AND ts < {hi}")).to_arrow_table()
        con = self.view_con
        con.register("kev", ev)
        con.register("running", running)
        con.register("shown", pa.table({"tid": pa.array(sorted({int(t) for t in tids}), pa.int64())}))
        sys = con.sql(syscall_intervals_sql("kev", "running", "r.tid IN (SELECT tid FROM shown)")).to_arrow_table()
        irq = con.sql(irq_intervals_sql("kev")).to_arrow_table()
        return sys, irq

    def processes(self) -> dict[int, tuple[int, str | None]]:
        """tid → (pid, name) from the trace's fork and state-dump events."""
        from stacklens.models.kernel_intervals import processes_of
        return processes_of(self.con)

    # ---- what the web view queries: the window's relations in view_con ----------------------
    @property
    def view_con(self) -> duckdb.DuckDBPyConnection:
        """An in-memory connection over this reader's window tables (a new one costs ~17 ms)."""
        if self._view_con is None:
            self._view_con = duckdb.connect()
        return self._view_con

    def stage_running(self, lo: int, hi: int) -> None:
        """`w_running` (and `w_running_by_tid`: the same rows) in view_con: running(lo, hi)."""
        self._staged_running = self.running(lo, hi)
        self.view_con.register("w_running", self._staged_running)
        self.view_con.register("w_running_by_tid", self._staged_running)

    def stage_threads(self, tids: list[int], lo: int, hi: int, states: tuple[str, ...]) -> None:
        """`w_states`, `w_sys`, `w_irq` in view_con: thread_states and syscalls_irqs of the window."""
        self.view_con.register("w_states", self.thread_states(tids, lo, hi, states=states))
        sys, irq = self.syscalls_irqs(tids, lo, hi, self._staged_running)
        self.view_con.register("w_sys", sys)
        self.view_con.register("w_irq", irq)
