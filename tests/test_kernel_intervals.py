"""The kernel view answered from the whole host's stored intervals (models/kernel_intervals.py)
against the same view read from the window (models/kernel_window.py), on the real many-threads
LTTng trace (8 CPUs, thousands of threads, syscalls and interrupts): the same bars, lanes and
thread count for every window and page — the web UI switches from one to the other when the
stored intervals are ready, so the picture must not change.
Independent oracle for the stored running intervals: each CPU's busy time recomputed here in
plain Python from the trace's own sched_switch events (read with a fresh DuckDB over the
store's Parquet files, their JSON fields parsed with json.loads)."""

from __future__ import annotations

import json

import duckdb
import pytest

from conftest import need_data
from stacklens.models.kernel_intervals import KernelIntervals
from stacklens.store import Store
from stacklens.store.ingest import ingest
from stacklens.views.web.data import WebData

pytestmark = pytest.mark.timeout(300)
HOST = "wilbrod"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("kint") / "s", create=True)
    ingest(s, [need_data("tracecompass", "many-threads")])
    return s


def _bars(out: dict) -> list[tuple]:
    return sorted((b["lane"], b["state"], b["start"], b["end"], b["label"], b["tid"], b["cpu"], b["merged"])
                  for b in out["bars"])


@pytest.mark.parametrize("frac,px,offset", [
    (None, 500, 0), (None, 4000, 50), ((0.0, 1.0), 1000, 0), ((0.3, 0.31), 4000, 0), ((0.5, 0.7), 200, 0),
    ((0.0, 0.0002), 1000, 0), ((0.9, 0.95), 777, 0), ((0.6, 0.6001), 1000, 0), ((0.2, 0.8), 333, 100)])
def test_whole_host_and_window_give_the_same_bars(store, frac, px, offset):
    window = WebData(store, kernel_source="window")
    whole = WebData(store, kernel_source="whole")
    ki = whole.kernel_source(HOST)
    assert isinstance(ki, KernelIntervals)
    if frac is None:
        lo = hi = None
    else:
        span = ki.span_end - ki.span_start
        lo, hi = ki.span_start + int(span * frac[0]), ki.span_start + int(span * frac[1])
    a = window.view("kernel", lo, hi, px, host=HOST, offset=offset)
    assert ki.arrays is not None  # read into NumPy: the level of detail of views/web/lod.py
    b = whole.view("kernel", lo, hi, px, host=HOST, offset=offset)
    arrays, ki.arrays = ki.arrays, None  # and the stored files queried with the view's SQL
    c = whole.view("kernel", lo, hi, px, host=HOST, offset=offset)
    ki.arrays = arrays
    assert (a["source"], b["source"], c["source"]) == ("window", "whole host", "whole host")
    assert a["bars"], frac
    for k in ("lanes", "threads_total", "start", "end", "extent_start", "extent_end"):
        assert a[k] == b[k] == c[k], k
    assert _bars(a) == _bars(b) == _bars(c)
    assert {b["state"] for b in a["bars"]} >= {"cpu", "running"}


def test_stored_running_intervals_match_sched_switch_busy_time(store):
    ki = KernelIntervals.open(store, HOST) or KernelIntervals.build(store, HOST)
    files = [str(p) for p in store.event_files(HOST, "kernel")]
    with duckdb.connect() as con:
        rows = con.execute("SELECT ts, cpu, fields FROM read_parquet($1) WHERE name = 'sched_switch' "
                           "ORDER BY cpu, ts, src, pos", [files]).fetchall()
        t0, t1 = con.execute("SELECT min(ts), max(ts) FROM read_parquet($1)", [files]).fetchall()[0]
    by_cpu: dict[int, list] = {}
    for ts, cpu, fields in rows:
        f = json.loads(fields)
        by_cpu.setdefault(cpu, []).append((ts, f["prev_tid"], f["next_tid"]))
    expected = {}
    for cpu, sw in by_cpu.items():
        busy = sw[0][0] - t0 if sw[0][1] != 0 else 0  # the first switched-out thread ran since the start
        for (ts, _, nxt), (ts2, _, _) in zip(sw, sw[1:] + [(t1, None, None)]):
            busy += (ts2 - ts) if nxt != 0 else 0
        expected[cpu] = busy
    got = dict(ki.con.execute('SELECT cpu, sum("end" - start) FROM running WHERE tid <> 0 GROUP BY cpu').fetchall())
    assert len(expected) == 8 and got == expected
    # and the window over the whole trace reads the same intervals
    assert ki.running(t0, t1 + 1).num_rows == WebData(store, kernel_source="window").kernel_source(HOST) \
        .running(t0, t1 + 1).num_rows


