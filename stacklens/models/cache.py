"""Each model built once per command: memos per DuckDB connection and per store.

A connection's `events` view is fixed when it is opened (its file list and clock transforms),
so a model built over a connection stays right for that connection's whole life: the memo is
keyed by the connection itself (weakly: it goes with it). A store's shared connection and its
kernel models are keyed by the store object and its fingerprint (event files, clocks.json), so
an ingest or a `stacklens sync` in between gives fresh ones.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import duckdb

_BY_CONNECTION: "weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, dict[str, Any]]" = weakref.WeakKeyDictionary()
_BY_STORE: "weakref.WeakKeyDictionary[Any, tuple[tuple, dict[str, Any]]]" = weakref.WeakKeyDictionary()


def memo(con: duckdb.DuckDBPyConnection, key: str, build: Callable[[], Any]) -> Any:
    """`build()` once per connection and key."""
    d = _BY_CONNECTION.get(con)
    if d is None:
        d = _BY_CONNECTION[con] = {}
    if key not in d:
        d[key] = build()
    return d[key]


def _store_memo(store) -> dict[str, Any]:
    fp = store.fingerprint()
    entry = _BY_STORE.get(store)
    if entry is None or entry[0] != fp:
        entry = _BY_STORE[store] = (fp, {})
    return entry[1]


def shared_connection(store) -> duckdb.DuckDBPyConnection:
    """The store's connection for this command: models memoized on it are shared by every
    caller (explain, diagnose, the web UI's data)."""
    d = _store_memo(store)
    if "con" not in d:
        d["con"] = store.connect()
    return d["con"]


def kernel_model(store, host: str):
    """The store's KernelModel of one host (its tables are built lazily, once)."""
    from stacklens.models.kernel import KernelModel
    d = _store_memo(store)
    key = f"kernel:{host}"
    if key not in d:
        d[key] = KernelModel(store, host)
    return d[key]
