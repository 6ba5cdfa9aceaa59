"""The CTF path's compiled kernels: built ahead of time when a build matches, else numba's JIT.

An ingest spent about a quarter of a second on numba before its first event: importing it,
setting up its compiler and loading the cached machine code of `kernels.py`, all on one core
while the other waited. `aot.py` builds the same functions into an extension module with
numba's ahead-of-time compiler (`./dev setup` runs it); this module loads that build when its
key matches — the kernels' sources, this CPU's features, the Python and NumPy versions — and
otherwise (no build, sources changed, another CPU, `STACKLENS_JIT=1`) gives `kernels.py`'s
functions through numba's JIT, as before. Either way the functions are the same code.

A function built ahead of time does not check its arguments as numba's dispatcher does (an
int32 array passed for an int64 one is read out of bounds), so every call through the build
is checked here first against the signature it was built for (`SIGNATURES`); a call that
does not match goes to the JIT function instead.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from stacklens.cachedir import cache_dir

HERE = Path(__file__).resolve().parent
# what the build is made of: a change to any of these makes its key another
SOURCES = [HERE / "kernels.py", HERE / "isa.py", HERE / "compiled.py", HERE / "aot.py",
           HERE.parent / "swar.py", HERE.parent / "textscan.py"]

# Exported name -> (kernels.py function, argument specs, result). An array argument is
# (dtype, ndim, written): `written` arrays must be writable; the others are typed read-only
# (numba's type for a NumPy array over bytes), which a writable array also satisfies. "int"
# is an int64 scalar.
I64, I32, U8 = "int64", "int32", "uint8"
SIGNATURES: dict[str, tuple[str, tuple, str]] = {
    "decode_stream": ("decode_stream", (
        (U8, 1, False), (I64, 2, False), (I64, 2, False), (I64, 1, False), (I64, 1, False),
        (I32, 1, False), (I64, 1, False), (I64, 1, True), (I64, 1, True), (I64, 1, True),
        (I64, 1, True), (I32, 1, True), (I64, 1, True), (I64, 1, True), (I64, 1, True),
        (I64, 1, True), (I64, 1, True), (I64, 1, True), (I64, 1, True)), "int64x3"),
    "run_program": ("run_program", (
        (I64, 2, False), (I64, 2, False), "int", "int", (U8, 1, False), "int",
        (I64, 1, True), (I64, 1, True), (I64, 1, True), (I64, 1, True)), "int64"),
    "gather_strings": ("_gather_strings", (
        (U8, 1, False), (I64, 1, False), (I64, 1, False), (U8, 1, True)), "int64"),
    "write_events": ("_write_events", (
        (I64, 2, False), (U8, 1, False), (I64, 1, False), (I32, 1, False), (I64, 1, False),
        (I64, 1, False), (U8, 1, False), (U8, 1, True), (I64, 1, True), (I64, 1, True), "int"),
        "int64"),
}

_lock = threading.Lock()
_kernels: SimpleNamespace | None = None
_jit: SimpleNamespace | None = None


def kernels() -> SimpleNamespace:
    """decode_stream, run_program, gather_strings, write_events (and `kind`: aot | jit)."""
    global _kernels
    if _kernels is None:
        with _lock:
            if _kernels is None:
                _kernels = _load()
    return _kernels


def jit_kernels() -> SimpleNamespace:
    """The same functions through numba's JIT (imports numba)."""
    global _jit
    if _jit is None:
        # by its full name: the package's `kernels` attribute may be this module's function
        K = importlib.import_module(__package__ + ".kernels")  # numba only when needed
        _jit = SimpleNamespace(kind="jit", **{name: getattr(K, fn) for name, (fn, _, _) in SIGNATURES.items()})
    return _jit


def _load() -> SimpleNamespace:
    if os.environ.get("STACKLENS_JIT", "") not in ("", "0"):
        return jit_kernels()
    built = load_built()
    if built is None:
        return jit_kernels()
    return SimpleNamespace(kind="aot", **{name: _checked(name, getattr(built, name), spec)
                                          for name, (_, spec, _) in SIGNATURES.items()})


def build_key() -> str | None:
    """The key of a build usable here, or None where there is none (no CPU feature list)."""
    cpu = _cpu_features()
    if cpu is None:
        return None
    h = hashlib.sha256()
    for p in SOURCES:
        h.update(p.read_bytes())
    h.update(cpu)
    h.update(sys.version.encode())
    h.update(np.__version__.encode())
    return h.hexdigest()[:20]


def module_name(key: str) -> str:
    return f"ctf_kernels_{key}"


def build_dir() -> Path | None:
    """Where builds are kept: $STACKLENS_KERNELS_DIR, else the stacklens cache's
    `ctf-kernels` (a process may keep no metadata cache and still run the built kernels)."""
    explicit = os.environ.get("STACKLENS_KERNELS_DIR")
    return Path(explicit) if explicit else cache_dir("ctf-kernels")


def build_path(key: str) -> Path | None:
    d = build_dir()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return d / f"{module_name(key)}{suffix}" if d else None


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def load_built() -> Any | None:
    """The extension module built for this key, or None."""
    key = build_key()
    path = build_path(key) if key else None
    if path is None or not path.is_file():
        return None
    # a truncated or damaged shared object crashes the process that loads it (SIGBUS), so
    # its bytes are checked first against the digest written beside it by the build (~1 ms)
    try:
        data = path.read_bytes()
        if digest_path(path).read_text().strip() != hashlib.sha256(data).hexdigest():
            return None
    except OSError:
        return None
    name = module_name(key)  # type: ignore[arg-type]
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            return None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except (ImportError, OSError):  # a partial or foreign file: the JIT does the work
        return None
    if not all(hasattr(mod, name) for name in SIGNATURES):
        return None
    return mod


def _cpu_features() -> bytes | None:
    """The first CPU's feature flags (Linux): code built for one CPU's features may use
    instructions another lacks."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            for line in f:
                if line.startswith((b"flags", b"Features")):
                    return line.strip()
    except OSError:
        pass
    return None


def _checked(name: str, fn: Callable, spec: tuple) -> Callable:
    """`fn` (built ahead of time) behind a check of every argument against `spec`; a call
    that does not match runs the JIT function."""
    arrays = [(i, np.dtype(s[0]), s[1], s[2]) for i, s in enumerate(spec) if s != "int"]
    scalars = [i for i, s in enumerate(spec) if s == "int"]
    count = len(spec)
    lo, hi = -(1 << 63), (1 << 63) - 1

    def call(*args: Any) -> Any:
        ok = len(args) == count
        if ok:
            for i, dtype, ndim, written in arrays:
                a = args[i]
                if type(a) is not np.ndarray or a.dtype != dtype or a.ndim != ndim:
                    ok = False
                    break
                fl = a.flags
                if not (fl.c_contiguous and fl.aligned) or (written and not fl.writeable):
                    ok = False
                    break
        if ok:
            for i in scalars:
                v = args[i]
                if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= v <= hi:
                    ok = False
                    break
        if not ok:
            return getattr(jit_kernels(), name)(*args)
        return fn(*args)
    call.__name__ = name
    return call
