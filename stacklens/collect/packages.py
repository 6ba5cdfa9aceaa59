"""The package inventory tracer: installed versions, to detect differences across nodes.

It inventories the Python environment of `python` (default: the agent's own interpreter; a
service's venv on a real node) through that interpreter's importlib.metadata, runs
`pip check` there for declared-requirement conflicts, and (if `dpkg_query` is on) lists the
Debian packages. One `package.installed` line per package, one `package.conflict` per pip
check complaint; the whole inventory is one segment per run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stacklens.collect.segments import SegmentWriter

_LIST = ("import importlib.metadata as m, json, sys\n"
         "print(json.dumps([[d.metadata['Name'], d.version] for d in m.distributions()"
         " if d.metadata['Name']]))")


def python_packages(python: str, timeout: float = 60) -> list[tuple[str, str]]:
    out = subprocess.run([python, "-c", _LIST], capture_output=True, text=True, timeout=timeout,
                         check=True).stdout
    seen: dict[str, str] = {}
    for name, version in json.loads(out):
        seen.setdefault(normalise(name), version)  # first on sys.path wins, as for import
    return sorted(seen.items())


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pip_check(python: str, timeout: float = 120) -> list[str]:
    r = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, timeout=timeout)
    if r.returncode == 0 or "No module named pip" in r.stderr:
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]


def debian_packages(timeout: float = 60) -> list[tuple[str, str]]:
    if shutil.which("dpkg-query") is None:
        return []
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"],
                         capture_output=True, text=True, timeout=timeout).stdout
    return [(p, v) for p, v, st in (l.split("\t") for l in out.splitlines() if l.count("\t") == 2)
            if st.startswith("ii")]


def inventory(config: dict[str, Any]) -> list[dict[str, Any]]:
    python = config.get("python") or sys.executable
    ts = time.time_ns()
    recs = [{"stacklens": "package.installed", "ts": ts, "manager": "python", "env": python,
             "package": n, "version": v} for n, v in python_packages(python)]
    recs += [{"stacklens": "package.conflict", "ts": ts, "manager": "python", "env": python,
              "problem": p, "package": normalise(p.split()[0])} for p in pip_check(python)]
    if config.get("dpkg_query", False):
        recs += [{"stacklens": "package.installed", "ts": ts, "manager": "dpkg", "env": "dpkg",
                  "package": n, "version": v} for n, v in debian_packages()]
    return recs


def main(config: dict[str, Any]) -> None:
    writer = SegmentWriter(Path(config["out"]), "packages")
    writer.write_batch("".join(json.dumps(r) + "\n" for r in inventory(config)).encode())
    writer.close()
