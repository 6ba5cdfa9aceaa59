"""ftrace text: tracefs `trace` / `trace_pipe` output and `trace-cmd report` (SPEC §3).

    # tracer: nop
    #           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
        bash-7863    [000] d..2.  1612.194653: sched_switch: prev_comm=bash prev_pid=7863 prev_prio=120 prev_state=R ==> next_comm=kworker/0:2 next_pid=606 next_prio=120
        bash-7863  (   7863) [000] .....  1612.189869: sched_process_fork: comm=bash pid=7863 child_comm=bash child_pid=7891
    CPU 0/KVM-1234   [001]  5678.123456: sched_switch:  CPU 0/KVM:1234 [120] R ==> swapper/1:0 [120]     (trace-cmd report)

Line = (trace-cmd: `instance: ` when recorded in a tracefs instance) task comm (may hold spaces), `-tid`, optional `(tgid)`, `[cpu]`, optional flags,
timestamp in seconds, event name, then the event's text. `key=value` fields are kept in
`fields` (value up to the next ` key=`), numbers as integers; trace-cmd's compact
sched_switch / sched_wakeup forms are turned into the same keys as the tracefs form.

Timestamps are the trace clock's, not UTC. A marker line written by the recorder
(`tracing_mark_write: stacklens_clock offset_ns=N`: trace clock + N = UTC) gives the offset;
without it the timestamps are kept as they are and the report says so.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader, json_objects
from stacklens.sources.timefmt import fits_int64

LINE = re.compile(
    r"^\s*(?:(?P<buffer>[\w.-]+):\s+)?(?P<comm>.*?)-(?P<tid>\d+)\s+(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s\d]\S*)\s+)?(?P<sec>\d+)\.(?P<frac>\d{1,9}):\s+(?P<event>[\w:.-]+):\s?(?P<text>.*)$")
FIELD = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|$)")
# trace-cmd report's sched plugin forms.
TC_SWITCH = re.compile(r"^\s*(?P<prev_comm>.*):(?P<prev_pid>\d+) \[(?P<prev_prio>-?\d+)\] (?P<prev_state>\S+) ==> "
                       r"(?P<next_comm>.*):(?P<next_pid>\d+) \[(?P<next_prio>-?\d+)\]\s*$")
TC_WAKEUP = re.compile(r"^\s*(?P<comm>.*):(?P<pid>\d+) \[(?P<prio>-?\d+)\](?: success=\d+)? CPU:(?P<target_cpu>\d+)\s*$")
# block_rq_* (insert / issue: bytes and the issuing comm; complete / requeue: the error). Older
# kernels print neither the ioprio triple nor, on complete, anything but the error.
BLOCK_RQ = re.compile(r"^(?P<major>\d+),(?P<minor>\d+) (?P<rwbs>\S*) (?:(?P<bytes>\d+) )?\((?P<cmd>[^)]*)\) "
                      r"(?P<sector>\d+) \+ (?P<nr_sector>\d+)(?: (?P<ioprio>\S+))? \[(?P<last>[^\]]*)\]\s*$")
MINORBITS = 20  # the kernel's dev_t = major << 20 | minor (what LTTng records as `dev`)
CLOCK_MARK = re.compile(r"stacklens_clock offset_ns=(-?\d+)")
INT = re.compile(r"^-?\d+$")
BATCH_LINES = 200_000


class FtraceReader(Reader):
    """tracefs trace / trace_pipe text and trace-cmd report output."""

    format = "ftrace"
    layer = "kernel"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        text = head.decode("utf-8", "replace")
        if text.startswith("# tracer:") or "TASK-PID" in text[:4096]:
            return True
        lines = [l for l in text.splitlines()[:50] if l.strip() and not l.startswith(("#", "cpus=", "version"))]
        good = sum(1 for l in lines[:20] if LINE.match(l))
        return good >= 3 and good >= len(lines[:20]) // 2

    def _offset(self) -> int:
        """The trace-clock → UTC offset from the recorder's marker (0 if none)."""
        with open(self.path, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                if "stacklens_clock" in line:
                    m = CLOCK_MARK.search(line)
                    if m:
                        return int(m.group(1))
        self.report.notes.append("no stacklens_clock marker: timestamps are the trace clock's (not UTC)")
        return 0

    def tables(self) -> Iterator[pa.Table]:
        try:
            offset = self._offset()
            f = open(self.path, "r", encoding="utf-8", errors="replace")
        except OSError as e:
            raise SourceError(f"{self.path}: cannot read ({e.strerror})") from e
        with f:
            batch: list[tuple] = []
            for pos, line in enumerate(f):
                if not line.strip() or line.startswith("#") or line.startswith(("cpus=", "version =")):
                    continue
                if line.startswith("CPU:") or line.startswith("CPU "):
                    continue  # trace-cmd's per-CPU headers
                m = LINE.match(line.rstrip("\n"))
                if m is None:
                    if "LOST" in line and "EVENTS" in line:
                        self.report.notes.append(f"line {pos + 1}: {line.strip()}")
                    else:
                        self.report.skip(pos + 1)
                    continue
                if not fits_int64(int(m.group("sec")) * 1_000_000_000 + int(m.group("frac").ljust(9, "0")) + offset):
                    self.report.skip_out_of_range([pos + 1])  # (or a marker offset that takes it out)
                    continue
                batch.append((pos, m))
                if len(batch) >= BATCH_LINES:
                    yield self._table(batch, offset)
                    batch = []
            if batch:
                yield self._table(batch, offset)

    def _table(self, batch: list[tuple], offset: int) -> pa.Table:
        n = len(batch)
        ts, cpu, tid, pid, comm, name, pos = [], [], [], [], [], [], []
        per_event: dict[str, list[int]] = defaultdict(list)
        parsed: list[dict] = []
        for i, (p, m) in enumerate(batch):
            frac = m.group("frac")
            ts.append(int(m.group("sec")) * 1_000_000_000 + int(frac.ljust(9, "0")) + offset)
            cpu.append(int(m.group("cpu")))
            tid.append(int(m.group("tid")))
            tg = m.group("tgid")
            pid.append(int(tg) if tg and tg.isdigit() else None)
            comm.append(m.group("comm").strip() or None)
            ev = m.group("event")
            if ev == "print" and "tracing_mark_write:" in m.group("text"):
                ev = "tracing_mark_write"  # trace-cmd's name for a marker; tracefs says tracing_mark_write
            name.append(ev)
            pos.append(p)
            parsed.append(_fields(ev, m.group("text")))
            per_event[ev].append(i)
        # fields JSON column-wise per event name (same keys within a name)
        fields: list[str | None] = [None] * n
        for ev, rows in per_event.items():
            keys: dict[str, None] = {}
            for r in rows:
                keys.update(dict.fromkeys(parsed[r]))
            cols = {}
            for k in keys:
                vals = [parsed[r].get(k) for r in rows]
                if all(v is None or isinstance(v, int) for v in vals):
                    # uint64 when a value needs it (a completed flush's sector is (sector_t)-1)
                    wide = any(v is not None and v >= 1 << 63 for v in vals) and all(v is None or v >= 0 for v in vals)
                    cols[k] = pa.array(vals, pa.uint64() if wide else pa.int64())
                else:
                    cols[k] = pa.array([None if v is None else str(v) for v in vals], pa.string())
            objs = json_objects(pa.table(cols)) if cols else pa.repeat(pa.scalar("{}"), len(rows))
            for r, o in zip(rows, objs.to_pylist()):
                fields[r] = o
        return pa.table({
            "ts": pa.array(ts, pa.int64()), "layer": pa.repeat(pa.scalar("kernel"), n),
            "name": pa.array(name, pa.string()), "cpu": pa.array(cpu, pa.int32()),
            "pid": pa.array(pid, pa.int64()), "tid": pa.array(tid, pa.int64()),
            "procname": pa.array(comm, pa.string()), "fields": pa.array(fields, pa.string()),
            "pos": pa.array(pos, pa.int64()),
        })


def _fields(event: str, text: str) -> dict[str, int | str]:
    if event == "sched_switch" and "prev_comm=" not in text:
        m = TC_SWITCH.match(text)
        if m:
            return {k: int(v) if INT.match(v) else v for k, v in m.groupdict().items()}
    if event.startswith("sched_wakeup") and "comm=" not in text:
        m = TC_WAKEUP.match(text)
        if m:
            return {k: int(v) if INT.match(v) else v for k, v in m.groupdict().items()}
    if event.startswith("block_rq_") and "=" not in text:
        m = BLOCK_RQ.match(text)
        if m:
            return _block_fields(event, m)
    if event in ("tracing_mark_write", "print"):
        # trace-cmd shows markers as `print: tracing_mark_write: TEXT` (or with the ip first)
        text = re.sub(r"^\s*(?:\w+:\s+)?tracing_mark_write:\s*", "", text)
        return {"text": text.strip()}
    out: dict[str, int | str] = {}
    for k, v in FIELD.findall(text.replace(" ==> ", " ")):
        v = v.strip()
        out[k] = int(v) if INT.match(v) and len(v) < 19 else v
    if not out and text.strip():
        out["text"] = text.strip()
    return out


def _block_fields(event: str, m: re.Match) -> dict[str, int | str]:
    out: dict[str, int | str] = {
        "dev": (int(m.group("major")) << MINORBITS) | int(m.group("minor")), "rwbs": m.group("rwbs"),
        # a completed flush's position prints as (sector_t)-1: kept as the kernel's value
        "sector": int(m.group("sector")), "nr_sector": int(m.group("nr_sector"))}
    if m.group("bytes") is not None:
        out["bytes"] = int(m.group("bytes"))
    if m.group("cmd"):
        out["cmd"] = m.group("cmd")
    if m.group("ioprio") is not None:
        out["ioprio"] = m.group("ioprio")
    last = m.group("last")
    if event in ("block_rq_complete", "block_rq_requeue", "block_rq_error") and INT.match(last):
        out["error"] = int(last)
    else:
        out["comm"] = last
    return out
