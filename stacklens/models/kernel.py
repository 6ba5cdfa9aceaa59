"""Kernel-layer models built as array transforms over the store (SPEC §4 Kernel, §7).

Everything here is DuckDB SQL over the `events` view of one host's kernel partition:
  * running intervals: sched_switch sorted by (cpu, ts); consecutive switches on a CPU bound
    the time `next_tid` ran there (the last one runs to the end of the trace, and the first
    one's `prev_tid` ran there since the trace start); a switch whose prev_tid is not the thread
    the CPU's previous switch put there shows a switch the trace lacks, put right after that
    thread's last event on the CPU (inferred_switches; `missed_switches()` lists them);
  * thread states: per tid, every switch-in starts `running`, every switch-out starts what
    `prev_state` says the thread entered (runnable = preempted, blocked, io_wait = D state,
    exited), the first wakeup after a blocking switch-out starts `runnable`, the first switch-out
    on a CPU means running since the trace start; before the first evidence a thread is `unknown`;
  * the thread running on each CPU at any instant (ASOF join on the running intervals), which
    gives LTTng events without a tid context their thread (syscalls, block requests);
  * process names over time from fork / exec / statedump / sched_switch comms.

Field names of both LTTng (prev_tid, next_tid, tid) and ftrace (prev_pid, next_pid, pid) are
accepted, and prev_state as LTTng's number or ftrace's letters (R, R+, S, D, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from stacklens.errors import StacklensError

STATES = ("running", "runnable", "blocked", "io_wait", "exited", "unknown")

# prev_state → the state a thread entered when switched out. LTTng gives the kernel's task
# state bits (0 = TASK_RUNNING; preemption may add a high "max" bit such as 2048 or 256, whose
# low byte is 0), ftrace gives letters ("R", "R+", "S", "D", "X", "Z", "I", ...).
_ENTERED_STATE = """
CASE
  WHEN prev_state IS NULL THEN 'unknown'
  WHEN regexp_full_match(prev_state, '-?[0-9]+') THEN
    CASE WHEN (CAST(prev_state AS BIGINT) & 255) = 0 THEN 'runnable'
         WHEN (CAST(prev_state AS BIGINT) & (16 | 32 | 64)) <> 0 THEN 'exited'
         WHEN (CAST(prev_state AS BIGINT) & 2) <> 0 THEN 'io_wait'
         ELSE 'blocked' END
  WHEN prev_state LIKE 'R%' OR prev_state = 'W' THEN 'runnable'  -- W: waking
  WHEN prev_state LIKE '%D%' THEN 'io_wait'
  WHEN prev_state LIKE 'X%' OR prev_state LIKE 'Z%' THEN 'exited'
  ELSE 'blocked'