def test_web_ui_builds_the_stored_intervals_in_the_background(store, tmp_path):
    """The default (auto) answers from the window while the host's intervals are built, then
    from them, and keeps them for the next session."""
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy, ignore=shutil.ignore_patterns("summaries"))
    data = WebData(Store(copy))
    first = data.view("kernel", None, None, 500, host=HOST)
    assert first["source"] == "window"
    data._kernel_building[HOST].join(120)
    again = data.view("kernel", None, None, 500, host=HOST)
    assert again["source"] == "whole host" and _bars(again) == _bars(first)
    assert KernelIntervals.open(Store(copy), HOST) is not None  # kept for the next session
    # the next session (`stacklens ui` start work: prepare_kernel) opens them before the first view
    later = WebData(Store(copy))
    later.prepare_kernel()
    later.prepared.join(120)
    assert HOST in later._kernel_whole and HOST not in later._kernel_building
    third = later.view("kernel", None, None, 500, host=HOST)
    assert third["source"] == "whole host" and _bars(third) == _bars(first)


def test_a_clock_sync_makes_new_intervals_on_the_synced_time(store, tmp_path):
    """The stored intervals are keyed by the host's clock transform too: after a sync the old
    ones are not used, and the new ones equal the window's on the synchronized time."""
    import shutil
    from stacklens.store.store import ClockTransform
    copy = tmp_path / "synced"
    shutil.copytree(store.root, copy)
    s = Store(copy)
    before = KernelIntervals.open(s, HOST) or KernelIntervals.build(s, HOST)
    s.set_clocks({HOST: ClockTransform(offset_ns=1_500_000_000, drift=2e-5, base_ns=before.span_start,
                                       quality="test", reference="ref")})
    assert KernelIntervals.open(s, HOST) is None
    window = WebData(s, kernel_source="window")
    whole = WebData(s, kernel_source="whole")
    a = window.view("kernel", None, None, 600, host=HOST)
    b = whole.view("kernel", None, None, 600, host=HOST)
    assert b["source"] == "whole host" and _bars(a) == _bars(b)
    shift = 1_500_000_000 + round((before.span_end - before.span_start) * 2e-5)
    assert b["extent_start"] == before.span_start + 1_500_000_000 and b["extent_end"] == before.span_end + shift
    mid = (b["extent_start"] + b["extent_end"]) // 2
    assert _bars(window.view("kernel", mid, mid + 30_000_000, 1000, host=HOST)) == \
        _bars(whole.view("kernel", mid, mid + 30_000_000, 1000, host=HOST))


def test_a_store_where_the_intervals_cannot_be_stored_keeps_the_window(store, tmp_path):
    """A build that fails (here: `summaries` is a file, so its directory cannot be made) leaves
    the view answering from the window, saying why, with the same bars."""
    import shutil
    copy = tmp_path / "nosummaries"
    shutil.copytree(store.root, copy, ignore=shutil.ignore_patterns("summaries"))
    (copy / "summaries").write_text("not a directory\n")
    data = WebData(Store(copy))
    first = data.view("kernel", None, None, 500, host=HOST)
    data._kernel_building[HOST].join(120)
    again = data.view("kernel", None, None, 500, host=HOST)
    assert again["source"] == "window" and "could not be built" in again["source_problem"]
    assert _bars(again) == _bars(first)
