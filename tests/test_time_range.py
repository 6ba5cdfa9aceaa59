"""Timestamps outside the int64-ns range (issue 15, class 2): skipped and reported, never wrapped.

int64 ns since the epoch holds 1677-09-21T00:12:43.145224192Z … 2262-04-11T23:47:16.854775807Z.
Each text reader gets a real file with a few records' timestamps replaced by ones outside that
range (years 1600 / 9999, epoch seconds 253402300800, one nanosecond past either end): the
other records must come out exactly as the unmodified file gives them (oracle: its rows minus
the replaced ones), the replaced ones counted and named by position in the report. The values
at the very ends of the range are kept, with the ns Python's own calendar arithmetic gives.
(The QEMU trace / QMP, ftrace and OvS readers are tested the same way next to their real
recordings: test_migration_lab.py, test_ftrace.py, test_ovs.py.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from stacklens.sources.base import ReadOptions, Reader
from tests.conftest import ROOT, need_data

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
LOGHUB = ("openstack", "loghub", "OpenStack_2k.log")
SAMPLES = ("openstack", "nova-notification-samples")
DUMP = ("thesis", "rabbitmq-dump")


def rows_of(reader_cls: type[Reader], path: Path, tz: str = "UTC") -> tuple[list[dict], Reader]:
    reader = reader_cls(path, ReadOptions(tz=tz))
    return [r for t in reader.tables() for r in t.to_pylist()], reader


def utc_ns(text: str) -> int:
    """ns since the epoch of an ISO time (UTC unless it says), by Python's calendar (the
    oracle; datetime holds microseconds, the digits past them are added as written)."""
    m = re.match(r"^(.*?\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$", text)
    t = datetime.fromisoformat(m.group(1).replace(" ", "T") + (m.group(3) or "").replace("Z", "+00:00"))
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    delta = t - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10**9 + int((m.group(2) or "0")[:9].ljust(9, "0"))


def assert_kept_and_reported(got: list[dict], reader: Reader, clean: list[dict], bad: list[int]) -> None:
    """`got` is `clean` without the rows at positions `bad`; the report names them."""
    assert got == [r for r in clean if r["pos"] not in bad]
    assert reader.report.skipped == len(bad) and reader.report.bad_positions == sorted(bad)[:10]
    assert reader.report.out_of_range == len(bad)
    assert any("outside the int64-ns range" in n and n.startswith(f"{len(bad)} ") for n in reader.report.notes)


def test_edges_of_the_range_by_python_calendar():
    # the oracle itself: Python's calendar puts the ends of int64 ns where numpy does
    import numpy as np
    assert utc_ns("2262-04-11T23:47:16.854775807") == INT64_MAX == np.datetime64("2262-04-11T23:47:16.854775807", "ns").astype(np.int64)
    assert utc_ns("1677-09-21T00:12:43.145224192") == INT64_MIN + 0 == np.iinfo(np.int64).min


@pytest.mark.parametrize("tz", ["UTC", "-04:00", "Europe/Paris"])
def test_oslo_log_text(tmp_path, tz):
    from stacklens.sources.oslo_log import OsloLogReader
    src = need_data(*LOGHUB)
    lines = src.read_text().split("\n")
    clean_path = tmp_path / "clean" / "nova.log"
    clean_path.parent.mkdir()
    clean_path.write_text("\n".join(lines))
    clean, _ = rows_of(OsloLogReader, clean_path, tz)
    assert len(clean) == 2000
    # line number → replacement of its "YYYY-MM-DD HH:MM:SS.fff"
    far = {3: "1600-01-01 00:00:00.000", 500: "9999-12-31 23:59:59.999", 1200: "2262-04-12 00:00:00.000",
           1999: "1677-09-20 23:59:59.999", 77: "0000-03-01 00:00:00.000"}
    edge = {}
    if tz == "-04:00":  # in range as written, out of it once moved to UTC
        far[1500] = "2262-04-11 23:00:00.000"
    if tz == "UTC":  # the last representable millisecond, a fraction of 25 digits: kept
        edge[1700] = "2262-04-11 23:47:16.854"
        edge[1800] = "2017-05-16 01:02:03.1234567890123456789012345"
    date = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}")
    for i, new in {**far, **edge}.items():
        lines[i - 1], n = date.subn(new, lines[i - 1], count=1)
        assert n == 1
    path = tmp_path / "nova.log"
    path.write_text("\n".join(lines))
    got, reader = rows_of(OsloLogReader, path, tz)
    for i, new in edge.items():
        row = next(r for r in got if r["pos"] == i)
        assert row["ts"] == utc_ns(new.replace(" ", "T"))
        clean = [dict(row) if r["pos"] == i else r for r in clean]
    assert_kept_and_reported(got, reader, clean, list(far))


def test_oslo_log_json_real_formatter(tmp_path):
    pytest.importorskip("oslo_log")
    from stacklens.sources.oslo_json import OsloJsonLogReader
    log = tmp_path / "clean.json.log"
    subprocess.run([sys.executable, str(ROOT / "tests" / "programs" / "oslo_json_writer.py"), str(log)],
                   check=True, timeout=60)
    clean, _ = rows_of(OsloJsonLogReader, log)
    lines = log.read_text().splitlines()
    assert len(lines) == len(clean) >= 4
    created = re.compile(r'"created": [0-9.e+-]+')
    far = {1: "253402300800", 2: "9223372036.854775808", 4: "123456789012345678901234.5"}
    edge = {3: ("9223372036.854775807", INT64_MAX)}  # the last ns that fits, digits past the 9th ignored
    for i, new in {**far, **{k: v for k, (v, _) in edge.items()}}.items():
        lines[i - 1], n = created.subn(f'"created": {new}', lines[i - 1], count=1)
        assert n == 1
    path = tmp_path / "nova.json.log"
    path.write_text("\n".join(lines) + "\n")
    got, reader = rows_of(OsloJsonLogReader, path)
    for i, (_, ns) in edge.items():
        row = next(r for r in got if r["pos"] == i)
        assert row["ts"] == ns
        clean = [dict(row) if r["pos"] == i else r for r in clean]
    assert_kept_and_reported(got, reader, clean, list(far))


def test_notification_lines(tmp_path):
    from stacklens.sources.notifications import NotificationReader, resolve_refs
    samples = need_data(*SAMPLES)
    files = sorted(samples.glob("instance-*.json"))[:24]
    far = {3: "9999-12-31T23:59:59.999999", 7: "1600-02-29 12:00:00", 11: "2262-04-11T23:47:16.854775808",
           15: "1677-09-21T00:12:43.145224191Z", 19: "2262-04-11T20:00:00-04:00"}
    edge = {5: "2262-04-11T23:47:16.854775807", 9: "1677-09-21T00:12:43.145224192Z", 13: "2262-04-11T23:00:00+02:00"}
    clean_lines, lines = [], []
    for i, f in enumerate(files, start=1):
        msg = resolve_refs(json.loads(f.read_text()), samples)
        msg["timestamp"] = f"2024-01-02 03:04:{i:02d}.5"
        clean_lines.append(json.dumps(msg))
        msg["timestamp"] = far.get(i) or edge.get(i) or msg["timestamp"]
        lines.append(json.dumps(msg))
    (tmp_path / "clean.jsonl").write_text("\n".join(clean_lines) + "\n")
    (tmp_path / "notifications.jsonl").write_text("\n".join(lines) + "\n")
    clean, _ = rows_of(NotificationReader, tmp_path / "clean.jsonl")
    got, reader = rows_of(NotificationReader, tmp_path / "notifications.jsonl")
    for i, text in edge.items():
        row = next(r for r in got if r["pos"] == i)
        assert row["ts"] == utc_ns(text)
        assert json.loads(row["fields"])["timestamp"] == text
        clean = [dict(row) if r["pos"] == i else r for r in clean]
    assert_kept_and_reported(got, reader, clean, list(far))


def test_notification_out_of_range_does_not_fall_back(tmp_path):
    """A `timestamp` out of range skips the notification: the payload's created_at (a later
    slot, read only when there is no timestamp) is not taken instead."""
    from stacklens.sources.notifications import NotificationReader, resolve_refs
    samples = need_data(*SAMPLES)
    msg = resolve_refs(json.loads((samples / "instance-update.json").read_text()), samples)
    assert msg["payload"]["nova_object.data"].get("created_at")  # a later slot that parses
    msg["timestamp"] = "9999-01-01 00:00:00"
    path = tmp_path / "n.jsonl"
    path.write_text(json.dumps(msg) + "\n")
    got, reader = rows_of(NotificationReader, path)
    assert got == [] and reader.report.out_of_range == 1 and reader.report.bad_positions == [1]


def test_rabbitmq_dump(tmp_path):
    from stacklens.sources.rabbitmq_dump import RabbitDumpReader
    src = need_data(*DUMP)
    clean, _ = rows_of(RabbitDumpReader, src)
    dump = tmp_path / "dump"
    shutil.copytree(src, dump)
    f = dump / "notifications.info.xml"
    text = f.read_text()
    # the notifications' own <timestamp>s, in file order; messages are numbered over the
    # files in name order (the reader's positions), so find this file's first number
    stamps = list(re.finditer(r"<timestamp>\s*(\S+ \S+)\s*</timestamp>", text))
    before = sum(p.read_text().count("<event>") for p in sorted(dump.glob("*.xml")) if p.name < f.name)
    events = [m.start() for m in re.finditer("<event>", text)]
    replace = {0: "9999-12-31 23:59:59.999999", 2: "1001-01-01 00:00:00", len(stamps) - 1: "2262-04-12T00:00:00"}
    far = []
    for k in sorted(replace, reverse=True):
        m = stamps[k]
        text = text[:m.start(1)] + replace[k] + text[m.end(1):]
        far.append(before + sum(1 for e in events if e < m.start()))
    f.write_text(text)
    got, reader = rows_of(RabbitDumpReader, dump)
    assert_kept_and_reported(got, reader, clean, far)


def test_collect_samples_from_the_proc_sampler(tmp_path):
    """The /proc sampler's own records (one sample of this machine), with ts values out of range."""
    from stacklens.collect.proc_sampler import sample_all
    from stacklens.sources.collect_samples import CollectSampleReader
    path = tmp_path / "proc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_all()))
    lines = path.read_text().splitlines()
    assert len(lines) >= 6
    clean, _ = rows_of(CollectSampleReader, path)
    ts = re.compile(r'"ts": -?\d+')
    far = {2: "9223372036854775808", 4: "-9223372036854775809", 5: "253402300800000000000"}
    for i, new in far.items():
        lines[i - 1], n = ts.subn(f'"ts": {new}', lines[i - 1], count=1)
        assert n == 1
    path.write_text("\n".join(lines) + "\n")
    got, reader = rows_of(CollectSampleReader, path)
    assert_kept_and_reported(got, reader, clean, list(far))


