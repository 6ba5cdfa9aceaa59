"""The CTF reader on hostile input (issue 15): metadata that would make compiled code
overflow (alignments of 2^63-1, huge lengths), data lengths that wrap int64 arithmetic,
packet sizes beyond the file, deep nesting, and packets whose timestamps were damaged.

Each case runs `stacklens ingest` and `stacklens dump` in a subprocess, so a segfault is a
failure (a negative return code), and checks the one-line message (file + problem) and that
the good data around the bad part is kept. Oracles: babeltrace2 on the original (or on a
copy with the bad packet removed), and counts derived here from the traces' layouts."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_data, need_program

SEQUENCE = ("ctf-conformance", "traces", "succeed", "sequence")
CTF2 = ("tracecompass", "CTF2-7.0-smalltrace")
# many-threads: packets of 256 KiB; packet header magic, uuid, stream_id, stream_instance_id
# (32 bytes), then the context: timestamp_begin, timestamp_end, content_size, packet_size (u64)
MANY = ("tracecompass", "many-threads")
VICTIM, VICTIM_AT = "channel0_0", 2 * 262144  # a packet in the middle of a stream
BEGIN, END, PSIZE = 32, 40, 56


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("index"))
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def _stacklens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    from stacklens.sources.ctf.compiled import build_dir
    env = dict(os.environ, COLUMNS="1000", NO_COLOR="1", STACKLENS_CACHE="off",
               STACKLENS_KERNELS_DIR=str(build_dir() or ""))  # the kernels ingest runs
    return subprocess.run([sys.executable, "-c", "from stacklens.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def _ingest(trace: Path, tmp: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    res = _stacklens("ingest", "--json", "--store", str(tmp / "store"), str(trace), cwd=tmp)
    assert res.returncode >= 0, f"ingest killed by signal {-res.returncode}"
    assert "Traceback" not in res.stderr and "internal error" not in res.stdout + res.stderr, res.stderr
    try:
        parts = [p for p in json.loads(res.stdout)["parts"] if p["format"] == "ctf"]
    except (json.JSONDecodeError, KeyError):
        return res, None
    assert len(parts) == 1
    return res, parts[0]


def _dump(trace: Path, tmp: Path) -> subprocess.CompletedProcess:
    res = _stacklens("dump", str(trace), cwd=tmp)
    assert res.returncode >= 0, f"dump killed by signal {-res.returncode}"
    assert "Traceback" not in res.stderr
    return res


def _rejected(trace: Path, tmp: Path, *words: str) -> None:
    """ingest and dump both refuse the trace on one line naming the file and the problem."""
    res, part = _ingest(trace, tmp)
    assert part is not None and part["status"] == "rejected", res.stdout
    msg = part["message"]
    assert "\n" not in msg and msg.startswith("metadata: "), msg
    for w in words:
        assert w in msg, msg
    d = _dump(trace, tmp)
    assert d.returncode == 1
    lines = d.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{trace}: metadata: "), d.stderr
    for w in words:
        assert w in lines[0], lines[0]


# --- metadata the compiled decoder cannot take: rejected, named -------------------------------
def test_tsdl_struct_alignment_2_63_minus_1(tmp_path: Path) -> None:
    t = _copy(need_data(*SEQUENCE), tmp_path / "t")
    m = t / "metadata"
    text = m.read_text()
    assert "} align(8);" in text
    m.write_text(text.replace("} align(8);", "} align(9223372036854775807);", 1))
    _rejected(t, tmp_path, "alignment 9223372036854775807", "stream.event.header")


def test_tsdl_power_of_two_alignment_beyond_any_packet(tmp_path: Path) -> None:
    t = _copy(need_data(*SEQUENCE), tmp_path / "t")
    m = t / "metadata"
    text = m.read_text()
    old = "typealias integer { size = 32; align = 8; signed = false; } := uint32_t;"
    assert old in text
    m.write_text(text.replace(old, old.replace("align = 8", "align = 4611686018427387904"), 1))
    _rejected(t, tmp_path, "alignment 4611686018427387904", "power of two")


def test_tsdl_array_length_2_63_minus_1(tmp_path: Path) -> None:
    t = _copy(need_data(*SEQUENCE), tmp_path / "t")
    m = t / "metadata"
    m.write_text(m.read_text().replace("uuid[16]", "uuid[9223372036854775807]", 1))
    _rejected(t, tmp_path, "length 9223372036854775807", "trace.packet.header.uuid")


def _ctf2_fragments(m: Path) -> list[dict]:
    return [json.loads(x) for x in m.read_bytes().split(b"\x1e") if x.strip()]


def _write_ctf2(m: Path, frags: list[dict]) -> None:
    m.write_bytes(b"".join(b"\x1e" + json.dumps(f).encode() + b"\n" for f in frags))


@pytest.mark.parametrize("where", ["payload structure", "packet header integer"])
def test_ctf2_alignment_2_63_minus_1(where: str, tmp_path: Path) -> None:
    t = _copy(need_data(*CTF2), tmp_path / "t")
    frags = _ctf2_fragments(t / "metadata")
    trace_class = next(f for f in frags if f["type"] == "trace-class")
    event = next(f for f in frags if f["type"] == "event-record-class")
    if where == "payload structure":
        event["payload-field-class"]["minimum-alignment"] = 2**63 - 1
        name = "event.fields"
    else:
        trace_class["packet-header-field-class"]["member-classes"][0]["field-class"]["alignment"] = 2**63 - 1
        name = "trace.packet.header.magic"
    _write_ctf2(t / "metadata", frags)
    _rejected(t, tmp_path, "alignment 9223372036854775807", name)


def test_ctf2_deep_nesting(tmp_path: Path) -> None:
    """Field classes nested deeper than the decoder goes, and JSON nested deeper than
    Python's recursion limit: a named rejection, not RecursionError."""
    t = _copy(need_data(*CTF2), tmp_path / "t")
    frags = _ctf2_fragments(t / "metadata")
    fc: dict = {"type": "null-terminated-string"}
    for _ in range(100):
        fc = {"type": "structure", "member-classes": [{"name": "n", "field-class": fc}]}
    event = next(f for f in frags if f["type"] == "event-record-class")
    event["payload-field-class"]["member-classes"][0]["field-class"] = fc
    _write_ctf2(t / "metadata", frags)
    _rejected(t, tmp_path, "nested too deep")
    t2 = _copy(need_data(*CTF2), tmp_path / "t2")
    with open(t2 / "metadata", "ab") as f:
        f.write(b"\x1e" + b"[" * 200_000 + b"]" * 200_000 + b"\n")
    _rejected(t2, tmp_path, "nesting too deep")


