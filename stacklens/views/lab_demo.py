"""`stacklens demo` as the self-contained lab demo: run the `normal` and `stressed` migration
scenarios for real, ingest both bundles, print the migration report, save the dirty-pages
plot. Needs qemu-system-x86_64 and gcc; without them `stacklens demo` falls back to the
shared-data demo (views/demo.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from stacklens.store import Store
from stacklens.store.store import remove_store
from stacklens.views.ingest_report import run_ingest
from stacklens.views.terminal import console


def lab_available() -> bool:
    return all(shutil.which(p) for p in ("qemu-system-x86_64", "gcc", "ld"))


def run_lab_demo(out: Path) -> int:
    from stacklens.lab.runner import run_scenario
    from stacklens.views.migrations import show_migrations
    out.mkdir(parents=True, exist_ok=True)
    bundles = []
    for name in ("normal", "stressed"):
        bundle = out / f"lab-{name}"
        run_scenario(name, bundle, progress=console.print)
        bundles.append(bundle)
    store_dir = out / "store"
    remove_store(store_dir)
    store = Store(store_dir, create=True)
    console.print(f"\n[bold]stacklens demo[/]: ingesting {', '.join(str(b) for b in bundles)} into {store_dir}")
    code = run_ingest(store, bundles, host=None, tz=None, json_out=False)
    console.print()
    show_migrations(str(store_dir), json_out=False, png=out / "dirty-pages.png")
    return code
