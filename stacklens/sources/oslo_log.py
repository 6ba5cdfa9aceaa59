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

DATE = r"^\d{4}-\d\d-\d\d$"
TIME = r"^\d\d:\d\d:\d\d(?:[.,]\d{1,9})?$"
LEVEL_SET = pa.array(LEVELS.split("|"))
INSTANCE_PREFIX = re.compile(r"^\[instance: [0-9a-fA-F-]{36}\] ?")
REQ_ID = r"^req-[0-9a-fA-F-]{36}$"

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
        hdr = split_headers(lines, self.options.tz)
        is_header = hdr["valid"]
        # Lines without a header are few: classify only those (blank, continuation, bad).
        blank = np.zeros(len(is_header), dtype=bool)
        cont = np.zeros(len(is_header), dtype=bool)
        exc = np.zeros(len(is_header), dtype=bool)
        other = np.flatnonzero(~is_header)
        if len(other):
            rest_lines = lines.take(pa.array(other))
            blank[other] = pc.equal(pc.utf8_trim_whitespace(rest_lines), "").to_numpy(zero_copy_only=False)
            cont[other] = pc.match_substring_regex(rest_lines, CONTINUATION).to_numpy(zero_copy_only=False)
            exc[other] = pc.match_substring_regex(rest_lines, EXCEPTION_LINE).to_numpy(zero_copy_only=False)
        # An exception line ("ValueError: …") continues a traceback only right after one.
        prev_cont = np.concatenate([[False], cont[:-1]])
        cont = ~is_header & ~blank & (cont | (exc & prev_cont))
        record_no = np.cumsum(is_header) - 1  # record each line belongs to (-1: before any)
        bad = ~is_header & ~blank & ~(cont & (record_no >= 0))
        for i in np.flatnonzero(bad)[:10]:
            self.report.skip(first_line + int(i))
        extra_bad = int(bad.sum()) - min(10, int(bad.sum()))
        if extra_bad:
            self.report.skipped += extra_bad
        if not is_header.any():
            return None

        keep_h = pa.array(is_header)
        idx = np.flatnonzero(is_header)
        ts, pid, level, logger, rest, prefix = (
            hdr[k].filter(keep_h) for k in ("ts", "pid", "level", "logger", "rest", "prefix"))
        rest = pc.if_else(rest.is_valid(), rest, "")

        # oslo.log's exception prefix has no context bracket: such a header line with the same
        # timestamp, pid and logger as the record above is one more line of that record.
        ctx, message = split_context(rest)
        no_ctx = ctx.is_null().to_numpy(zero_copy_only=False)
        same = np.zeros(len(idx), dtype=bool)
        if len(idx) > 1:
            m = len(idx) - 1
            same[1:] = (pc.equal(ts.slice(1), ts.slice(0, m)).to_numpy(zero_copy_only=False)
                        & pc.equal(pid.slice(1), pid.slice(0, m)).to_numpy(zero_copy_only=False)
                        & pc.equal(logger.slice(1), logger.slice(0, m)).to_numpy(zero_copy_only=False))
        folded_header = same & no_ctx
        keep = ~folded_header

        # Extra lines per kept record, in file order: continuation lines and folded headers.
        kept_no = np.cumsum(keep) - 1  # record number after folding, per header
        merged: dict[int, list[tuple[int, str]]] = {}
        for j in np.flatnonzero(folded_header):
            text = message[int(j)].as_py()
            # the record itself says which instance; its traceback lines repeat it
            text = INSTANCE_PREFIX.sub("", text, count=1)
            merged.setdefault(int(kept_no[j]), []).append((int(idx[j]), text))
        cont_idx = np.flatnonzero(cont & (record_no >= 0))
        if len(cont_idx):
            owners = kept_no[record_no[cont_idx]]
            texts = lines.take(pa.array(cont_idx)).to_pylist()
            for o, at, text in zip(owners, cont_idx, texts):
                merged.setdefault(int(o), []).append((int(at), text))

        keep_arr = pa.array(keep)
        ts, pid, level, logger, prefix, ctx, message = (
            c.filter(keep_arr) for c in (ts, pid, level, logger, prefix, ctx, message))
        if merged:
            msgs = message.to_pylist()
            for k, more in merged.items():
                msgs[k] = "\n".join([msgs[k] or ""] + [t for _, t in sorted(more)])
            message = pa.array(msgs, type=pa.string())

        ids = context_ids(ctx)
        instance = instance_of(message)
        pos = pa.array(idx[keep] + first_line, type=pa.int64())
        file = prefix if service is None else pc.if_else(prefix.is_valid(), prefix, self.path.name)
        procname = prefix if service is None else pc.if_else(prefix.is_valid(), prefix, service)
        procname = _nth(pc.split_pattern(procname, ".", max_splits=1), 0)

        fields_table = pa.table({
            "level": level, "logger": logger, "global_request_id": ids["global_request_id"],
            "user": ids["user"], "project": ids["project"], "message": message, "file": file,
        })
        return pa.table({
            "ts": ts,
            "name": logger,
            "pid": pc.cast(pid, pa.int64()),
            "procname": procname,
            "request_id": ids["request_id"],
            "instance": instance,
            "fields": json_objects(fields_table),
            "pos": pos,
        })


def _nth(lists: pa.Array, i: int) -> pa.Array:
    """Element `i` of each list (null where the list is shorter or null)."""
    off = lists.offsets.to_numpy()
    start = off[:-1] + i
    ok = start < off[1:]
    if lists.null_count:
        ok &= lists.is_valid().to_numpy(zero_copy_only=False)
    return lists.values.take(pa.array(np.where(ok, start, 0), mask=~ok))