def test_tsdl_deep_nesting(tmp_path: Path) -> None:
    t = _copy(need_data(*SEQUENCE), tmp_path / "t")
    m = t / "metadata"
    text = m.read_text()
    deep = "struct { " * 5000 + "uint8_t x;" + " } y;" * 5000
    m.write_text(text.replace("uint32_t cpu_id;", "uint32_t cpu_id; " + deep, 1))
    _rejected(t, tmp_path, "nesting too deep")


# --- data the decoder must bound: the bad event and the rest of its packet skipped ------------
# The sequence trace holds its 10 events in one packet of channel0_2, laid out (metadata):
# header 24 bytes, context 44, then events of 5-bit id + variant; the first event has the
# extended header (13 bytes), the others the compact one (4 bytes); each payload is
# u64 n, n x s32, u64 m, m x s64 with n = m = 6 (88 bytes).
def _event_length_offset(index: int) -> int:
    return 68 + (13 if index == 0 else 101 + 92 * (index - 1) + 4)


@pytest.mark.parametrize("length", [2**63 - 1, 2**59 + 1, 2**40])
def test_sequence_length_beyond_the_packet(length: int, tmp_path: Path) -> None:
    """2^59 + 1 elements of 32 bits is 2^64 + 32 bits: the product wrapped to 32 before."""
    bt2 = need_program("babeltrace2")
    src = need_data(*SEQUENCE)
    out = subprocess.run([bt2, str(src)], capture_output=True, text=True, timeout=60)
    assert len(out.stdout.splitlines()) == 10  # the oracle: all 10 events in the original
    t = _copy(src, tmp_path / "t")
    s = t / "channel0_2"
    data = bytearray(s.read_bytes())
    off = _event_length_offset(4)
    assert struct.unpack_from("<Q", data, off)[0] == 6
    struct.pack_into("<Q", data, off, length)
    s.write_bytes(bytes(data))
    res, part = _ingest(t, tmp_path)
    assert part is not None and part["status"] == "ingested", res.stdout
    assert part["rows"] == 4 and part["skipped"] == 1  # events 0..3 kept, event 4 on: skipped
    assert any(f"channel0_2: packet at byte 0: array/sequence/string length exceeds what is left "
               f"of the packet ({length}); rest of the packet skipped" in n for n in part["notes"]), part["notes"]
    d = _dump(t, tmp_path)
    assert d.returncode == 1 and len(d.stdout.splitlines()) == 4
    assert d.stderr.strip().startswith(f"error: {s}: packet at byte 0: array/sequence/string length")


