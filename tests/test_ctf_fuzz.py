"""Mutated packets and metadata: the reader either reads (reporting what it skipped) or
refuses the trace with a one-line SourceError; never another exception, a hang, or an
allocation beyond the packet (lengths are checked against the packet before use)."""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import need_data
from stacklens.errors import SourceError
from stacklens.sources.ctf import CtfReader
from stacklens.sources.ctf.tsdl import _CACHE

SRC_TRACES = [("ctf-conformance", "traces", "succeed", "sequence"),
              ("ctf-conformance", "traces", "succeed", "debug-info"),
              ("tracecompass", "CTF2-7.0-trace-with-index")]


def _read(path: Path) -> None:
    try:
        r = CtfReader(path)
        for _ in r.tables():
            pass
        r.lost()
    except SourceError as e:
        assert "\n" not in str(e)


def _copy(tmp: Path, parts: tuple[str, ...]) -> Path:
    src = need_data(*parts)
    dst = tmp / "t"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("index"))
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


mutations = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(SRC_TRACES) - 1), muts=mutations, cut=st.one_of(st.none(), st.floats(0, 1)))
def test_mutated_stream(tmp_path: Path, which: int, muts, cut) -> None:
    d = _copy(tmp_path, SRC_TRACES[which])
    streams = sorted(p for p in d.iterdir() if p.is_file() and p.name != "metadata")
    s = streams[0]
    data = bytearray(s.read_bytes())
    for where, byte in muts:
        data[int(where * len(data))] = byte
    if cut is not None:
        data = data[: int(cut * len(data))]
    s.write_bytes(bytes(data))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _read(d)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(SRC_TRACES) - 1), muts=mutations, cut=st.one_of(st.none(), st.floats(0, 1)))
def test_mutated_metadata(tmp_path: Path, which: int, muts, cut) -> None:
    d = _copy(tmp_path, SRC_TRACES[which])
    m = d / "metadata"
    data = bytearray(m.read_bytes())
    for where, byte in muts:
        # printable bytes mostly, so that the grammar gets past the first token
        data[int(where * len(data))] = 32 + byte % 95 if byte < 200 else byte
    if cut is not None:
        data = data[: int(cut * len(data))]
    m.write_bytes(bytes(data))
    _CACHE.clear()
    _read(d)
