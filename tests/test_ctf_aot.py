"""The CTF kernels built ahead of time (stacklens/sources/ctf/aot.py, compiled.py): they decode
what numba's JIT decodes, an ingest through them imports no numba, a call they were not built
for goes to the JIT instead of reading out of bounds, and a build for other sources or another
CPU is never loaded. Each check runs in its own process (a fault there cannot take pytest
down) against a build made here, in a cache of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_data

TRACES = ["many-threads", "context-switches", "cyg-profile", "memory", "flipping-endianness",
          "funky_trace", "CTF2-7.0-succeed1", "ros2", "synctraces", "hello-lost", "bug446190"]

# every table of every trace under the given roots, hashed row by row in a child process
DIGEST = r"""
import hashlib, json, sys
from pathlib import Path
import pyarrow as pa
from stacklens.sources.ctf import CtfReader, find_traces
from stacklens.sources.ctf.compiled import kernels
out = {}
for root in sys.argv[1:]:
    for t in find_traces(root):
        try:
            tables = list(CtfReader(Path(t)).tables())
        except Exception as e:
            out[str(t)] = f"error: {type(e).__name__}: {e}"
            continue
        h = hashlib.sha256()
        rows = 0
        for tb in tables:
            rows += tb.num_rows
            for name in tb.column_names:
                col = tb.column(name)
                if pa.types.is_dictionary(col.type):
                    col = col.cast(col.type.value_type)
                h.update(name.encode())
                h.update(repr(col.to_pylist()).encode())
        out[str(t)] = [rows, h.hexdigest()]
print(json.dumps({"kind": kernels().kind, "numba": "numba" in sys.modules, "traces": out}))
"""


def _run(code: str, args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "STACKLENS_CACHE": str(cache)}
    env.pop("STACKLENS_JIT", None)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "stacklens.sources.ctf.aot"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert "built ahead of time into" in proc.stdout, proc.stdout + proc.stderr
    assert list((cache / "ctf-kernels").glob("ctf_kernels_*"))
    return env


def test_built_kernels_decode_what_the_jit_decodes_without_numba(built_cache):
    roots = [str(need_data("tracecompass", name)) for name in TRACES]
    aot = _run(DIGEST, roots, built_cache)
    jit = _run(DIGEST, roots, {**built_cache, "STACKLENS_JIT": "1"})
    assert aot["kind"] == "aot" and not aot["numba"]
    assert jit["kind"] == "jit" and jit["numba"]
    assert aot["traces"] == jit["traces"]
    rows = sum(v[0] for v in aot["traces"].values() if isinstance(v, list))
    assert len(aot["traces"]) >= len(TRACES) and rows > 1_000_000


def test_ingest_command_runs_on_the_build_without_numba(built_cache, tmp_path):
    code = r"""
import json, sys
sys.argv = ["stacklens", "ingest", "-s", sys.argv[1], "--json", sys.argv[2]]
import stacklens.cli as cli
def report(code):
    from stacklens.sources.ctf.compiled import kernels
    print(json.dumps({"code": code, "kind": kernels().kind, "numba": "numba" in sys.modules}), file=sys.stderr)
    os_exit(code)
os_exit = cli._exit
cli._exit = report
cli.main()
"""
    trace = need_data("tracecompass", "many-threads")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s"), str(trace)], capture_output=True,
                          text=True, env=built_cache, timeout=600)
    res = json.loads(proc.stderr.strip().splitlines()[-1])
    assert res == {"code": 0, "kind": "aot", "numba": False}
    assert json.loads(proc.stdout)["parts"][0]["rows"] == 240_644


def test_a_call_the_build_was_not_made_for_goes_to_the_jit(built_cache):
    """An int32 array where the build takes int64, a read-only output, a strided array: each
    would be read or written out of bounds by the built function; the check sends it to the
    JIT, which compiles for it or refuses it with a TypeError."""
    code = r"""
import json
import numpy as np
from stacklens.sources.ctf.compiled import kernels
k = kernels()
assert k.kind == "aot"
data = np.frombuffer(b"hello, world", np.uint8)
out = np.zeros(64, np.uint8)
good = k.gather_strings(data, np.array([0, 7], np.int64), np.array([0, 5, 10], np.int64), out)
res = {"good": [int(good), bytes(out[:10]).decode()]}
out[:] = 0
r = k.gather_strings(data, np.array([0, 7], np.int32), np.array([0, 5, 10], np.int64), out)
res["int32"] = [int(r), bytes(out[:10]).decode()]
try:
    k.gather_strings(data, np.array([0, 7], np.int64), np.array([0, 5, 10], np.int64), np.zeros(64, np.uint8)[::2])
    res["strided"] = "ran"
except Exception as e:
    res["strided"] = type(e).__name__
ro = np.frombuffer(bytes(64), np.uint8)
try:
    k.gather_strings(data, np.array([0, 7], np.int64), np.array([0, 5, 10], np.int64), ro)
    res["readonly"] = "ran"
except Exception as e:
    res["readonly"] = type(e).__name__
import sys
res["numba"] = "numba" in sys.modules
print(json.dumps(res))
"""
    res = _run(code, [], built_cache)
    assert res["good"] == [-1, "helloworld"]
    assert res["int32"] == [-1, "helloworld"]  # the JIT's answer, not a crash
    assert res["numba"]  # the odd calls went to the JIT
    assert res["readonly"] != "ran"  # numba refuses to write a read-only array
    assert res["strided"] in ("ran", "TypeError")


def test_a_build_for_other_sources_or_a_broken_file_is_not_loaded(built_cache, tmp_path):
    code = r"""
import json, os, sys
from pathlib import Path
from stacklens.sources.ctf import compiled
key = compiled.build_key()
built = compiled.build_path(key).read_bytes()
digest = compiled.digest_path(compiled.build_path(key)).read_text()
os.environ["STACKLENS_CACHE"] = sys.argv[1]  # a cache of its own: nothing loaded from it yet
path = compiled.build_path(key)
path.parent.mkdir(parents=True)
# the build under the key of other sources (as if a kernel was edited after the build)
other = compiled.build_path("0" * 20)
other.write_bytes(built)
compiled.digest_path(other).write_text(digest)
compiled.SOURCES.append(compiled.HERE / "__init__.py")
res = {"other_key": compiled.build_key() != key and compiled.load_built() is None}
compiled.SOURCES.pop()
# a truncated build under the right key (loading it would crash the process)
path.write_bytes(built[: len(built) // 3])
compiled.digest_path(path).write_text(digest)
res["broken"] = compiled.load_built() is None
res["kind"] = compiled.kernels().kind
print(json.dumps(res))
"""
    res = _run(code, [str(tmp_path / "cache")], built_cache)
    assert res == {"other_key": True, "broken": True, "kind": "jit"}
