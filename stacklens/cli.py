"""The `stacklens` command line (typer + rich); every command has a `--json` twin."""

from __future__ import annotations

import datetime as dt
import gc
import os
import re
import sys
from pathlib import Path
from typing import Optional

# NumPy's OpenBLAS starts a thread per core that spins after any BLAS call, taking CPU from
# the decoding threads; nothing here needs threaded BLAS. Set before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Arrow's allocator (mimalloc) gives freed memory back to the kernel 10 ms after it is freed;
# ingest frees and reallocates chunk buffers faster than that, paying each time in zero-filled
# pages. Keeping it a second: ingest CPU -8 % on 21 distinct traces (4 alternating rounds);
# an idle process (the UI) still returns it. Set before pyarrow is first imported.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "1000")

import typer  # noqa: E402

from stacklens.errors import StacklensError  # noqa: E402

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Multi-layer tracing and diagnosis for OpenStack clouds.")

DEFAULT_STORE = os.environ.get("STACKLENS_STORE", "stacklens-store")
StoreOpt = typer.Option(DEFAULT_STORE, "--store", "-s", help="Store directory, or URL (file://, s3://; env STACKLENS_STORE).")
JsonOpt = typer.Option(False, "--json", help="Machine-readable JSON on stdout.")
ClusterOpt = typer.Option(None, "--cluster", envvar="STACKLENS_CLUSTER", show_envvar=False,
                          help="Dask scheduler address (tcp://HOST:PORT; env STACKLENS_CLUSTER): run the "
                               "per-part / per-host work on its workers (the store must be on a shared filesystem or an object store).")


def _store(path: str, create: bool = False):
    from stacklens.store import Store
    return Store(path, create=create)


@app.command()
def ingest(paths: list[Path] = typer.Argument(..., help="Trace bundles, trace directories or files."),
           store: str = StoreOpt,
           host: Optional[str] = typer.Option(None, help="Host of every part (overrides bundle.toml)."),
           tz: Optional[str] = typer.Option(None, help="Time zone of text timestamps (UTC, +02:00, Europe/Paris)."),
           cluster: Optional[str] = ClusterOpt,
           json_out: bool = JsonOpt) -> None:
    """Read every recognised part under PATHS into the store (idempotent)."""
    from stacklens.views.ingest_report import run_ingest
    for p in paths:
        if not p.exists():
            raise StacklensError(f"{p}: no such file or directory")
    _ingest_memory_pool()
    code = run_ingest(_store(store, create=True), paths, host=host, tz=tz, json_out=json_out, cluster=cluster)
    raise typer.Exit(code)