def test_packet_size_beyond_the_file(tmp_path: Path) -> None:
    """A packet in a stream says it is larger than what is left of its file: that packet is
    skipped with a message naming file, byte and sizes, and reading resumes at the next
    packet; everything else is read. Oracle: babeltrace2 on a copy without that packet."""
    bt2 = need_program("babeltrace2")
    src = need_data(*MANY)
    t = _copy(src, tmp_path / "t")
    s = t / VICTIM
    data = bytearray(s.read_bytes())
    at, nxt = 1048576, 1204224  # the fifth and sixth (last) packets of channel0_0
    for p in (at, nxt):
        assert data[p:p + 4] == b"\xc1\x1f\xfc\xc1"
    assert struct.unpack_from("<Q", data, at + PSIZE)[0] == (nxt - at) * 8
    bits = (len(data) - at + 4096) * 8
    struct.pack_into("<Q", data, at + PSIZE, bits)
    s.write_bytes(bytes(data))
    without = _copy(src, tmp_path / "without")
    (without / VICTIM).write_bytes(bytes(data[:at] + data[nxt:]))
    expected = _bt2_times(bt2, without)
    assert len(expected) < 240_644  # the owners' count: the packet held events
    res, part = _ingest(t, tmp_path)
    assert part is not None and part["status"] == "ingested"
    assert part["rows"] == len(expected) and part["skipped"] == 1
    assert f"{s}: packet at byte {at}: packet size runs past the end of the file ({bits} bits, " \
           f"{len(data) - at} bytes left); bytes {at}..{nxt - 1} skipped, resumed at the next packet" \
        in part["notes"], part["notes"]


# --- class 2 (CTF half): a packet whose time was damaged --------------------------------------
_BT2_SECONDS = re.compile(r"^\[(\d+)\.(\d{9})\]")


