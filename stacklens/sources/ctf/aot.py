"""Build the CTF kernels ahead of time: `python -m stacklens.sources.ctf.aot` (`./dev setup`).

numba's ahead-of-time compiler turns `kernels.py`'s functions, at the signatures of
`compiled.SIGNATURES`, into an extension module under the stacklens cache, named by the key
`compiled.py` loads it by. Built as numba's JIT builds them: for this CPU (its features),
without reference counting (the kernels allocate nothing, as `NO_REFCOUNT` says for the JIT)
and releasing the GIL (decoding runs in worker threads). ~6 s; prints where it wrote.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

from . import compiled


def _numba_type(spec):  # noqa: ANN001, ANN202
    from numba import types
    if spec == "int":
        return types.int64
    dtype, ndim, written = spec
    return types.Array(getattr(types, dtype), ndim, "C", readonly=not written)


def build(dest: Path | None = None) -> Path:
    """Build the module for this process's key; returns its path (atomically put in place)."""
    key = compiled.build_key()
    if key is None:
        raise RuntimeError("no CPU feature list (/proc/cpuinfo): nothing to key a build by")
    dest = dest or compiled.build_path(key)
    if dest is None:
        raise RuntimeError("the stacklens cache is off (STACKLENS_CACHE)")
    import numba.pycc.compiler as pycc_compiler
    from llvmlite import binding
    from numba import types
    from numba.pycc import CC

    K = importlib.import_module(__package__ + ".kernels")

    class GilFreeFlags(pycc_compiler.Flags):  # numba's AOT compiler has no nogil option
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            self.release_gil = True
    pycc_compiler.Flags = GilFreeFlags
    results = {"int64": types.int64, "int64x3": types.UniTuple(types.int64, 3)}
    name = compiled.module_name(key)
    with tempfile.TemporaryDirectory(prefix="stacklens-aot-") as tmp:
        cc = CC(name)
        cc.output_dir = tmp
        cc.use_nrt = False
        cc.target_cpu = binding.get_host_cpu_name()
        cc.verbose = False
        for export, (fn, spec, result) in compiled.SIGNATURES.items():
            sig = results[result](*[_numba_type(s) for s in spec])
            cc.export(export, sig)(getattr(K, fn).py_func)
        cc.compile()
        built = next(Path(tmp).glob(f"{name}*"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = built.read_bytes()
        # the digest first, then the module: a loader never sees a module without its digest
        for target, content in ((compiled.digest_path(dest), hashlib.sha256(data).hexdigest().encode()),
                                (dest, data)):
            part = target.with_name(target.name + f".{os.getpid()}.part")
            part.write_bytes(content)
            os.replace(part, target)
    # what a build killed while writing left behind (a .part an hour old is nobody's)
    for p in dest.parent.glob("*.part"):
        try:
            if time.time() - p.stat().st_mtime > 3600:
                p.unlink()
        except OSError:
            pass
    # builds for earlier sources: the newest few kept (other checkouts may share the cache)
    older = sorted((p for p in dest.parent.glob("ctf_kernels_*") if not p.name.startswith(name)
                    and not p.name.endswith((".sha256", ".part"))), key=lambda p: p.stat().st_mtime)
    for p in older[:-3]:
        for q in (p, compiled.digest_path(p)):
            q.unlink(missing_ok=True)
    return dest


def main() -> int:
    key = compiled.build_key()
    path = compiled.build_path(key) if key else None
    if path is not None and path.is_file() and "--force" not in sys.argv:
        print(f"ctf kernels: built already ({path})")
        return 0
    try:
        import warnings
        warnings.simplefilter("ignore")  # numba.pycc's deprecation notice
        print(f"ctf kernels: built ahead of time into {build()}")
    except Exception as e:  # the JIT still works: say so, do not fail the set-up
        print(f"ctf kernels: not built ahead of time ({type(e).__name__}: {e}); numba's JIT is used")
    return 0


if __name__ == "__main__":
    sys.exit(main())
