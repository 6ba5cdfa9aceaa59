"""QEMU trace events from the `log` trace backend with `-msg timestamp=on` (SPEC §3).

    28402@1795273803.910825:vm_state_notify running 0 reason 7 (finish-migrate)
    28402@1795273803.828462:migration_bitmap_sync_end dirty_pages 920
    10011@1795275099.360564:runstate_set current_run_state 9 (running) new_state 7 (finish-migrate)
    2026-11-21T15:10:26.121107Z qemu-system-x86_64: load of migration failed: Invalid argument

`<tid>@<epoch s>.<µs>:<event> <args>`; QEMU's own messages (timestamped by -msg) go to the
same log and are kept as `qemu.message` events. The arguments of the events the migration
model needs are parsed into typed fields; every event keeps its raw `args`.

The VM is not named inside the log: the lab (and a collector) names the file
`qemu-<vm>.trace.log`, and that name becomes `procname` (QEMU's `-name guest=<vm>`).
A last line without its newline was cut while being written: it is dropped and reported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stacklens.errors import SourceError
from stacklens.sources.base import Reader, json_objects
from stacklens.sources.timefmt import local_to_epoch_ns, seconds_fit_ns

TRACE_LINE = r"^(?P<tid>\d+)@(?P<sec>\d{1,12})\.(?P<usec>\d{6}):(?P<event>[A-Za-z_][\w]*)(?: (?P<args>.*))?$"
MESSAGE_LINE = (r"^(?P<date>\d{4}-\d\d-\d\d)T(?P<time>\d\d:\d\d:\d\d(?:\.\d{1,9})?)Z "
                r"(?P<prog>[\w.-]+): (?P<message>.*)$")
_TRACE_PY = re.compile(TRACE_LINE)
_MESSAGE_PY = re.compile(MESSAGE_LINE)

# Typed fields of the events the migration model reads: (field, event, regex on args, type).
ARG_FIELDS = [
    ("dirty_pages", "migration_bitmap_sync_end", r"^dirty_pages (?P<v>\d+)", pa.int64()),
    ("pending", "migrate_pending", r"^pending size (?P<v>\d+)", pa.int64()),
    ("max", "migrate_pending", r"max (?P<v>\d+)", pa.int64()),
    ("running", "vm_state_notify", r"^running (?P<v>\d+)", pa.int64()),
    ("reason", "vm_state_notify", r"reason \d+ \((?P<v>[\w-]+)\)", pa.string()),
    ("state", "migrate_set_state", r"^new state (?P<v>[\w-]+)", pa.string()),
    ("new_state", "runstate_set", r"new_state \d+ \((?P<v>[\w-]+)\)", pa.string()),
]

BATCH_LINES = 500_000


def vm_from_filename(name: str) -> str | None:
    """`qemu-instance-00000001.trace.log` → `instance-00000001`."""
    m = re.match(r"^qemu-(.+?)\.(?:trace\.log|trace|log|qmp\.jsonl|qmp)$", name)
    return m.group(1) if m else None


class QemuTraceReader(Reader):
    """QEMU's `log` trace backend output (with -msg timestamp=on)."""

    format = "qemu.trace"
    layer = "virt"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        lines = [ln for ln in head.decode("utf-8", "replace").splitlines()[:40] if ln.strip()]
        if len(head) == 16384 and len(lines) > 1:
            lines = lines[:-1]  # the head may end inside a line
        trace = sum(1 for ln in lines if _TRACE_PY.match(ln))
        message = sum(1 for ln in lines if _MESSAGE_PY.match(ln))
        return trace >= 1 and trace + message >= max(1, (len(lines) * 3) // 4)

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        if not data:
            return
        lines = data.decode("utf-8", "replace").split("\n")
        if lines[-1] == "":
            lines.pop()
        elif lines:
            # No newline at the end: the writer was cut off in this line.
            cut = lines.pop()
            self.report.skip(len(lines) + 1)
            self.report.notes.append(
                f"line {len(lines) + 1} cut short (no newline, {len(cut.encode())} bytes): dropped")
        vm = vm_from_filename(self.path.name)
        for start in range(0, len(lines), BATCH_LINES):
            chunk = pa.array(lines[start:start + BATCH_LINES], type=pa.string())
            table = self._parse(chunk, start + 1, vm)
            self.options.progress(sum(len(s) + 1 for s in lines[start:start + BATCH_LINES]))
            if table is not None:
                self.report.rows += table.num_rows
                yield table

    def _parse(self, lines: pa.Array, first_line: int, vm: str | None) -> pa.Table | None:
        lines = pc.utf8_rtrim(lines, "\r")
        trace = pc.extract_regex(lines, TRACE_LINE)
        is_trace = trace.is_valid().to_numpy(zero_copy_only=False)
        msg = pc.extract_regex(lines, MESSAGE_LINE)
        is_msg = msg.is_valid().to_numpy(zero_copy_only=False) & ~is_trace
        blank = pc.equal(pc.utf8_trim_whitespace(lines), "").to_numpy(zero_copy_only=False)
        bad = ~is_trace & ~is_msg & ~blank
        for i in np.flatnonzero(bad):
            self.report.skip(first_line + int(i))
        out = []
        trace_lines = np.flatnonzero(is_trace)
        if len(trace_lines):
            t = trace.filter(pa.array(is_trace))
            sec = pc.cast(t.field("sec"), pa.int64())
            usec = pc.cast(t.field("usec"), pa.int64())
            # seconds of up to 12 digits: the range is checked before the product (never wrapped)
            fit = seconds_fit_ns(sec.to_numpy(), usec.to_numpy() * 1000)
            if not fit.all():
                self.report.skip_out_of_range(trace_lines[~fit] + first_line)
                trace_lines, t = trace_lines[fit], t.filter(pa.array(fit))
                sec, usec = sec.filter(pa.array(fit)), usec.filter(pa.array(fit))
        if len(trace_lines):
            ts = pc.add(pc.multiply(sec, 1_000_000_000), pc.multiply(usec, 1000))
            name = t.field("event")
            args = pc.if_else(t.field("args").is_valid(), pc.utf8_rtrim_whitespace(t.field("args")), "")
            typed = {"args": args}
            for field_name, event, pattern, typ in ARG_FIELDS:
                value = pc.extract_regex(args, pattern)
                value = pc.if_else(pc.equal(name, event), value.field("v"), pa.scalar(None, pa.string()))
                typed[field_name] = value.cast(typ)
            fields = json_objects(pa.table(typed))
            out.append(pa.table({
                "ts": ts, "name": name, "tid": pc.cast(t.field("tid"), pa.int64()),
                "procname": pa.repeat(pa.scalar(vm, pa.string()), len(t)),
                "fields": fields,
                "pos": pa.array(trace_lines + first_line, type=pa.int64()),
            }))
        if is_msg.any():
            m = msg.filter(pa.array(is_msg))
            ts = local_to_epoch_ns(m.field("date"), m.field("time"), "UTC")
            fields = json_objects(pa.table({"program": m.field("prog"), "message": m.field("message")}))
            out.append(pa.table({
                "ts": ts, "name": pa.repeat(pa.scalar("qemu.message"), len(m)),
                "tid": pa.nulls(len(m), pa.int64()),
                "procname": pa.repeat(pa.scalar(vm, pa.string()), len(m)),
                "fields": fields,
                "pos": pa.array(np.flatnonzero(is_msg) + first_line, type=pa.int64()),
            }))
        if not out:
            return None
        table = pa.concat_tables(out)
        valid = table.column("ts").is_valid()
        if not pc.all(valid).as_py():  # a message line with an impossible date
            for p in table.column("pos").filter(pc.invert(valid)).to_pylist():
                self.report.skip(p)
            table = table.filter(valid)
        return table.take(pc.sort_indices(table, [("pos", "ascending")]))