def split_headers(lines: pa.Array, tz: str) -> dict:
    """Header fields of every line (null where a line has no valid header) and `valid`.

    Splitting on spaces and checking each short token is several times faster than one
    regex with captures over the whole (long) line."""
    # A line starting with something else than a digit may carry a file-name prefix.
    has_prefix = pc.fill_null(pc.invert(pc.utf8_is_digit(pc.utf8_slice_codeunits(lines, 0, 1))), False)
    n_prefixed = pc.sum(has_prefix).as_py() or 0
    if n_prefixed in (0, len(lines)):  # the usual case: all lines alike, no copy per line
        shift = 1 if n_prefixed else 0
        tok = pc.split_pattern(lines, " ", max_splits=5 + shift)
        prefix = _nth(tok, 0) if shift else pa.nulls(len(lines), pa.string())
        date, time_, pid, level, logger, rest = (_nth(tok, i + shift) for i in range(6))
    else:
        first = pc.split_pattern(lines, " ", max_splits=1)
        prefix = pc.if_else(has_prefix, _nth(first, 0), pa.scalar(None, pa.string()))
        body = pc.if_else(has_prefix, _nth(first, 1), lines)
        tok = pc.split_pattern(body, " ", max_splits=5)
        date, time_, pid, level, logger, rest = (_nth(tok, i) for i in range(6))
    valid = pc.and_(pc.match_substring_regex(date, DATE), pc.match_substring_regex(time_, TIME))
    valid = pc.and_(valid, pc.match_substring_regex(pid, r"^\d+$"))
    valid = pc.and_(valid, pc.is_in(level, LEVEL_SET))
    valid = pc.and_(valid, pc.greater(pc.utf8_length(logger), 0))
    valid = pc.fill_null(valid, False)
    ts = local_to_epoch_ns(pc.if_else(valid, date, "0000-00-00"), pc.if_else(valid, time_, "00:00:00"), tz)
    # A header whose date or time does not exist (month 13, …) makes the line no header.
    valid = pc.and_(valid, ts.is_valid())
    return {"valid": valid.to_numpy(zero_copy_only=False), "ts": ts, "pid": pid, "level": level,
            "logger": logger, "rest": rest, "prefix": prefix}


def split_context(rest: pa.Array) -> tuple[pa.Array, pa.Array]:
    """`[ctx] message` → (ctx without brackets or null, message)."""
    has_ctx = pc.and_(pc.starts_with(rest, "["), pc.invert(pc.starts_with(rest, "[instance: ")))
    parts = pc.split_pattern(rest, "] ", max_splits=1)
    head = _nth(parts, 0)
    ctx = pc.utf8_rtrim(pc.utf8_slice_codeunits(head, 1), "]")
    ctx = pc.if_else(has_ctx, ctx, pa.scalar(None, pa.string()))
    msg = pc.fill_null(_nth(parts, 1), "")
    no_ctx = pc.invert(has_ctx)
    if pc.any(no_ctx).as_py():  # few rows (exception prefix lines): the whole rest is the message
        msg = pc.replace_with_mask(msg, no_ctx, rest.filter(no_ctx))
    return ctx, msg


def context_ids(ctx: pa.Array) -> dict[str, pa.Array]:
    """Request ids, user and project from the context bracket, in either oslo.log layout:
    `req-G req-R user project …` (global id first), `None req-R …`, or `req-R user project …`."""
    tok = pc.split_pattern(ctx, " ", max_splits=4)
    t0, t1, t2, t3 = (_nth(tok, i) for i in range(4))
    null = pa.scalar(None, pa.string())
    r0 = pc.fill_null(pc.match_substring_regex(t0, REQ_ID), False)
    r1 = pc.fill_null(pc.match_substring_regex(t1, REQ_ID), False)
    placeholder0 = pc.fill_null(pc.is_in(t0, pa.array(["None", "-"])), False)
    shifted = pc.or_(pc.and_(r0, r1), pc.and_(placeholder0, r1))  # ids start at t1
    request_id = pc.if_else(shifted, t1, pc.if_else(r0, t0, null))
    global_id = pc.if_else(pc.and_(r0, r1), t0, null)
    user = pc.if_else(shifted, t2, pc.if_else(r0, t1, null))
    project = pc.if_else(shifted, t3, pc.if_else(r0, t2, null))
    return {"request_id": request_id, "global_request_id": global_id,
            "user": _placeholder_null(user), "project": _placeholder_null(project)}


def instance_of(message: pa.Array) -> pa.Array:
    """The instance uuid of oslo.log's `[instance: UUID] ` message prefix."""
    uuid = pc.utf8_slice_codeunits(message, 11, 47)
    ok = pc.and_(pc.starts_with(message, "[instance: "),
                 pc.match_substring_regex(uuid, r"^[0-9a-fA-F-]{36}$"))
    return pc.if_else(pc.fill_null(ok, False), uuid, pa.scalar(None, pa.string()))


def _placeholder_null(a: pa.Array) -> pa.Array:
    """Null where `a` is empty or oslo.log's "-" placeholder."""
    return pc.if_else(pc.fill_null(pc.is_in(a, pa.array(["", "-"])), False), pa.scalar(None, pa.string()), a)


def _service_from_filename(name: str) -> str | None:
    """`nova-compute.log.1` → `nova-compute`: the service that wrote the file."""
    m = re.match(r"^([A-Za-z][\w-]*?)(?:\.log)", name)
    return m.group(1) if m else None
