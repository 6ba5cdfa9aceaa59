"""oslo.log text logs (SPEC §3), the current and the older context format.

    2017-05-16 00:00:00.008 25746 INFO nova.osapi_compute.wsgi.server [req-… user project - - -] msg
    2024-01-02 10:00:00.123 811 DEBUG nova.compute.manager [None req-… admin admin] [instance: UUID] msg

The file is read in blocks; a compiled scanner (oslo_scan.py) finds every header field's byte
offsets in one pass and the columns, the `fields` JSON included, are built from those offsets
(textscan.py) without a Python object per line. Lines without a header are continuation lines
(tracebacks) and are folded into the record above them; lines that are neither are reported
as bad and skipped. oslo.log also writes a traceback as one
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

from stacklens.errors import SourceError, StacklensError
from stacklens.sources.base import Reader
from stacklens.sources.oslo_scan import (
    CTX, GREQ, INSTANCE, LEVEL, LEVEL_BYTES, LEVEL_LENS, LOGGER, MSG,
    PREFIX, PROJECT, REQ, USER, same_record_as_previous, scan_headers)
from stacklens.sources.jsonscan import json_members
from stacklens.sources.textscan import find_byte, line_bounds, string_column
from stacklens.sources.timefmt import MAX_ZONE_OFFSET_NS, shift_fits, tz_offset_seconds

LEVELS = "TRACE|DEBUG|INFO|AUDIT|WARNING|WARN|ERROR|CRITICAL|FATAL"

# Optional file-name prefix (loghub concatenates several files, each line starting with the
# name of the file it came from), date, time, pid, level, logger, rest.
HEADER = (
    r"^(?:(?P<prefix>[^\s\d][^\s]*) )?"
    r"(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?)"
    r" (?P<pid>\d+) (?P<level>" + LEVELS + r") (?P<logger>\S+)(?: (?P<rest>.*))?$"
)
_HEADER_PY = re.compile(HEADER.replace("(?P<", "(?P<"))

INSTANCE_PREFIX_B = re.compile(rb"^\[instance: [0-9a-fA-F-]{36}\] ?")

# What a continuation line of a Python traceback looks like.
CONTINUATION_PY = re.compile(
    r"^(?:\s|Traceback \(most recent call last\):|During handling of the above exception"
    r"|The above exception was the direct cause)"
)
EXCEPTION_LINE_PY = re.compile(
    r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure|Fault|Timeout|NotFound|[A-Z]\w*)(?::|$)")

# Text read per parse: a block's parse needs about ten times its size in temporary arrays
# (32 MB blocks: 525 MB peak RSS on a 297 MB log; 8 MB: 319 MB, and no slower)
CHUNK_BYTES = 8 << 20
MAX_REPORTED = 10


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
        with self.open_binary() as f:
            carry = b""
            first_line = 1
            while True:
                try:
                    block = f.read(CHUNK_BYTES)
                except OSError as e:
                    raise SourceError(self.path, f"read error: {e.strerror}") from None
                eof = len(block) < CHUNK_BYTES  # a short read of a regular file: its end
                data = carry + block
                if not data:
                    break
                buf = np.frombuffer(data, np.uint8)
                starts, ends = line_bounds(buf)
                n_lines = len(starts)
                if not eof:
                    complete = n_lines - (0 if data.endswith(b"\n") else 1)
                    cut = _last_record_start(buf, starts[:complete], ends[:complete])
                    cut = cut if cut > 0 else complete
                    if cut == 0:
                        carry = data
                        continue
                    end_byte = int(starts[cut]) if cut < n_lines else len(data)
                    carry = data[end_byte:]
                    part = data[:end_byte]
                else:
                    carry = b""
                    part = data
                table, used_lines = self._parse_block(part, first_line)
                first_line += used_lines
                self.options.progress(len(part))
                if table is not None and table.num_rows:
                    self.report.rows += table.num_rows
                    yield table
                if eof:
                    break

    def _parse_block(self, data: bytes, first_line: int) -> tuple[pa.Table | None, int]:
        """Parse whole lines `data`; returns the table and the number of lines consumed."""
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:  # keep the text, mark what cannot be decoded
            self.report.notes.append("invalid UTF-8 replaced") if not self.report.notes.count(
                "invalid UTF-8 replaced") else None
            data = data.decode("utf-8", "replace").encode("utf-8")
        buf = np.frombuffer(data, np.uint8)
        starts, ends = line_bounds(buf)
        n = len(starts)
        is_header, ts, pid, level, off, ts_ok = _scan(buf, starts, ends)

        # Lines without a header are few: classify only those (blank, continuation, bad).
        other = np.flatnonzero(~is_header)
        blank = np.zeros(n, dtype=bool)
        cont = np.zeros(n, dtype=bool)
        exc = np.zeros(n, dtype=bool)
        texts = {int(i): data[starts[i]:ends[i]].decode("utf-8") for i in other}
        for i, t in texts.items():
            blank[i] = not t.strip()
            cont[i] = bool(CONTINUATION_PY.match(t))
            exc[i] = bool(EXCEPTION_LINE_PY.match(t))
        # An exception line ("ValueError: …") continues a traceback only right after one.
        prev_cont = np.concatenate([[False], cont[:-1]])
        cont = ~is_header & ~blank & (cont | (exc & prev_cont))
        record_no = np.cumsum(is_header) - 1  # record each line belongs to (-1: before any)
        bad = ~is_header & ~blank & ~(cont & (record_no >= 0))
        bad_idx = np.flatnonzero(bad)
        for i in bad_idx[:MAX_REPORTED]:
            self.report.skip(first_line + int(i))
        if len(bad_idx) > MAX_REPORTED:
            self.report.skipped += len(bad_idx) - MAX_REPORTED
        idx = np.flatnonzero(is_header)
        if not len(idx):
            return None, n

        # oslo.log's exception prefix: header lines with the same timestamp, pid and logger as
        # the record above and no context bracket are more lines of that record.
        folded = same_record_as_previous(buf, idx, ts, pid, off)
        keep = ~folded
        kept_no = np.cumsum(keep) - 1  # record number after folding, per header
        rec = idx[keep]  # line index of each record's header

        # Messages that gain lines are rebuilt in a side buffer appended to `buf`.
        extra: dict[int, list[tuple[int, bytes]]] = {}
        for j in np.flatnonzero(folded):
            i = idx[j]
            text = data[off[MSG, 0, i]:off[MSG, 1, i]]
            extra.setdefault(int(kept_no[j]), []).append((int(i), INSTANCE_PREFIX_B.sub(b"", text, count=1)))
        cont_idx = np.flatnonzero(cont & (record_no >= 0))
        for i in cont_idx:
            extra.setdefault(int(kept_no[record_no[i]]), []).append((int(i), data[starts[i]:ends[i]]))
        msg_s = off[MSG, 0, rec].copy()
        msg_e = off[MSG, 1, rec].copy()
        side = bytearray()
        base = len(buf)
        for k, more in extra.items():
            i = rec[k]
            text = b"\n".join([data[off[MSG, 0, i]:off[MSG, 1, i]]] + [t for _, t in sorted(more)])
            msg_s[k] = base + len(side)
            side += text
            msg_e[k] = base + len(side)
        # constant strings (file name, service) go to the side buffer too
        file_s = base + len(side)
        side += self.path.name.encode()
        file_e = base + len(side)
        service = _service_from_filename(self.path.name)
        svc_s = base + len(side)
        side += (service or "").encode()
        svc_e = base + len(side)
        big = np.concatenate([buf, np.frombuffer(bytes(side), np.uint8)])

        m = len(rec)
        pre_s, pre_e = off[PREFIX, 0, rec], off[PREFIX, 1, rec]
        has_pre = pre_s >= 0
        file_slice = (np.where(has_pre, pre_s, file_s), np.where(has_pre, pre_e, file_e))
        # the process name: the service in the prefix (up to its first dot) or the file name
        dot = find_byte(big, pre_s, pre_e, 46)
        if service is not None:
            proc = (np.where(has_pre, pre_s, svc_s), np.where(has_pre, dot, svc_e))
        else:
            proc = (pre_s, np.where(has_pre, dot, -1))
        sl = {k: (off[slot, 0, rec], off[slot, 1, rec]) for k, slot in
              (("level", LEVEL), ("logger", LOGGER), ("global_request_id", GREQ), ("user", USER),
               ("project", PROJECT), ("request_id", REQ), ("instance", INSTANCE))}
        fields = json_members(big, {  # plain text spans, written as JSON strings
            "level": sl["level"], "logger": sl["logger"], "global_request_id": sl["global_request_id"],
            "user": sl["user"], "project": sl["project"], "message": (msg_s, msg_e), "file": file_slice,
        })
        utc, in_range = self._to_utc(ts[rec], ts_ok[rec])
        table = pa.table({
            "ts": utc,
            "name": string_column(big, *sl["logger"]),
            "pid": pa.array(pid[rec], pa.int64()),
            "procname": string_column(big, *proc),
            "request_id": string_column(big, *sl["request_id"]),
            "instance": string_column(big, *sl["instance"]),
            "fields": fields,
            "pos": pa.array(rec + first_line, pa.int64()),
        })
        assert table.num_rows == m
        if not in_range.all():  # a record (with its continuation lines) that has no int64 ns
            self.report.skip_out_of_range(rec[~in_range] + first_line)
            table = table.filter(pa.array(in_range))
        return table, n

    def _to_utc(self, local_ns: np.ndarray, ok: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        """UTC ns of the local times `local_ns`, and which of them fit int64 ns (`ok` says
        which local ones did; the shift to UTC may still leave the range)."""
        offset = tz_offset_seconds(self.options.tz)
        if offset is not None:
            ok = ok & shift_fits(local_ns, offset * 1_000_000_000)
            return pa.array(np.where(ok, local_ns, 0) - offset * 1_000_000_000, pa.int64()), ok
        # a named zone moves a time by at most a day: times within that of the ends of the
        # range are skipped rather than risk the conversion leaving it
        ok = ok & shift_fits(local_ns, MAX_ZONE_OFFSET_NS) & shift_fits(local_ns, -MAX_ZONE_OFFSET_NS)
        naive = pa.array(np.where(ok, local_ns, 0), pa.timestamp("ns"))
        try:
            aware = pc.assume_timezone(naive, timezone=self.options.tz, ambiguous="earliest",
                                       nonexistent="earliest")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise StacklensError(f"unknown time zone {self.options.tz!r}: {e}") from None
        return pc.cast(pc.cast(aware, pa.timestamp("ns")), pa.int64()), ok


def _last_record_start(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> int:
    """Index of the last line that opens a record (a header with a context bracket), found by
    scanning windows from the end; -1 if none. Cutting a block there keeps every record
    whole with its continuation lines."""
    window = 256
    hi = len(starts)
    while hi > 0:
        lo = max(0, hi - window)
        valid, _, _, _, off, _ = _scan(buf, starts[lo:hi], ends[lo:hi])
        heads = np.flatnonzero(valid & (off[CTX, 0] >= 0))
        if len(heads):
            return lo + int(heads[-1])
        hi = lo
        window *= 4
    return -1


def _scan(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray):  # noqa: ANN202
    return scan_headers(buf, starts, ends, LEVEL_BYTES, LEVEL_LENS)


def _service_from_filename(name: str) -> str | None:
    """`nova-compute.log.1` → `nova-compute`: the service that wrote the file."""
    m = re.match(r"^([A-Za-z][\w-]*?)(?:\.log)", name)
    return m.group(1) if m else None
