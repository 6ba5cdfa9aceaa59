"""`lab.json` of a migration-lab bundle: the run's parameters and the map of its QEMUs.

    {"scenario": "interference", "vm": "instance-0000ab12", "instance": "…", "status": "completed",
     "started_ns": …, "processes_ns": …, "parameters": {…}, "query_migrate": {…},
     "processes": [{"vm": "instance-0000ab12", "host": "lab-src", "role": "source", "pid": 4242,
                    "threads": [{"tid": 4250, "comm": "live_migration", "cpus_allowed": "1"}, …]}, …]}

Rows: one `lab.run` (at the start of the run: scenario, status, parameters, QEMU's final
query-migrate) and one `lab.thread` per QEMU thread (when the lab read them from /proc:
pid, tid, procname = the VM, fields role / host / comm / cpus_allowed). The thread rows let the
kernel layer name the VMs' threads (which VM, which simulated host) by tid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader, json_objects
from stacklens.sources.timefmt import NS_RANGE_TEXT, fits_int64

KEYS = (b'"scenario"', b'"parameters"', b'"processes"')


class LabConfigReader(Reader):
    """The migration lab's own record of a run (`lab.json`)."""

    format = "lab.config"
    layer = "virt"
    unit = "record"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        return head.lstrip().startswith(b"{") and all(k in head for k in KEYS)

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        try:
            lab = json.loads(data)
            started = int(lab["started_ns"])
            at = int(lab.get("processes_ns") or started)
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            raise SourceError(self.path, f"not a complete lab record ({type(e).__name__}: {e})") from None
        if not (fits_int64(started) and fits_int64(at)):
            raise SourceError(self.path, f"started_ns/processes_ns {NS_RANGE_TEXT}")
        self.options.progress(len(data))
        run = {k: lab.get(k) for k in ("scenario", "status", "request_id", "wall_s", "cpus", "notes")}
        run["parameters"] = lab.get("parameters", {})
        run["query_migrate"] = lab.get("query_migrate", {})
        rows = {"ts": [started], "name": ["lab.run"], "pid": [None], "tid": [None],
                "procname": [lab.get("vm")], "instance": [lab.get("instance")],
                "fields": [json.dumps(run)], "pos": [0]}
        threads = {"role": [], "host": [], "comm": [], "cpus_allowed": []}
        for i, proc in enumerate(lab.get("processes") or []):
            try:
                pid, vm, role, host = int(proc["pid"]), proc["vm"], proc["role"], proc["host"]
                for t in proc["threads"]:
                    rows["ts"].append(at)
                    rows["name"].append("lab.thread")
                    rows["pid"].append(pid)
                    rows["tid"].append(int(t["tid"]))
                    rows["procname"].append(vm)
                    rows["instance"].append(lab.get("instance") if vm == lab.get("vm") else None)
                    rows["fields"].append(None)
                    rows["pos"].append(i + 1)
                    threads["role"].append(role)
                    threads["host"].append(host)
                    threads["comm"].append(t.get("comm"))
                    threads["cpus_allowed"].append(t.get("cpus_allowed"))
            except (KeyError, TypeError, ValueError):
                self.report.skip(i + 1)  # a process entry without its pid / vm / threads
        n_threads = len(threads["role"])
        if n_threads:
            rows["fields"][1:] = json_objects(pa.table(threads)).to_pylist()
        self.report.rows += len(rows["ts"])
        yield pa.table({
            "ts": pa.array(rows["ts"], pa.int64()), "name": pa.array(rows["name"], pa.string()),
            "pid": pa.array(rows["pid"], pa.int64()), "tid": pa.array(rows["tid"], pa.int64()),
            "procname": pa.array(rows["procname"], pa.string()),
            "instance": pa.array(rows["instance"], pa.string()),
            "fields": pa.array(rows["fields"], pa.string()), "pos": pa.array(rows["pos"], pa.int64()),
        })
