"""`stacklens sql`: DuckDB over the event table."""

from __future__ import annotations

import csv as csv_mod
import sys

import duckdb

from stacklens.errors import StacklensError
from stacklens.store.store import Store
from stacklens.views.terminal import emit_json, print_table


def run_query(store: Store, query: str) -> tuple[list[str], list[tuple]]:
    con = store.connect()
    try:
        cur = con.execute(query)
        cols = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchall() if cols else []
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StacklensError(f"SQL: {first}") from None
    return cols, rows


def run_sql(store: Store, query: str, csv: bool = False, json_out: bool = False) -> None:
    cols, rows = run_query(store, query)
    if json_out:
        emit_json([dict(zip(cols, r)) for r in rows])
    elif csv:
        w = csv_mod.writer(sys.stdout, lineterminator="\n")  # Unix line ends (the module's default is \r\n)
        w.writerow(cols)
        w.writerows(rows)
    else:
        print_table(cols, rows)
