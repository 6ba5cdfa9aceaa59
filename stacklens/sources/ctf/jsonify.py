"""JSON objects from typed Arrow columns, vectorised.

Flat classes (integers, floats, strings: nearly every LTTng event) are turned into JSON with
Arrow compute kernels (cast to text, escape, join); classes with nested values (arrays,
structures, variants) go through DuckDB (`base.json_objects`). No Python per event.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from stacklens.sources.base import json_objects


def _flat(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t) \
        or pa.types.is_large_string(t) or pa.types.is_boolean(t)


def _escape(a: pa.Array) -> pa.Array:
    if pc.any(pc.match_substring_regex(a, r"[\x00-\x1f]")).as_py():
        # rare: control characters need \u escapes; do those rows in Python
        return pa.array([None if s is None else json.dumps(s, ensure_ascii=False)
                         for s in a.to_pylist()], pa.large_string())
    a = pc.replace_substring(a, "\\", "\\\\")
    a = pc.replace_substring(a, '"', '\\"')
    q = pa.scalar('"', pa.large_string())
    return pc.binary_join_element_wise(q, a, q, pa.scalar("", pa.large_string()))


def _text(a: pa.Array) -> pa.Array:
    t = a.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _escape(a.cast(pa.large_string()))
    if pa.types.is_floating(t):
        s = pc.cast(a, pa.large_string())
        finite = pc.is_finite(a)
        return pc.if_else(finite, s, pa.scalar("null", pa.large_string()))
    if pa.types.is_boolean(t):
        return pc.if_else(a, "true", "false").cast(pa.large_string())
    return pc.cast(a, pa.large_string())


def json_column(keys: list[str], arrays: list[pa.Array], n: int) -> pa.Array:
    """One JSON object string per row: {keys[i]: arrays[i][row], ...}."""
    if not keys:
        return pa.repeat(pa.scalar("{}"), n)
    if not all(_flat(a.type) and a.null_count == 0 for a in arrays):
        table = pa.table(arrays, names=[f"c{i}" for i in range(len(arrays))])
        out = json_objects(table.rename_columns(keys), keys) if len(set(keys)) == len(keys) \
            else json_objects(table, table.column_names)
        return out.cast(pa.string())
    pieces: list[object] = []
    for i, (k, a) in enumerate(zip(keys, arrays)):
        pieces.append(pa.scalar(("{" if i == 0 else ",") + json.dumps(k, ensure_ascii=False) + ":",
                                pa.large_string()))
        pieces.append(_text(a))
    pieces.append(pa.scalar("}", pa.large_string()))
    return pc.binary_join_element_wise(*pieces, pa.scalar("", pa.large_string())).cast(pa.string())