END"""

SYSCALL_ENTRY = ("name LIKE 'syscall\\_entry\\_%' ESCAPE '\\' OR name LIKE 'compat\\_syscall\\_entry\\_%' ESCAPE '\\'"
                 " OR (name LIKE 'sys\\_%' ESCAPE '\\') OR name = 'sys_enter'")
SYSCALL_EXIT = ("name LIKE 'syscall\\_exit\\_%' ESCAPE '\\' OR name LIKE 'compat\\_syscall\\_exit\\_%' ESCAPE '\\'"
                " OR name LIKE 'sys\\_exit\\_%' ESCAPE '\\' OR name IN ('exit_syscall', 'sys_exit')")


# The sched_switch rows of one host (parameter $host), fields by LTTng's or ftrace's names.
SWITCH_ROWS_SQL = """
            SELECT ts, cpu, src, pos,
                   CAST(coalesce(j[1], j[2]) AS BIGINT) AS prev_tid, CAST(coalesce(j[3], j[4]) AS BIGINT) AS next_tid,
                   j[5] AS prev_state, j[6] AS prev_comm, j[7] AS next_comm
            FROM (SELECT ts, cpu, src, pos,  -- each row's JSON parsed once for every key
                         json_extract_string(fields, ['prev_tid', 'prev_pid', 'next_tid', 'next_pid',
                                                      'prev_state', 'prev_comm', 'next_comm']) AS j
                  FROM events WHERE host = $host AND name = 'sched_switch' AND cpu IS NOT NULL)"""

# How the names a thread is given are ordered: by time, and names given at one instant (ftrace
# times are microseconds: an exec and a switch can share one) as the trace gives them, by
# the event's place in its source, a switch's outgoing thread before its incoming one. Order
# by time alone left ties to DuckDB's window sort: a renamed thread's name at that instant
# could come out either way.
NAME_ORDER = "since, src, pos, side"

# The sched_wakeup rows of one host (parameter $host): ts, src, pos, tid, cpu (the target CPU).
WAKEUP_ROWS_SQL = """
              SELECT ts, src, pos, CAST(coalesce(j[1], j[2]) AS BIGINT) AS tid,
                     CAST(coalesce(j[3], CAST(cpu AS VARCHAR)) AS INTEGER) AS cpu
              FROM (SELECT ts, src, pos, cpu, json_extract_string(fields, ['tid', 'pid', 'target_cpu']) AS j
                    FROM events WHERE host = $host AND name IN ('sched_wakeup', 'sched_wakeup_new'))"""


# A switch whose prev_tid is not the thread the CPU's previous switch put there: the trace lacks
# a switch in between. Lost events do this; so does a kernel that leaves some task's switch-outs
# out of the buffer (seen on this project's own test machine: a sandbox agent's threads are
# switched in, never out). Perfetto and Trace Compass end the thread's run at the next recorded
# switch, which hands the whole gap to the thread that was switched in and never seen again.
def missed_switches_sql(switches: str) -> str:
    """Rows of `switches` (ts, cpu, src, pos, prev_tid, next_tid, prev_comm, next_comm) whose
    prev_tid (`found_tid`) is not the previous switch's next_tid on that CPU (`hidden_tid`, in
    since `since`)."""
    return f"""
      SELECT * FROM (
        SELECT ts, cpu, src, pos, prev_tid AS found_tid, prev_comm AS found_comm,
               lag(next_tid) OVER w AS hidden_tid, lag(next_comm) OVER w AS hidden_comm, lag(ts) OVER w AS since
        FROM {switches} WINDOW w AS (PARTITION BY cpu ORDER BY ts, src, pos))
      WHERE hidden_tid <> found_tid AND since < ts"""


INFERRED_SWITCH_COLUMNS = ("ts", "cpu", "src", "pos", "prev_tid", "next_tid", "prev_state", "prev_comm", "next_comm")
MISSED_SWITCH_COLUMNS = ["cpu", "ts", "at", "prev_tid", "prev_comm", "next_tid", "next_comm"]  # missed_switches()


def inferred_switches(con: duckdb.DuckDBPyConnection, missed: pa.Table, host: str, events_where: str = "TRUE") -> pa.Table:
    """The switches the trace lacks, one per row of `missed` (missed_switches_sql): the hidden
    thread leaves its CPU for the found one right after its last sign of running there — its
    switch-in, or the last event on that CPU whose task context (ftrace's header pid, LTTng's tid
    context) is that thread. The found thread is known to be running at the next switch; the
    hidden one left no trace of running after its last event. prev_state is NULL: the hidden
    thread's state after it is unknown. Each row takes the real switch's (src, pos), so it sorts
    right before it. Columns INFERRED_SWITCH_COLUMNS plus `at` (the real switch's ts).
    The last event is found by an ASOF join (sorted, n log n): a range join would compare
    every gap with every event of its thread, quadratic on a trace where most switches disagree."""
    con.register("_missed_switches", missed)
    try:
        return con.sql(f"""
            SELECT greatest(m.since, coalesce(e.ts, m.since)) AS ts, m.cpu, m.src, m.pos,
                   m.hidden_tid AS prev_tid, m.found_tid AS next_tid, CAST(NULL AS VARCHAR) AS prev_state,
                   m.hidden_comm AS prev_comm, m.found_comm AS next_comm, m.ts AS at
            FROM _missed_switches m ASOF LEFT JOIN (
              SELECT ts, cpu, tid FROM events WHERE host = $host AND tid IS NOT NULL AND {events_where}) e
              ON e.cpu = m.cpu AND e.tid = m.hidden_tid AND m.ts > e.ts
            ORDER BY m.cpu, m.ts""", params={"host": host}).to_arrow_table()
    finally:
        con.unregister("_missed_switches")


def state_machine_sql(switches: str, wakeups: str, end_ts: int, tid_filter: str = "tid IS NOT NULL AND tid <> 0") -> str:
    """The thread state machine as one query over the tables `switches` (ts, src, pos, cpu,
    prev_tid, next_tid, entered) and `wakeups` (ts, src, pos, cpu, tid): rows tid, state, start,
    end, cpu (where the state began), consecutive equal states merged, the last one running to
    `end_ts`. A switch-in starts `running`, a switch-out what prev_state says (`entered`), the
    first wakeup after a block `runnable`. The whole-host model and the windowed view
    (kernel_window.py) both run it."""
    return f"""
      WITH raw AS (
        SELECT next_tid AS tid, ts, src, pos, cpu, 'running' AS state, 1 AS kind FROM {switches}
        UNION ALL SELECT prev_tid, ts, src, pos, cpu, entered, 0 FROM {switches}
        UNION ALL SELECT tid, ts, src, pos, cpu, 'runnable', 2 FROM {wakeups}
      ), ordered AS (
        -- at equal (ts, pos) the switch-out comes before the switch-in of the same tid
        SELECT *, last_value(CASE WHEN kind < 2 THEN state END IGNORE NULLS)
                    OVER (PARTITION BY tid ORDER BY ts, src, pos, kind
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
        FROM raw WHERE {tid_filter}
      ), transitions AS (
        -- a wakeup counts only when it ends a block; a later wakeup in the same block changes
        -- nothing and merges below
        SELECT * FROM ordered WHERE kind < 2 OR before IN ('blocked', 'io_wait') OR before IS NULL
      ), seq AS (
        SELECT tid, ts, cpu, state, lag(state) OVER w AS prev_state, lead(ts) OVER w AS next_ts
        FROM transitions WINDOW w AS (PARTITION BY tid ORDER BY ts, src, pos, kind)
      ), runs AS (
        SELECT *, sum(CASE WHEN prev_state IS DISTINCT FROM state THEN 1 ELSE 0 END)
                    OVER (PARTITION BY tid ORDER BY ts ROWS UNBOUNDED PRECEDING) AS run_no
        FROM seq
      )
      SELECT tid, any_value(state) AS state, min(ts) AS start,
             arg_max(coalesce(next_ts, {int(end_ts)}), ts) AS "end", arg_min(cpu, ts) AS cpu
      FROM runs GROUP BY tid, run_no"""


@dataclass
class TraceSpan:
    start: int
    end: int


class KernelModel:
    """The kernel models of one host. Tables are built lazily in a private DuckDB connection
    (`self.con`) as TEMP tables: switches, running, states, names, threads, name_changes."""

    def __init__(self, store, host: str) -> None:
        self.host = host
        self.con: duckdb.DuckDBPyConnection = store.connect(host=host, layer="kernel")
        span = self.con.execute("SELECT min(ts), max(ts), count(*) FROM events WHERE host = ?", [host]).fetchall()[0]
        if not span[2]:
            raise StacklensError(f"host {host!r}: no kernel events in the store")
        self.span = TraceSpan(int(span[0]), int(span[1]))
        self._built: set[str] = set()
        self.inferred: pa.Table | None = None  # the switches the trace lacks, once looked for

    # ---- building blocks -----------------------------------------------------------------
    def _need(self, table: str) -> None:
        if table in self._built:
            return
        getattr(self, f"_build_{table}")()
        self._built.add(table)

    def _build_switches(self) -> None:
        """The host's sched_switch rows, plus the switches the trace lacks (inferred_switches,
        `inferred` true), ordered by (cpu, ts, src, pos)."""
        self.con.execute(f"CREATE TEMP TABLE _recorded AS {SWITCH_ROWS_SQL}", {"host": self.host})
        missed = self.con.sql(missed_switches_sql("_recorded")).to_arrow_table()
        self.inferred = inferred_switches(self.con, missed, self.host)
        cols = ", ".join(INFERRED_SWITCH_COLUMNS)
        self.con.register("_inferred", self.inferred)
        self.con.execute(f"""
            CREATE TEMP TABLE switches AS
            SELECT {cols}, false AS inferred FROM _recorded UNION ALL SELECT {cols}, true FROM _inferred
            ORDER BY cpu, ts, src, pos, inferred DESC""")
        self.con.unregister("_inferred")
        self.con.execute("DROP TABLE _recorded")
        self.con.execute(f"ALTER TABLE switches ADD COLUMN entered VARCHAR")
        self.con.execute(f"UPDATE switches SET entered = {_ENTERED_STATE}")

    def _build_running(self) -> None:
        """One row per (cpu, interval) with the tid that ran there (0 = idle). Before the first
        switch on a CPU, its prev_tid ran there since the trace start (as Trace Compass assumes):
        a thread that never left its CPU since before the recording has no switch-in to start from."""
        self._need("switches")
        self.con.execute("""
            CREATE TEMP TABLE running AS
            WITH iv AS (
              SELECT cpu, next_tid AS tid, next_comm AS comm, ts AS start,
                     coalesce(lead(ts) OVER w, ?) AS "end", row_number() OVER w AS k, prev_tid, prev_comm
              FROM switches WINDOW w AS (PARTITION BY cpu ORDER BY ts, src, pos)
            )
            SELECT cpu, tid, comm, start, "end" FROM iv
            UNION ALL
            SELECT cpu, prev_tid, prev_comm, ?, start FROM iv WHERE k = 1 AND start > ? AND prev_tid IS NOT NULL
            ORDER BY cpu, start""", [self.span.end, self.span.start, self.span.start])

    def _build_states(self) -> None:
        """Thread state intervals: [start, end) per tid; consecutive equal states merged."""
        self._need("switches")
        start, end = self.span.start, self.span.end
        self.con.execute(f"""
            CREATE TEMP TABLE states AS
            WITH sw AS (
              SELECT ts, src, pos, cpu, prev_tid, next_tid, entered FROM switches
              UNION ALL  -- the first switch-out on a CPU: its thread ran there since the trace start
              SELECT {start}, src, pos, cpu, NULL, prev_tid, NULL FROM (
                SELECT * FROM switches QUALIFY row_number() OVER (PARTITION BY cpu ORDER BY ts, src, pos) = 1)
              WHERE ts > {start}
            ), wakeups AS ({WAKEUP_ROWS_SQL}
            ), machine AS ({state_machine_sql("sw", "wakeups", end)}
            ), firsts AS (
              SELECT tid, min(start) AS first FROM machine GROUP BY tid
            )
            SELECT tid, state, start, "end", cpu FROM machine
            WHERE state <> 'exited' AND "end" > start
            UNION ALL
            SELECT tid, 'unknown', {start}, first, NULL FROM firsts WHERE first > {start}
            ORDER BY tid, start""", {"host": self.host})

    def _build_threads(self) -> None:
        """tid → pid and names: `names` (tid, pid, name, since, how) holds each name a thread
        was given (fork, statedump, exec, a task context) and, per (tid, comm) of sched_switch,
        the last switch that showed it; `threads` the last name, pid and process per tid."""
        self._need("switches")
        self._build_thread_tables("""
              SELECT tid, NULL, comm, max(ts), 'switch' FROM (
                SELECT next_tid AS tid, next_comm AS comm, ts FROM switches
                UNION ALL SELECT prev_tid, prev_comm, ts FROM switches) GROUP BY tid, comm""")

    def _build_thread_tables(self, switch_names_sql: str) -> None:
        """`names` and `threads` (see _build_threads) with the switch names (tid, pid, name,
        since, 'switch' rows) from `switch_names_sql`."""
        self.con.execute(f"""
            CREATE TEMP TABLE names AS
            SELECT * FROM ({self._named_events_sql()}
              UNION ALL {switch_names_sql}
            ) WHERE tid IS NOT NULL AND name IS NOT NULL AND name NOT IN ('<...>', '<idle>')""", {"host": self.host})
        self.con.execute("""
            CREATE TEMP TABLE threads AS
            WITH pids AS (SELECT tid, max(pid) AS pid FROM names WHERE pid IS NOT NULL GROUP BY tid),
                 last_names AS (SELECT tid, arg_max(name, since) AS name FROM names GROUP BY tid),
                 t AS (SELECT l.tid, coalesce(p.pid, l.tid) AS pid, l.name
                       FROM last_names l LEFT JOIN pids p USING (tid))
            SELECT t.tid, t.pid, t.name, coalesce(pn.name, t.name) AS process
            FROM t LEFT JOIN last_names pn ON pn.tid = t.pid""")

    def _named_events_sql(self, order: bool = False) -> str:
        """Rows (tid, pid, name, since, how) of the events that name a thread (parameter $host);
        with `order`, also (src, pos, side) of the event, to order names given at one instant
        as the trace gives them (see NAME_ORDER)."""
        at = ", src, pos, 0 AS side" if order else ""
        first = ", arg_min(src, ts), arg_min(pos, ts), 0" if order else ""
        return f"""
              SELECT CAST(coalesce(fields->>'child_tid', fields->>'child_pid') AS BIGINT) AS tid,
                     -- ftrace's child_pid is the child's tid; LTTng's is its process id
                     CASE WHEN source = 'ftrace' THEN NULL ELSE CAST(fields->>'child_pid' AS BIGINT) END AS pid,
                     fields->>'child_comm' AS name, ts AS since, 'fork' AS how{at}
              FROM events WHERE host = $host AND name = 'sched_process_fork'
              UNION ALL
              SELECT CAST(coalesce(fields->>'tid', fields->>'pid') AS BIGINT),
                     CAST(fields->>'pid' AS BIGINT), fields->>'name', ts, 'statedump'{at}
              FROM events WHERE host = $host AND name = 'lttng_statedump_process_state'
              UNION ALL
              SELECT coalesce(CAST(fields->>'tid' AS BIGINT), tid), pid,
                     regexp_extract(fields->>'filename', '[^/]*$'), ts, 'exec'{at}
              FROM events WHERE host = $host AND name = 'sched_process_exec'
              UNION ALL
              -- sources with a task context per event (ftrace: comm-tid and the tgid column)
              SELECT tid, pid, procname, min(ts), 'event'{first} FROM events
              WHERE host = $host AND tid IS NOT NULL AND procname IS NOT NULL GROUP BY tid, pid, procname"""

    def _build_name_changes(self) -> None:
        """The name a thread had at each change (switch comms repeat: the changes only)."""
        self._need("switches")
        self.con.execute(f"""
            CREATE TEMP TABLE name_changes AS
            WITH named AS (
              SELECT * FROM ({self._named_events_sql(order=True)}
                UNION ALL SELECT next_tid, NULL, next_comm, ts, 'switch', src, pos, 1 FROM switches
                UNION ALL SELECT prev_tid, NULL, prev_comm, ts, 'switch', src, pos, 0 FROM switches
              ) WHERE tid IS NOT NULL AND name IS NOT NULL AND name NOT IN ('<...>', '<idle>'))
            SELECT tid, name, since, how, row_number() OVER (ORDER BY tid, {NAME_ORDER}) AS k FROM (
              SELECT *, lag(name) OVER (PARTITION BY tid ORDER BY {NAME_ORDER}) AS before FROM named)
            WHERE before IS DISTINCT FROM name""", {"host": self.host})

    # ---- public models -------------------------------------------------------------------
    def missed_switches(self) -> pa.Table:
        """The switches the trace lacks and where they were put (inferred_switches): cpu, ts
        (the inferred switch), at (the recorded switch that showed it), prev_tid / prev_comm
        (the thread that left unrecorded), next_tid / next_comm (the one found running)."""
        self._need("switches")
        return self.inferred.select(MISSED_SWITCH_COLUMNS)

    def running(self) -> pa.Table:
        """cpu, tid, comm, start, end: who ran on each CPU (tid 0 = idle)."""
        self._need("running")
        return self.con.sql("SELECT * FROM running ORDER BY cpu, start").to_arrow_table()

    def thread_states(self, tid: int | None = None) -> pa.Table:
        """tid, state, start, end, cpu (cpu: where the state began)."""
        self._need("states")
        where = "" if tid is None else f"WHERE tid = {int(tid)}"
        return self.con.sql(f"SELECT * FROM states {where} ORDER BY tid, start").to_arrow_table()

    def threads(self) -> pa.Table:
        """tid, pid, name (last seen), process (the name of its pid's thread)."""
        self._need("threads")
        return self.con.sql("SELECT * FROM threads ORDER BY pid, tid").to_arrow_table()

    def name_changes(self) -> pa.Table:
        """tid, name, since, how: the names each thread had over time."""
        self._need("name_changes")
        return self.con.sql("SELECT tid, name, since, how FROM name_changes ORDER BY k").to_arrow_table()

    def _range(self, start: int | None, end: int | None) -> tuple[int, int]:
        return (self.span.start if start is None else int(start), self.span.end if end is None else int(end))

    def cpu_by_thread(self, start: int | None = None, end: int | None = None) -> pa.Table:
        """tid, name, pid, process, cpu_ns, wait_cpu_ns over [start, end) (idle excluded)."""
        self._need("running")
        self._need("states")
        self._need("threads")
        lo, hi = self._range(start, end)
        return self.con.sql("""
            WITH run AS (
              SELECT tid, CAST(sum(least("end", $2) - greatest(start, $1)) AS BIGINT) AS cpu_ns
              FROM running WHERE tid <> 0 AND "end" > $1 AND start < $2 GROUP BY tid
            ), wait AS (
              SELECT tid, CAST(sum(least("end", $2) - greatest(start, $1)) AS BIGINT) AS wait_cpu_ns
              FROM states WHERE state = 'runnable' AND "end" > $1 AND start < $2 GROUP BY tid
            )
            SELECT tid, t.name, t.pid, t.process, coalesce(run.cpu_ns, 0) AS cpu_ns,
                   coalesce(wait.wait_cpu_ns, 0) AS wait_cpu_ns
            FROM run FULL JOIN wait USING (tid) LEFT JOIN threads t USING (tid)
            ORDER BY cpu_ns DESC, tid""", params=[lo, hi]).to_arrow_table()

    def cpu_by_process(self, start: int | None = None, end: int | None = None) -> pa.Table:
        """pid, process, threads, cpu_ns, wait_cpu_ns over [start, end)."""
        per_thread = self.cpu_by_thread(start, end)
        return self.con.sql("""
            SELECT coalesce(pid, tid) AS pid, any_value(process) AS process, count(*) AS threads,
                   CAST(sum(cpu_ns) AS BIGINT) AS cpu_ns, CAST(sum(wait_cpu_ns) AS BIGINT) AS wait_cpu_ns
            FROM per_thread GROUP BY ALL ORDER BY cpu_ns DESC, pid""").to_arrow_table()

    def cpu_by_cpu(self, start: int | None = None, end: int | None = None) -> pa.Table:
        """cpu, busy_ns, idle_ns, known_ns (time with a known thread), usage = busy/known."""
        self._need("running")
        lo, hi = self._range(start, end)
        return self.con.sql("""
            SELECT cpu,
                   CAST(sum(CASE WHEN tid <> 0 THEN least("end", $2) - greatest(start, $1) ELSE 0 END) AS BIGINT) AS busy_ns,
                   CAST(sum(CASE WHEN tid = 0 THEN least("end", $2) - greatest(start, $1) ELSE 0 END) AS BIGINT) AS idle_ns,
                   CAST(sum(least("end", $2) - greatest(start, $1)) AS BIGINT) AS known_ns,
                   round(busy_ns / nullif(known_ns, 0), 4) AS usage
            FROM running WHERE "end" > $1 AND start < $2 GROUP BY cpu ORDER BY cpu""", params=[lo, hi]).to_arrow_table()

    def thread_tids(self, proc: str) -> list[int]:
        """Threads whose own name or process name matches `proc`, case-insensitive: a SQL LIKE
        pattern when it holds a `%`, else a part of the name (`qemu` finds qemu-system-x86_64;
        `_` is then a plain character, as in live_migration)."""
        self._need("threads")
        if "%" not in proc:
            proc = "%" + proc.replace("\\", "\\\\").replace("_", "\\_") + "%"
        rows = self.con.execute(
            "SELECT DISTINCT tid FROM threads WHERE name ILIKE $1 ESCAPE '\\' OR process ILIKE $1 ESCAPE '\\' "
            "UNION SELECT DISTINCT tid FROM names WHERE name ILIKE $1 ESCAPE '\\'", [proc]).fetchall()
        return sorted(r[0] for r in rows if r[0] != 0)

    def preemption(self, tids: list[int], start: int | None = None, end: int | None = None) -> pa.Table:
        """For the runnable intervals of `tids`: the threads that ran on the CPU the waiting
        thread was eventually switched in on, ranked by the time they ran meanwhile
        (thesis fig. 4.24-4.25). Idle time on that CPU (wake-up latency) is not a preemptor."""
        self._need("running")
        self._need("states")
        self._need("threads")
        lo, hi = self._range(start, end)
        self.con.register("_victims", pa.table({"tid": pa.array(tids, pa.int64())}))
        return self.con.sql("""
            WITH waits AS (
              SELECT s.tid, greatest(s.start, $1) AS start, least(s."end", $2) AS "end",
                     -- the CPU of the switch-in that ends the wait
                     (SELECT r.cpu FROM running r WHERE r.tid = s.tid AND r.start = s."end" LIMIT 1) AS cpu
              FROM states s JOIN _victims v USING (tid)
              WHERE s.state = 'runnable' AND s."end" > $1 AND s.start < $2
            ), overlapping AS (
              SELECT w.tid AS victim_tid, r.tid AS preemptor_tid,
                     least(r."end", w."end") - greatest(r.start, w.start) AS ns
              FROM waits w JOIN running r
                ON r.cpu = w.cpu AND r.start < w."end" AND r."end" > w.start AND r.tid <> w.tid AND r.tid <> 0
            )
            SELECT o.preemptor_tid, pt.name AS preemptor_name, pt.process AS preemptor_process,
                   CAST(sum(o.ns) AS BIGINT) AS ns, count(DISTINCT o.victim_tid) AS victims,
                   list(DISTINCT o.victim_tid ORDER BY o.victim_tid) AS victim_tids
            FROM overlapping o LEFT JOIN threads pt ON pt.tid = o.preemptor_tid
            GROUP BY ALL ORDER BY ns DESC, preemptor_tid""", params=[lo, hi]).to_arrow_table()

    def _current_thread_of(self, view_sql: str, params: list) -> None:
        """Materialise `_with_tid`: the rows of `view_sql` with `cur_tid`, the thread running on
        their CPU at their timestamp (or their own tid column when the source has one)."""
        self._need("running")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE _evts AS {view_sql}", params)
        self.con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _with_tid AS
            SELECT e.*, coalesce(e.tid, r.tid) AS cur_tid
            FROM _evts e ASOF LEFT JOIN running r ON e.cpu = r.cpu AND e.ts >= r.start""")

    def syscalls(self) -> pa.Table:
        """Syscall latency segments: tid, syscall, start, end, duration, ret. An entry pairs
        with the next exit of the same thread (as Trace Compass does: an entry that is never
        closed is replaced by the next entry; an exit without entry is dropped)."""
        self._need("threads")
        self._current_thread_of(
            f"SELECT ts, cpu, tid, src, pos, name, fields FROM events WHERE host = ? "
            f"AND (({SYSCALL_ENTRY}) OR ({SYSCALL_EXIT}))", [self.host])
        return self.con.sql(f"""
            WITH k AS (
              SELECT *, CASE WHEN {SYSCALL_EXIT} THEN 'exit' ELSE 'entry' END AS kind
              FROM _with_tid WHERE cur_tid IS NOT NULL
            ), seq AS (
              SELECT *, lag(kind) OVER w AS prev_kind, lag(ts) OVER w AS prev_ts,
                        lag(name) OVER w AS prev_name
              FROM k WINDOW w AS (PARTITION BY cur_tid ORDER BY ts, src, pos)
            )
            SELECT s.cur_tid AS tid, t.name AS thread, t.process, t.pid,
                   regexp_replace(s.prev_name, '^((compat_)?syscall_entry_|sys_enter_|sys_)', '') AS syscall,
                   s.prev_ts AS start, s.ts AS "end", s.ts - s.prev_ts AS duration,
                   TRY_CAST(s.fields->>'ret' AS BIGINT) AS ret
            FROM seq s LEFT JOIN threads t ON t.tid = s.cur_tid
            WHERE s.kind = 'exit' AND s.prev_kind = 'entry'
            ORDER BY start""").to_arrow_table()

    def disk_requests(self) -> pa.Table:
        """Disk requests, one per completion (block_rq_complete, what the kernel's own I/O
        accounting counts): dev ("major:minor"), op (R read, W write, D discard, F flush,
        N other), rwbs, sector, nr_sector, error, tid (the thread that inserted the request, else
        the one that issued it), insert, issue, complete, queue_ns (insert → issue), service_ns
        (issue → complete).

        Matching: a completion carries the request's (dev, sector, nr_sector) as issued; flushes
        carry no position (issued at 0, completed at (sector_t)-1) and are keyed by device alone.
        Within a key, issues and completions pair first-in first-out; completions before the
        key's first issue (requests in flight when the trace started, or never issued: the empty
        pre-flush write a flush sequence completes) keep issue NULL. An issue undone by
        block_rq_requeue is dropped (the request is issued again). An insert pairs with the
        issue that follows it in its key."""
        self._need("threads")
        self._current_thread_of(
            "SELECT ts, cpu, tid, src, pos, name, fields FROM events WHERE host = ? "
            "AND name IN ('block_rq_insert', 'block_rq_issue', 'block_rq_complete', 'block_rq_requeue')",
            [self.host])
        return self.con.sql(f"""
            WITH raw AS (
              SELECT ts, src, pos, name,
                     fields->>'dev' AS dev_raw, TRY_CAST(fields->>'dev' AS UBIGINT) AS dev_t,
                     CAST(fields->>'rwbs' AS VARCHAR) AS rwbs,
                     TRY_CAST(fields->>'sector' AS UBIGINT) AS sector,
                     TRY_CAST(fields->>'nr_sector' AS BIGINT) AS nr_sector,
                     TRY_CAST(fields->>'error' AS BIGINT) AS error,
                     coalesce(TRY_CAST(fields->>'tid' AS BIGINT), cur_tid) AS tid
              FROM _with_tid
            ), b AS (
              SELECT *,
                     -- "major:minor" from the kernel's dev_t (major << 20 | minor)
                     CASE WHEN dev_t IS NULL THEN dev_raw
                          ELSE CAST(dev_t >> 20 AS VARCHAR) || ':' || CAST(dev_t & 1048575 AS VARCHAR) END AS dev,
                     -- the operation: LTTng's rwbs is a bit set (RWBS_FLAG_*), ftrace's the
                     -- kernel's letters (an optional leading F = pre-flush, then the op)
                     CASE WHEN regexp_full_match(rwbs, '[0-9]+') THEN
                            CASE WHEN (CAST(rwbs AS BIGINT) & 1) <> 0 THEN 'W'
                                 WHEN (CAST(rwbs AS BIGINT) & 2) <> 0 THEN 'D'
                                 WHEN (CAST(rwbs AS BIGINT) & (4 | 8)) <> 0 THEN 'R'
                                 WHEN (CAST(rwbs AS BIGINT) & 256) <> 0 THEN 'F' ELSE 'N' END
                          ELSE coalesce(nullif(regexp_extract(rwbs, '^F?([WDRFNE])', 1), ''), 'N') END AS op
              FROM raw
            ), keyed AS (
              SELECT *, CASE WHEN op = 'F' THEN NULL ELSE sector END AS k_sector,
                        CASE WHEN op = 'F' THEN NULL ELSE nr_sector END AS k_nr
              FROM b
            ), flow AS (
              SELECT *, lead(name) OVER w AS next_name,
                        -- the insert right before an issue (completions ignored)
                        lag(CASE WHEN name <> 'block_rq_complete' THEN name END IGNORE NULLS) OVER w AS prev_iname,
                        lag(CASE WHEN name <> 'block_rq_complete' THEN ts END IGNORE NULLS) OVER w AS prev_its,
                        lag(CASE WHEN name <> 'block_rq_complete' THEN tid END IGNORE NULLS) OVER w AS prev_itid
              FROM keyed WINDOW w AS (PARTITION BY dev, op, k_sector, k_nr ORDER BY ts, src, pos)
            ), issues AS (
              SELECT dev, op, k_sector, k_nr, ts AS issue, tid AS issue_tid,
                     CASE WHEN prev_iname = 'block_rq_insert' THEN prev_its END AS insert,
                     CASE WHEN prev_iname = 'block_rq_insert' THEN prev_itid END AS insert_tid,
                     row_number() OVER (PARTITION BY dev, op, k_sector, k_nr ORDER BY ts, src, pos) AS k
              FROM flow WHERE name = 'block_rq_issue' AND next_name IS DISTINCT FROM 'block_rq_requeue'
            ), first_issue AS (
              SELECT dev, op, k_sector, k_nr, min(issue) AS first FROM issues GROUP BY ALL
            ), completes AS (
              SELECT c.*, f.first,
                     CASE WHEN c.ts >= f.first THEN
                       row_number() OVER (PARTITION BY c.dev, c.op, c.k_sector, c.k_nr, c.ts >= f.first
                                          ORDER BY c.ts, c.src, c.pos) END AS k
              FROM flow c LEFT JOIN first_issue f
                ON c.dev = f.dev AND c.op = f.op AND c.k_sector IS NOT DISTINCT FROM f.k_sector
               AND c.k_nr IS NOT DISTINCT FROM f.k_nr
              WHERE c.name = 'block_rq_complete'
            )
            SELECT c.dev, c.op, c.rwbs, CASE WHEN c.op = 'F' THEN NULL ELSE c.sector END AS sector,
                   c.nr_sector, c.error, coalesce(i.insert_tid, i.issue_tid) AS tid,
                   i.insert, i.issue, c.ts AS complete,
                   i.issue - i.insert AS queue_ns, c.ts - i.issue AS service_ns
            FROM completes c LEFT JOIN issues i
              ON c.k IS NOT NULL AND i.k = c.k AND i.dev = c.dev AND i.op = c.op
             AND i.k_sector IS NOT DISTINCT FROM c.k_sector AND i.k_nr IS NOT DISTINCT FROM c.k_nr
             AND i.issue <= c.ts
            ORDER BY complete, c.src, c.pos""").to_arrow_table()


def kernel_hosts(store) -> list[str]:
    """Hosts that have kernel events in the store: the host=/layer=kernel partitions the
    manifests list (a file is written only with rows), not a scan of every kernel event
    (~50 ms on 5 M events, paid by the web UI's first kernel view)."""
    from urllib.parse import unquote
    hosts = set()
    for f in store.event_files(layer="kernel"):
        # a local Path or an object-store URL string: …/events/host=H/layer=kernel/file
        part = str(f).replace("\\", "/").split("/")[-3]
        if part.startswith("host="):
            hosts.add(unquote(part[5:]))
    return sorted(hosts)
