"""stacklens on a Dask distributed cluster (`--cluster ADDRESS`, env STACKLENS_CLUSTER).

The store is Parquet partitioned by host and layer, and most of the work is per host: reading
a part into the store, and the per-host models (thread states, CPU, preemption, OvS packet
paths, the packets a host sent and received). With a cluster address:

* ingest runs one Dask task per part on the workers (stacklens.cluster.ingest): each worker
  runs the part's reader and the store's writer, exactly as the embedded ingest does;
* a per-host analysis runs one task per host (`per_host`): the worker opens the store, builds
  that host's models over the host's partitions only, and returns the result (an Arrow table,
  a dict of a few hundred rows) — never the events;
* the cross-host steps (packet matching and the convex hull of `sync`, the migrations'
  source ↔ destination matching, the reports' aggregates, `diagnose`'s rules and ranking)
  run on the client over those results;
* each host's task prefers one worker (`placement`: rendezvous hashing of host and worker
  names), so the commands that read a host read it on the same worker, whose page cache holds
  its partitions; a preference only (work stealing, a dead worker).

Without an address everything runs in-process, as before: `per_host(None, …)` is a loop.
The store must be reachable under the same name from the client and every worker: a path on a
shared filesystem (made absolute before it is sent) or a URL (file:// on a shared filesystem,
s3:// with the same fsspec configuration on every machine; store/objectstore.py).

A worker that dies mid-task (kill -9, out of memory) loses its task: the scheduler runs it
again on another worker (up to `distributed.scheduler.allowed-failures` times, then the run
fails with one line naming the part or host). A re-run ingest task starts by dropping what the
dead one wrote for its source (SourceWriter), and a source is visible only once committed. (On
a store at a URL there is no lock to tell a dead writer from a live one: what the dead one
wrote stays, never read, until it is older than the grace period, then `stacklens gc` or the
next writer removes it.)
"""

from __future__ import annotations

import atexit
import os
import uuid
from typing import Any, Callable, Sequence

from stacklens.errors import StacklensError

ENV = "STACKLENS_CLUSTER"  # read by the commands' --cluster option (stacklens.cli.ClusterOpt)
CONNECT_TIMEOUT_S = 10

_clients: dict[str, Any] = {}


def client(address: str):  # -> distributed.Client
    """A connected client of the scheduler at `address` (one per address and process)."""
    c = _clients.get(address)
    if c is not None and c.status == "running":
        return c
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - a dependency of the project
        raise StacklensError("--cluster needs dask.distributed (pip install 'distributed')") from None
    try:
        c = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise StacklensError(f"cluster {address}: cannot connect to the Dask scheduler ({e})") from None
    except ValueError as e:
        raise StacklensError(f"cluster {address}: not a scheduler address ({e})") from None
    _clients[address] = c
    return c


def close(address: str | None = None) -> None:
    """Close the client of `address` (of every address when None)."""
    for a in [address] if address else list(_clients):
        c = _clients.pop(a, None)
        if c is None:
            continue
        try:
            c.close(timeout=5)
        except Exception:  # noqa: BLE001 - shutting down: nothing left to report to
            pass


atexit.register(close)


def shared_path(path: str | os.PathLike[str]) -> str:
    """`path` as the workers must see it: absolute (their working directory is not ours), or
    the store's URL."""
    from stacklens.store.location import canonical
    return canonical(path)


def gather(futures: list, names: Sequence[str], what: str) -> list:
    """The futures' results in order; a task that failed for good becomes one line naming it."""
    out = []
    for f, name in zip(futures, names):
        try:
            out.append(f.result())
        except Exception as e:  # noqa: BLE001 - the task's error, or the scheduler's KilledWorker
            raise StacklensError(f"cluster: {what} {name} failed: {describe(e)}") from None
    return out


def describe(e: BaseException) -> str:
    from distributed.scheduler import KilledWorker
    if isinstance(e, KilledWorker):
        return ("the workers running it died (killed, or out of memory) more times than the "
                "scheduler retries (distributed.scheduler.allowed-failures)")
    if isinstance(e, StacklensError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def per_host(address: str | None, fn: Callable[..., Any], store: Any, hosts: Sequence[str],
             *args: Any) -> list[Any]:
    """[fn(store, host, *args) for host in hosts]: in-process without an address (`store` as
    given: a path, or a Store whose memos the calls share), else one Dask task per host, each
    given the store's absolute path and preferring the worker `placement` names for its host.
    `fn` must be a module-level function (the workers import it) that opens the store itself
    (`open_store`) and returns a small result."""
    if not address:
        return [fn(store, h, *args) for h in hosts]
    root = shared_path(store.root if hasattr(store, "root") else store)
    c = client(address)
    run = uuid.uuid4().hex[:8]
    where = placement(c, hosts)
    futures = [c.submit(fn, root, h, *args, key=task_key(fn.__name__, h, run),
                        **({"workers": [where[h]], "allow_other_workers": True} if h in where else {}))
               for h in hosts]
    try:
        return gather(futures, [f"host {h!r}" for h in hosts], fn.__name__)
    finally:
        for f in futures:
            f.release()


def task_key(name: str, host: str, run: str) -> str:
    """The Dask key of one host's task: `NAME-HOST-RUN` (the task stream shows it)."""
    return f"{name}-{host}-{run}"


def open_store(store: Any):  # -> Store
    """The Store a per-host function was given: opened from its path on a worker, as is
    in-process (its models memoized once for every host of the command)."""
    from stacklens.store import Store
    return store if isinstance(store, Store) else Store(store)


# ---- host → worker placement ------------------------------------------------------------------
# The store is on a shared filesystem, so any worker can read any host; but the worker that read
# a host's partitions last has them in its machine's page cache (and, for the kernel models, in
# nothing else: models are not kept between tasks). Each host's task therefore prefers one
# worker, chosen by rendezvous hashing over the workers' names: the choice depends only on the
# host and on the set of workers (not on the command, the other hosts or the order of
# submission), and when a worker leaves only its own hosts move. `allow_other_workers` keeps it
# a preference: Dask's work stealing may move a queued task to an idle worker, and a task whose
# worker is gone runs on another.

def placement(c, hosts: Sequence[str]) -> dict[str, str]:  # c: distributed.Client
    """host → the address of the worker its task prefers (empty without workers)."""
    workers = {addr: str(w.get("name", addr)) for addr, w in c.scheduler_info(n_workers=-1)["workers"].items()}
    return {h: preferred_worker(h, workers) for h in hosts} if workers else {}


def preferred_worker(host: str, workers: dict[str, str]) -> str:
    """Of `workers` (address → name), the address whose name hashes highest with `host`
    (rendezvous hashing; blake2b, not Python's salted hash(), so every process agrees)."""
    import hashlib

    def weight(addr: str) -> tuple[bytes, str]:
        return hashlib.blake2b(f"{workers[addr]}\0{host}".encode(), digest_size=8).digest(), addr
    return max(workers, key=weight)


def partition_hosts(store, layer: str | None = None) -> list[str]:
    """The hosts that have partitions in the store (of `layer`), from its directory names:
    what the client knows without reading an event."""
    import posixpath
    from urllib.parse import unquote
    names = {unquote(posixpath.basename(posixpath.dirname(posixpath.dirname(str(p)))).split("=", 1)[1])
             for p in store.event_files(layer=layer)}  # paths, or URLs of a store at one
    return sorted(names)


__all__ = ["ENV", "client", "close", "gather", "open_store", "partition_hosts", "per_host", "placement",
           "preferred_worker", "shared_path", "task_key"]

