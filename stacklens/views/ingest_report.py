"""`stacklens ingest`: progress bar while reading, then what was ingested, skipped, rejected."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from stacklens.store.ingest import PartResult, ingest
from stacklens.store.store import Store
from stacklens.views.terminal import console, emit_json, err_console, print_table


def run_ingest(store: Store, paths: list[Path], host: str | None, tz: str | None,
               json_out: bool, cluster: str | None = None) -> int:
    """Ingest and report; returns the exit code: 1 if any part was rejected, or if nothing
    was ingested (every part rejected or not recognised), else 0. `cluster`: the address of a
    Dask scheduler to run one task per part on (stacklens.cluster.ingest)."""
    from stacklens.sources.bundle import NotRead, discover
    from stacklens.store.ingest import part_size

    # (parts that are not read — devices, FIFOs, links back — have no size to show)
    total = sum(part_size(p.path) for p in discover(paths)
                if p.reader is not None and not issubclass(p.reader, NotRead))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task("ingest", total=total or None)

        def on_part(part, size):  # noqa: ANN001
            bar.update(task, description=f"{part.path.name[:40]}")

        if cluster:
            from stacklens.cluster.ingest import ingest_on_cluster
            results = ingest_on_cluster(cluster, store, paths, host=host, tz=tz,
                                        on_done=lambda part, size: bar.advance(task, size))
        else:
            results = ingest(store, paths, host=host, tz=tz, on_part=on_part,
                             on_progress=lambda n: bar.advance(task, n))
    rejected = [r for r in results if r.status == "rejected"]
    if json_out:
        emit_json({"store": str(store.root), "parts": [r.to_dict() for r in results]})
    else:
        _print(results)
    for r in rejected:
        err_console.print(f"stacklens: rejected {r.path}: {r.message}", markup=False, highlight=False)
    if rejected:
        return 1
    if not any(r.status in ("ingested", "already") for r in results):
        # (rejections were named above, one line each)
        err_console.print(f"stacklens: nothing ingested from {', '.join(str(p) for p in paths)}: "
                          f"{sum(r.status == 'unrecognised' for r in results)} part(s) not recognised",
                          markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0


def _print(results: list[PartResult]) -> None:
    done = [r for r in results if r.status == "ingested"]
    if done:
        print_table(["part", "format", "host", "events", "skipped", "lost", "note"],
                    [(r.path, r.format, r.host, f"{r.rows:,}", f"{r.skipped:,}", f"{r.lost:,}",
                      "; ".join(filter(None, [r.message, *r.notes]))) for r in done],
                    title="ingested", right=("events", "skipped", "lost"))
    already = [r for r in results if r.status == "already"]
    unknown = [r for r in results if r.status == "unrecognised"]
    rejected = [r for r in results if r.status == "rejected"]
    rows = sum(r.rows for r in done)
    console.print(f"{len(done)} part(s) ingested ({rows:,} events), {len(already)} already in the "
                  f"store, {len(unknown)} not recognised, {len(rejected)} rejected")
    if already:
        console.print("already in the store (nothing added): " + ", ".join(Path(r.path).name for r in already[:8])
                      + (" …" if len(already) > 8 else ""), markup=False, highlight=False)
    if unknown:
        console.print("not a recognised format (skipped): " + ", ".join(Path(r.path).name for r in unknown[:8])
                      + (f" … (+{len(unknown) - 8})" if len(unknown) > 8 else ""), markup=False, highlight=False)