def test_column_wise_text_times_at_and_past_the_ends():
    """The column-wise parser behind QEMU's -msg lines: null past the ends (also once moved
    from a local zone to UTC), the ns of Python's calendar inside them."""
    import pyarrow as pa
    from stacklens.sources.timefmt import local_to_epoch_ns
    cases = [("2262-04-11", "23:47:16.854775807", "UTC", INT64_MAX), ("2262-04-11", "23:47:16.854775808", "UTC", None),
             ("1677-09-21", "00:12:43.145224192", "UTC", INT64_MIN), ("1677-09-21", "00:12:43.145224191", "UTC", None),
             ("9999-12-31", "23:59:59", "UTC", None), ("0001-01-01", "00:00:00", "UTC", None),
             ("2262-04-11", "23:00:00", "-04:00", None), ("2262-04-11", "23:00:00", "+04:00", utc_ns("2262-04-11T19:00:00")),
             ("2026-11-21", "15:10:26.121107", "UTC", utc_ns("2026-11-21T15:10:26.121107"))]
    for date, time_, tz, expected in cases:
        got = local_to_epoch_ns(pa.array([date]), pa.array([time_]), tz).to_pylist()
        assert got == [expected], (date, time_, tz)


def test_oslo_log_record_with_traceback_goes_whole(tmp_path):
    """Real oslo.log output (tests/programs/oslo_log_writer.py): two exception records — each a
    header and its traceback lines, all with the record's time — moved out of range are
    skipped whole (no traceback line left behind as a record of its own, none folded into the
    record before); the other records are as the untouched file gives them."""
    pytest.importorskip("oslo_log")
    from stacklens.sources.oslo_log import OsloLogReader
    log = tmp_path / "clean" / "nova-compute.log"
    log.parent.mkdir()
    subprocess.run([sys.executable, str(ROOT / "tests" / "programs" / "oslo_log_writer.py"), str(log)],
                   check=True, timeout=60, capture_output=True, cwd=ROOT / "tests" / "programs")
    clean, _ = rows_of(OsloLogReader, log)
    lines = log.read_text().split("\n")
    errors = [r for r in clean if json.loads(r["fields"])["level"] == "ERROR"]
    assert len(errors) == 2 and all("Traceback" in json.loads(r["fields"])["message"] for r in errors)
    starts = [r["pos"] for r in clean]
    far = {errors[0]["pos"]: "9999-12-31 23:59:59.999", errors[1]["pos"]: "1600-01-01 00:00:00.000"}
    for first, new in far.items():
        end = next((p for p in starts if p > first), len(lines) + 1)
        for i in range(first, end):  # the record's header and every line after it
            if re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ", lines[i - 1]):
                lines[i - 1] = new + lines[i - 1][23:]
    path = tmp_path / "nova-compute.log"
    path.write_text("\n".join(lines))
    got, reader = rows_of(OsloLogReader, path)
    assert_kept_and_reported(got, reader, clean, list(far))
