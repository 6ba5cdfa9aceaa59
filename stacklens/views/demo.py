"""`stacklens demo`: the main job on the embedded default.

For now the demo ingests the real traces and logs of the shared data set (../shared/data)
and prints `info`; the lab makes it self-contained later."""

from __future__ import annotations

from pathlib import Path

from stacklens.store import Store
from stacklens.store.store import remove_store
from stacklens.views.info import show_info
from stacklens.views.ingest_report import run_ingest
from stacklens.views.terminal import console, err_console

DEMO_PARTS = ["openstack/loghub", "thesis", "tracecompass/many-threads", "tracecompass/synctraces"]


def find_data(explicit: Path | None) -> Path | None:
    candidates = [explicit] if explicit else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" for p in here.parents] + [Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c is not None and (c / "README.md").exists():
            return c
    return None


def run_demo(out: Path, data: Path | None) -> int:
    # The self-contained lab demo when QEMU can run here; the shared-data demo otherwise
    # (or when --data is given).
    from stacklens.views.lab_demo import lab_available, run_lab_demo
    if data is None and lab_available():
        return run_lab_demo(out)
    root = find_data(data)
    if root is None:
        err_console.print("stacklens: error: the shared data set was not found (give --data DIR)")
        return 2
    remove_store(out)
    store = Store(out, create=True)
    parts = [root / p for p in DEMO_PARTS if (root / p).exists()]
    console.print(f"[bold]stacklens demo[/]: ingesting {', '.join(str(p) for p in parts)} into {out}")
    code = run_ingest(store, parts, host=None, tz=None, json_out=False)
    console.print()
    show_info(store, top=20)
    return code
