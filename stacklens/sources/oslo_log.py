"""oslo.log text logs (SPEC §3), the current and the older context format.

    2017-05-16 00:00:00.008 25746 INFO nova.osapi_compute.wsgi.server [req-… user project - - -] msg
    2024-01-02 10:00:00.123 811 DEBUG nova.compute.manager [None req-… admin admin] [instance: UUID] msg

The whole file is parsed column-wise with RE2 (pyarrow.compute) rather than line by line in
Python: one regex pass finds the headers, a second splits the context bracket. Lines without a
header are continuation lines (tracebacks) and are folded into the record above them; lines
that are neither are reported as bad and skipped. oslo.log also writes a traceback as one
header per line with the exception prefix (no context bracket): those lines, sharing the
timestamp, pid and logger of the record above, are folded as well.
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
from stacklens.sources.timefmt import local_to_epoch_ns

LEVELS = "TRACE|DEBUG|INFO|AUDIT|WARNING|WARN|ERROR|CRITICAL|FATAL"

# Optional file-name prefix (loghub concatenates several files, each line starting with the
# name of the file it came from), date, time, pid, level, logger, rest.
HEADER = (
    r"^(?:(?P<prefix>[^\s\d][^\s]*) )?"
    r"(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?)"
    r" (?P<pid>\d+) (?P<level>" + LEVELS + r") (?P<logger>\S+)(?: (?P<rest>.*))?$"
)
_HEADER_PY = re.compile(HEADER.replace("(?P<", "(?P<"))

# The context bracket: [global_request_id request_id user project domain user_domain project_domain]
CONTEXT = r"^\[(?P<ctx>[^\]]*)\](?: (?P<msg>.*))?$"
CONTEXT_IDS = (
    r"^(?:(?P<global_request_id>req-[0-9a-fA-F-]{36}|None|-) )?(?P<request_id>req-[0-9a-fA-F-]{36})"
    r"(?: (?P<user>\S+))?(?: (?P<project>\S+))?"
)
INSTANCE = r"^\[instance: (?P<instance>[0-9a-fA-F-]{36})\]"

# What a continuation line of a Python traceback looks like.
CONTINUATION = (
    r"^(?:\s|Traceback \(most recent call last\):|During handling of the above exception"
    r"|The above exception was the direct cause)"
)
EXCEPTION_LINE = r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure|Fault|Timeout|NotFound|[A-Z]\w*)(?::|$)"

BATCH_LINES = 1_000_000


class OsloLogReader(Reader):
    """Text logs written by oslo.log (Nova, Neutron, Cinder, … services)."""

    format = "oslo.log"
    layer = "app"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        text = head.decode("utf-8", "replace")
        lines = [ln for ln in text.splitlines()[:20] if ln.strip()]
        if not lines:
            return False
        hits = sum(1 for ln in lines if _HEADER_PY.match(ln))
        # A log can start with a continuation or a corrupt line; most of its head must parse.
        return hits >= max(1, len(lines) // 2)

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        text = data.decode("utf-8", "replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        service = _service_from_filename(self.path.name)
        # Batches are cut at record boundaries so that no traceback is split between batches.
        start = 0
        n = len(lines)
        while start < n:
            end = min(n, start + BATCH_LINES)
            while end < n and not _HEADER_PY.match(lines[end]):
                end += 1
            chunk = pc.utf8_rtrim(pa.array(lines[start:end], type=pa.string()), "\r")
            table = self._parse(chunk, first_line=start + 1, service=service)
            if table is not None and table.num_rows:
                self.report.rows += table.num_rows
                yield table
            self.options.progress(sum(len(s) + 1 for s in lines[start:end]))
            start = end

    def _parse(self, lines: pa.Array, first_line: int, service: str | None) -> pa.Table | None:
        n = len(lines)
        header = pc.extract_regex(lines, HEADER)  # null where the line is no header
        is_header = header.is_valid().to_numpy(zero_copy_only=False)
        blank = pc.equal(pc.utf8_trim_whitespace(lines), "").to_numpy(zero_copy_only=False)
        cont = pc.match_substring_regex(lines, CONTINUATION).to_numpy(zero_copy_only=False)
        exc = pc.match_substring_regex(lines, EXCEPTION_LINE).to_numpy(zero_copy_only=False)
        # An exception line ("ValueError: …") continues a traceback only right after one.
        prev_cont = np.concatenate([[False], cont[:-1]])
        cont = ~is_header & ~blank & (cont | (exc & prev_cont))
        record_no = np.cumsum(is_header) - 1  # record each line belongs to (-1: before any)
        bad = ~is_header & ~blank & ~(cont & (record_no >= 0))
        for i in np.flatnonzero(bad):
            self.report.skip(first_line + int(i))
        if not is_header.any():
            return None

        h = header.filter(pa.array(is_header))
        idx = np.flatnonzero(is_header)
        date, time_, pid = h.field("date"), h.field("time"), h.field("pid")
        level, logger, rest = h.field("level"), h.field("logger"), h.field("rest")
        # RE2 gives "" for an optional group that did not take part in the match.
        prefix = _empty_null(h.field("prefix"))
        rest = pc.if_else(rest.is_valid(), rest, "")
        ts = local_to_epoch_ns(date, time_, self.options.tz)

        # oslo.log's exception prefix has no context bracket: such a header line with the same
        # timestamp, pid and logger as the record above is one more line of that record.
        no_ctx = ~pc.starts_with(rest, "[").to_numpy(zero_copy_only=False)
        same = np.zeros(len(idx), dtype=bool)
        if len(idx) > 1:
            m = len(idx) - 1
            same[1:] = (pc.equal(ts.slice(1), ts.slice(0, m)).to_numpy(zero_copy_only=False)
                        & pc.equal(pid.slice(1), pid.slice(0, m)).to_numpy(zero_copy_only=False)
                        & pc.equal(logger.slice(1), logger.slice(0, m)).to_numpy(zero_copy_only=False))
        folded_header = same & no_ctx
        keep = ~folded_header

        # Extra lines per kept record, in file order: continuation lines and folded headers.
        message = _message_column(rest)
        kept_no = np.cumsum(keep) - 1  # record number after folding, per header
        merged: dict[int, list[tuple[int, str]]] = {}
        for j in np.flatnonzero(folded_header):
            merged.setdefault(int(kept_no[j]), []).append((int(idx[j]), _strip_context(rest[j].as_py())))
        cont_idx = np.flatnonzero(cont & (record_no >= 0))
        if len(cont_idx):
            owners = kept_no[record_no[cont_idx]]
            texts = lines.take(pa.array(cont_idx)).to_pylist()
            for o, at, text in zip(owners, cont_idx, texts):
                merged.setdefault(int(o), []).append((int(at), text))
        extra = {k: [t for _, t in sorted(v)] for k, v in merged.items()}

        keep_arr = pa.array(keep)
        ts = ts.filter(keep_arr)
        date, time_, pid, level, logger, prefix, rest = (
            c.filter(keep_arr) for c in (date, time_, pid, level, logger, prefix, rest))
        message = message.filter(keep_arr)
        if extra:
            msgs = message.to_pylist()
            for k, more in extra.items():
                msgs[k] = "\n".join([msgs[k] or ""] + more)
            message = pa.array(msgs, type=pa.string())

        ctx = pc.extract_regex(rest, CONTEXT).field("ctx")
        ids = pc.extract_regex(ctx, CONTEXT_IDS)
        request_id = _empty_null(ids.field("request_id"))
        global_rid = _empty_null(ids.field("global_request_id"), "None", "-")
        user = _empty_null(ids.field("user"), "-")
        project = _empty_null(ids.field("project"), "-")
        instance = _empty_null(pc.extract_regex(message, INSTANCE).field("instance"))
        pos = pa.array(idx[keep] + first_line, type=pa.int64())
        procname = prefix if service is None else pc.if_else(prefix.is_valid(), prefix, service)
        procname = pc.extract_regex(procname, r"^(?P<svc>[^.]+)").field("svc")

        fields_table = pa.table({
            "level": level, "logger": logger, "global_request_id": global_rid,
            "user": user, "project": project, "message": message,
            "file": prefix if service is None else pc.if_else(prefix.is_valid(), prefix, self.path.name),
        })
        return pa.table({
            "ts": ts,
            "name": logger,
            "pid": pc.cast(pid, pa.int64()),
            "procname": procname,
            "request_id": request_id,
            "instance": instance,
            "fields": json_objects(fields_table, fields_table.column_names),
            "pos": pos,
        })


def _message_column(rest: pa.Array) -> pa.Array:
    """The message: what follows the context bracket (or all of `rest` without one)."""
    m = pc.extract_regex(rest, CONTEXT)
    msg = m.field("msg")
    has_ctx = m.is_valid()
    msg = pc.if_else(has_ctx, pc.if_else(msg.is_valid(), msg, ""), rest)
    return msg


def _strip_context(rest: str) -> str:
    m = re.match(r"^\[[^\]]*\] ?(.*)$", rest)
    return m.group(1) if m else rest


def _empty_null(a: pa.Array, *also: str) -> pa.Array:
    """Null where `a` is empty (or one of `also`, e.g. oslo.log's "-" and "None" placeholders)."""
    return pc.if_else(pc.is_in(a, pa.array(["", *also])), pa.scalar(None, pa.string()), a)


def _service_from_filename(name: str) -> str | None:
    """`nova-compute.log.1` → `nova-compute`: the service that wrote the file."""
    m = re.match(r"^([A-Za-z][\w-]*?)(?:\.log)", name)
    return m.group(1) if m else None
