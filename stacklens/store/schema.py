"""The common event table (SPEC §2) as an Arrow schema.

Every reader produces rows of this table. Columns that tie layers and hosts together
(thesis table 4.1) are first-class: pid/tid/procname for the kernel, request_id and
instance for the application layer. Everything else an event carries goes to `fields`,
a JSON object, so one table holds every format while DuckDB still reads any field
(`fields->>'next_tid'`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

LAYERS = ("app", "virt", "kernel")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.int64(), nullable=False),  # ns since the Unix epoch, host clock (raw)
        pa.field("host", pa.string(), nullable=False),
        pa.field("layer", pa.string(), nullable=False),  # app / virt / kernel
        pa.field("source", pa.string(), nullable=False),  # input format, e.g. "oslo.log", "ctf"
        pa.field("name", pa.string(), nullable=False),  # event class (logger name for logs)
        pa.field("cpu", pa.int32()),
        pa.field("pid", pa.int64()),
        pa.field("tid", pa.int64()),
        pa.field("procname", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("instance", pa.string()),
        pa.field("fields", pa.string()),  # JSON object with the event's own fields
        pa.field("src", pa.string(), nullable=False),  # id of the ingested source (content hash)
        pa.field("pos", pa.int64(), nullable=False),  # position of the event in its source
    ]
)

# Columns a reader may leave out: ingest fills them from the source's context.
CONTEXT_COLUMNS = ("host", "layer", "source", "src")

# What the store writes: the same columns, those with few distinct values as dictionaries.
# Constants (host, source, src) then cost one index per row instead of a string, readers
# can hand over names as dictionaries over their event classes, and Parquet writes the
# dictionaries as they are instead of hashing every value. Readers of the store (DuckDB) see
# plain strings: Parquet's dictionary encoding is an encoding, not a type.
DICTIONARY_TYPE = pa.dictionary(pa.int32(), pa.string())
STORED_SCHEMA = pa.schema([pa.field(f.name, DICTIONARY_TYPE, f.nullable)
                           if f.name in ("host", "layer", "source", "name", "src") else f
                           for f in EVENT_SCHEMA])

LOST_SCHEMA = pa.schema(
    [
        pa.field("host", pa.string(), nullable=False),
        pa.field("src", pa.string(), nullable=False),
        pa.field("stream", pa.string()),
        pa.field("cpu", pa.int32()),
        pa.field("ts_begin", pa.int64()),
        pa.field("ts_end", pa.int64()),
        pa.field("count", pa.int64(), nullable=False),
    ]
)


def conform(batch: pa.RecordBatch | pa.Table, schema: pa.Schema = EVENT_SCHEMA,
            **constants: object) -> pa.Table:
    """Return `batch` with exactly `schema`'s columns: missing ones filled with `constants`
    (a value per column) or nulls, present ones cast to the schema's type."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    n = table.num_rows
    columns = []
    for field in schema:
        dictionary = pa.types.is_dictionary(field.type)
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                if dictionary and not pa.types.is_dictionary(col.type):
                    col = col.cast(field.type.value_type).dictionary_encode()
                col = col.cast(field.type)
        elif field.name in constants and dictionary:
            value = constants[field.name]
            col = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, np.int32)) if value is not None else pa.nulls(n, pa.int32()),
                pa.array([value], field.type.value_type))
        elif field.name in constants:
            col = pa.repeat(pa.scalar(constants[field.name], type=field.type), n)
        else:
            if not field.nullable:
                raise ValueError(f"column {field.name!r} is required")
            col = pa.nulls(n, type=field.type)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