def _ingest_memory_pool() -> None:
    """Arrow's buffers from jemalloc for an ingest, unless ARROW_DEFAULT_MEMORY_POOL says
    otherwise: ingest allocates and frees chunk-sized buffers at a high rate, and mimalloc
    served them as fresh huge pages zeroed by the kernel — jemalloc: CPU -5.6 % (3.92 -> 3.70 s,
    6 alternating rounds after babeltrace2 runs), peak RSS 570 -> 501 MB on 21 distinct traces.
    This sets pyarrow's pool (when `ingest` is called in-process); `main` also makes jemalloc
    Arrow's C++ default, which the Parquet writer and compute kernels use."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pass


def _ingest_start(argv: list[str]) -> None:
    """What an `ingest` does before the commands' modules are imported (~0.2 s on one CPU):
    - Arrow's C++ default pool (read from the environment when pyarrow is first imported) is
      jemalloc too: the Parquet writer's and compute kernels' buffers then also stop coming
      from mimalloc's fresh zero-filled pages. Against pyarrow's pool alone, medians of 11
      alternating runs on 21 distinct traces: CPU 2.88 -> 2.81 s, peak RSS 553 -> 482 MB (the
      system allocator as the default: no better than mimalloc).
    - the content ids of the parts named as they are (trace directories, files) start being
      computed in a thread of their own, on a CPU the imports leave idle."""
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if at is None or argv[at] != "ingest":
        return
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    if "--cluster" in argv or any(a.startswith("--cluster=") for a in argv) or os.environ.get("STACKLENS_CLUSTER"):
        return  # the workers hash what they read
    takes_value = {"-s", "--store", "--host", "--tz", "--cluster"}
    paths, skip = [], False
    for a in argv[at + 1:]:
        if skip or a in takes_value:
            skip = not skip and a in takes_value
            continue
        if a == "--":
            continue
        if not a.startswith("-"):
            paths.append(a)
    from stacklens.store.source_ids import prehash, whole_parts
    parts = whole_parts(paths)
    if parts:
        prehash(parts)


@app.command()
def info(store: str = StoreOpt, json_out: bool = JsonOpt,
         top: int = typer.Option(30, help="Event names to list (0: all).")) -> None:
    """Hosts, layers, sources, time range, event counts per name, lost events."""
    from stacklens.views.info import show_info
    show_info(_store(store), json_out=json_out, top=top)


@app.command()
def events(store: str = StoreOpt,
           name: Optional[str] = typer.Option(None, help="Event name (SQL LIKE pattern with %)."),
           host: Optional[str] = typer.Option(None),
           layer: Optional[str] = typer.Option(None),
           request: Optional[str] = typer.Option(None, help="Request id."),
           from_: Optional[str] = typer.Option(None, "--from", help="Start: ISO time (UTC) or ns."),
           to: Optional[str] = typer.Option(None, "--to", help="End (exclusive): ISO time or ns."),
           limit: int = typer.Option(50, help="Rows at most (0: all)."),
           fields: Optional[str] = typer.Option(None, "--fields",
                                                help="Also print these fields as key=value (comma list, or 'all')."),
           json_out: bool = JsonOpt) -> None:
    """Events in time order, filtered: one line per event with its message."""
    from stacklens.views.events import show_events
    show_events(_store(store), name=name, host=host, layer=layer, request=request,
                start=parse_time(from_), end=parse_time(to), limit=limit, json_out=json_out, fields=fields)


@app.command()
def sql(query: str = typer.Argument(..., help="DuckDB SQL; tables: events, lost, sources."),
        store: str = StoreOpt,
        csv: bool = typer.Option(False, "--csv", help="CSV on stdout."),
        json_out: bool = JsonOpt) -> None:
    """Run SQL over the event table."""
    from stacklens.views.sql import run_sql
    run_sql(_store(store), query, csv=csv, json_out=json_out)


@app.command("gc")
def collect_garbage(store: str = StoreOpt,
       grace: Optional[float] = typer.Option(None, help="Seconds since a file or claim was last written before "
                                                       "it may go (default: env STACKLENS_STORE_GRACE_S or 3600)."),
       json_out: bool = JsonOpt) -> None:
    """Remove what killed or losing writers left in the store (never what a manifest names)."""
    from stacklens.views.terminal import console, emit_json
    s = _store(store)
    removed = s.gc(grace)
    if json_out:
        emit_json({"store": str(s.root), "removed": removed})
    else:
        console.print(f"{s.root}: {len(removed)} objects removed")


@app.command()
def demo(out: Path = typer.Option(Path("out/demo-store"), help="Store to (re)create."),
         data: Optional[Path] = typer.Option(None, help="The shared data directory.")) -> None:
    """Run the migration lab (normal + stressed), ingest it and report; --data DIR: ingest the shared data set instead."""
    from stacklens.views.demo import run_demo
    raise typer.Exit(run_demo(out, data))


# Commands of the layers live next to their views; each module has `register(app)`.
# Add a module here to add its commands (kept explicit: a broken module fails loudly).
COMMAND_MODULES: list[str] = [
    "stacklens.views.app",
    "stacklens.views.dump_cli",
    "stacklens.views.migrations",
    "stacklens.views.kernel",
    "stacklens.views.collect",
    "stacklens.views.ovs",
    "stacklens.views.sync_report",
    "stacklens.views.explain",
    "stacklens.views.diagnose",
    "stacklens.views.export",
    "stacklens.views.web.cli",
]


def _register_commands() -> None:
    import importlib
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$")


def parse_time(text: Optional[str]) -> Optional[int]:
    """ns since the epoch from an integer or an ISO 8601 time (UTC unless an offset is given)."""
    if text is None:
        return None
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    m = _ISO.match(text)
    if not m:
        raise StacklensError(f"cannot read time {text!r}: give ns since the epoch or YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]")
    base = dt.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}")
    tz = m.group(4)
    if tz and tz != "Z":
        tz = tz if ":" in tz else tz[:3] + ":" + tz[3:]
        base = dt.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{tz}")
    else:
        base = base.replace(tzinfo=dt.timezone.utc)
    frac = int((m.group(3) or "0").ljust(9, "0"))
    return int(base.timestamp()) * 1_000_000_000 + frac


def main() -> None:
    code: int | str | None = 0
    try:
        # startup imports make no cyclic garbage worth a scan; what they leave alive is
        # frozen out of every later collection
        gc.disable()
        try:
            _ingest_start(sys.argv[1:])  # before the commands' modules import pyarrow
            _register_commands()
        finally:
            gc.freeze()
            gc.enable()
        app()
    except SystemExit as e:
        code = e.code
    except StacklensError as e:
        print(f"stacklens: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("stacklens: interrupted", file=sys.stderr)
        code = 130
    _exit(code)


def _exit(code: int | str | None) -> None:
    """End the process once the command is done, without the interpreter's teardown: tearing
    down the modules of numba, pyarrow and DuckDB (a full GC over their objects and every
    module's deallocation) takes ~0.4 s of every command. What an orderly exit must still do
    is done first: join the threads still running, run the atexit handlers (temporary
    directories, logging, child processes), flush the standard streams.
    STACKLENS_FULL_EXIT=1 keeps the interpreter's own exit (for coverage tools)."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    code = 0 if code is None else int(code)
    if os.environ.get("STACKLENS_FULL_EXIT"):
        sys.exit(code)
    import atexit
    import threading
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what interpreter exit does first
    except Exception:
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
