"""Mutated packets and metadata: the reader either reads (reporting what it skipped) or
refuses the trace with a one-line SourceError; never another exception, a hang, or an
allocation beyond the packet (lengths are checked against the packet before use)."""

from __future__ import annotations

import os
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


# --- mutation fuzzing in worker subprocesses (a crash or a hang is a failure, not the end) ---
FUZZ_TRIES = int(os.environ.get("STACKLENS_FUZZ_TRIES", "2000"))


def test_fuzz_mutations_in_subprocesses(tmp_path: Path) -> None:
    """A few thousand mutations (bit flips, boundary-value overwrites, truncations, TSDL token
    and CTF 2 JSON value mutations) of several real traces (tests/ctf_fuzzing.SEEDS), read
    as ingest reads them (and some dumped) in worker subprocesses: no crash (signal), no
    hang (30 s without an answer), no exception other than a one-line SourceError. The
    mutations are a fixed function of (seed, index): a failure names the mutation to rerun
    (`python bench/ctf_fuzz.py --seed S --start I --count 1`)."""
    import ctf_fuzzing as F
    need_data("ctf-conformance", "traces", "succeed", "sequence")
    need_data("tracecompass", "many-threads")
    res = F.run(15, 0, FUZZ_TRIES, tmp_path / "work", timeout=30, keep_failures=tmp_path / "failures")
    failures = res.failures()
    assert not failures, res.summary() + "\n" + "\n".join(
        f"{r.outcome} #{r.index}: {r.detail} [{r.mutation}]" for r in failures[:10])
    assert len(res.results) == FUZZ_TRIES
    # the mutations reach the decoder: many are read (with what they skipped reported)
    assert res.count("ok") > FUZZ_TRIES // 3 and res.count("rejected") > FUZZ_TRIES // 10, res.summary()
