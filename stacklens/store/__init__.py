"""The event store: one common event table (Arrow / Parquet on disk / DuckDB for queries)."""

from stacklens.store.schema import EVENT_SCHEMA, LOST_SCHEMA, conform
from stacklens.store.store import Store

__all__ = ["EVENT_SCHEMA", "LOST_SCHEMA", "Store", "conform"]