def _bt2_times(bt2: str, trace: Path, check: bool = True) -> list[int]:
    out = subprocess.run([bt2, "--clock-seconds", str(trace)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 or not check, out.stderr[-2000:]
    times = []
    for line in out.stdout.splitlines():
        m = _BT2_SECONDS.match(line)
        assert m, line
        times.append(int(m.group(1)) * 1_000_000_000 + int(m.group(2)))
    return times


def _store_range(trace: Path, tmp: Path) -> tuple[dict, tuple[int, int, int]]:
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    store = Store(tmp / "store", create=True)
    (r,) = ingest(store, [trace])
    con = store.connect()
    return r.to_dict(), con.execute("SELECT count(*), min(ts), max(ts) FROM events").fetchone()


ROS2 = ("tracecompass", "ros2")  # UST: events take their time from timestamp_begin
PACKET_TIME_CASES = [
    # trace, stream file, packet offset and size, field, change, events moved?
    (ROS2, "ros2_0", 8 * 32768, 32768, "begin", "set bit 58", True),
    (ROS2, "ros2_0", 8 * 32768, 32768, "begin", "clear bit 44", True),
    (ROS2, "ros2_0", 8 * 32768, 32768, "end", "set bit 58", False),
    # kernel events carry full timestamps: a damaged timestamp_begin moves none of them
    (MANY, "channel0_0", 2 * 262144, 262144, "begin", "set bit 58", False),
]


@pytest.mark.parametrize("trace,stream,at,size,field,change,moved", PACKET_TIME_CASES)
def test_packet_time_out_of_line(trace: tuple, stream: str, at: int, size: int, field: str, change: str,
                                 moved: bool, tmp_path: Path) -> None:
    """A flipped bit in a packet's timestamp_begin or timestamp_end (both LTTng traces here:
    packet header of 32 bytes, then timestamp_begin, timestamp_end): the packet time is noted
    and not used; the events it moved by years (or hours back) are left out, counted and
    noted, the others kept; the store's time range stays the one of the good data.
    Oracles: babeltrace2 on the original (time range, count), on a copy without the packet
    (what is kept) and on the damaged packet alone (every one of its events moved)."""
    bt2 = need_program("babeltrace2")
    src = need_data(*trace)
    t = _copy(src, tmp_path / "t")
    s = t / stream
    data = bytearray(s.read_bytes())
    assert data[at:at + 4] == b"\xc1\x1f\xfc\xc1"
    where = at + (BEGIN if field == "begin" else END)
    v = struct.unpack_from("<Q", data, where)[0]
    bit = int(change.split()[-1])
    assert (v >> bit & 1) == (0 if change.startswith("set") else 1)
    struct.pack_into("<Q", data, where, v ^ (1 << bit))
    s.write_bytes(bytes(data))

    original = _bt2_times(bt2, src)
    part, (rows, lo, hi) = _store_range(t, tmp_path / "a")
    assert (lo, hi) == (min(original), max(original))  # the range is not stretched
    notes = " ".join(part["notes"])
    assert f"{field} of the packet at byte {at}" in notes and "out of line" in notes, notes
    if not moved:
        assert rows == len(original) and part["skipped"] == 0, notes
        return
    without = _copy(src, tmp_path / "without")
    (without / stream).write_bytes(bytes(data[:at] + data[at + size:]))
    kept = _bt2_times(bt2, without)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(src / "metadata", alone / "metadata")
    (alone / stream).write_bytes(bytes(data[at:at + size]))
    damaged = _bt2_times(bt2, alone, check=False)
    assert len(damaged) == len(original) - len(kept)  # babeltrace2 decodes the whole packet
    assert all(not min(original) <= x <= max(original) for x in damaged)  # all of them moved
    assert rows == len(kept) and part["skipped"] == len(damaged)
    assert f"{len(damaged)} events left out" in notes and f"{len(damaged)} at byte {at}" in notes, notes


def test_string_gather_checks_every_slot_before_copying():
    """The compiled string copy (decode._strings) reads only inside the stream's data: a slot
    past its end is an IndexError (the reader's error path), and a null's start slot, which may
    hold anything, is never read."""
    import numpy as np
    from stacklens.sources.ctf.decode import _strings
    data = np.frombuffer(b"hello world", dtype=np.uint8)
    ok = _strings(data, np.array([0, 1 << 40, 6]), np.array([5, 0, 5]), np.array([False, True, False]))
    assert ok.to_pylist() == ["hello", None, "world"]
    for starts, lens in (([8], [5]), ([-1], [2]), ([1 << 62], [3]), ([0, 11], [1, 1])):
        with pytest.raises(IndexError):
            _strings(data, np.array(starts), np.array(lens), None)
