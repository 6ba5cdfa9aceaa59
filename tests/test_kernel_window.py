"""Windowed kernel intervals (models/kernel_window.py, the web UI's kernel view) against the
whole-host KernelModel on the real many-threads LTTng trace: the running intervals and the
running/runnable states read from a window plus its look-back must equal the whole model's,
clipped to the window. (The whole model is itself checked against babeltrace2 in test_kernel.)"""

from __future__ import annotations

import pyarrow as pa
import pytest

from conftest import need_data
from stacklens.models.kernel import KernelModel
from stacklens.models.kernel_window import KernelWindow
from stacklens.store import Store
from stacklens.store.ingest import ingest
from stacklens.views.web.data import KERNEL_THREAD_LANES, WebData

# (0.0, 0.0002) ends before 7 of the 8 CPUs first switch: their thread comes from after the window
WINDOWS = [(0.0, 1.0), (0.0, 0.0002), (0.3, 0.31), (0.5, 0.7), (0.9, 0.95), (0.001, 0.002), (0.6, 0.6001)]


@pytest.fixture(scope="module")
def many_threads(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("kwin") / "s", create=True)
    ingest(store, [need_data("tracecompass", "many-threads")])
    model = KernelModel(store, "wilbrod")
    return store, model


def _window(model, frac):
    span = model.span.end - model.span.start
    return model.span.start + int(span * frac[0]), model.span.start + int(span * frac[1])


@pytest.mark.parametrize("frac", WINDOWS)
def test_window_running_and_states_equal_whole_model_clipped(many_threads, frac):
    store, model = many_threads
    window = KernelWindow(store, "wilbrod")
    lo, hi = _window(model, frac)
    model._need("running")
    model._need("states")
    expected = model.con.execute("""
        SELECT cpu, tid, comm, greatest(start, $1), least("end", $2) FROM running
        WHERE least("end", $2) > greatest(start, $1)""", [lo, hi]).fetchall()
    got = [(r["cpu"], r["tid"], r["comm"], r["start"], r["end"]) for r in window.running(lo, hi).to_pylist()]
    assert expected and sorted(got) == sorted(expected)
    # every CPU's thread at lo is known: by a switch before lo, or at the trace start by the
    # CPU's first switch-out (its prev_tid ran since the start)
    assert window.missing_cpus == []

    # the threads that ran most, plus threads preempted in the window (runnable after a switch-out)
    tids = [r[0] for r in model.con.execute("""
        SELECT tid FROM running WHERE tid <> 0 AND "end" > $1 AND start < $2 GROUP BY tid
        ORDER BY sum(least("end", $2) - greatest(start, $1)) DESC, tid LIMIT 30""", [lo, hi]).fetchall()]
    tids += [r[0] for r in model.con.execute("""
        SELECT DISTINCT tid FROM states WHERE state = 'runnable' AND "end" > $1 AND start < $2
        ORDER BY tid LIMIT 30""", [lo, hi]).fetchall()]
    model.con.register("_t", pa.table({"tid": pa.array(sorted(set(tids)), pa.int64())}))
    expected_states = model.con.execute("""
        SELECT tid, state, greatest(start, $1), least("end", $2) FROM states
        WHERE tid IN (SELECT tid FROM _t) AND state IN ('running', 'runnable')
          AND least("end", $2) > greatest(start, $1)""", [lo, hi]).fetchall()
    got_states = [(r["tid"], r["state"], r["start"], r["end"]) for r in window.thread_states(tids, lo, hi).to_pylist()]
    if frac[1] - frac[0] >= 0.001:  # the 43 µs window holds no preemption
        assert any(s[1] == "runnable" for s in expected_states)
    assert sorted(got_states) == sorted(expected_states)


def test_kernel_view_level_of_detail_and_row_cap(many_threads):
    store, model = many_threads
    data = WebData(store)
    px = 200
    out = data.view("kernel", model.span.start, model.span.end, px)
    bars = out["bars"]
    cpu_lanes = {b["lane"] for b in bars if b["state"] == "cpu"}
    thread_lanes = {b["lane"] for b in bars if b["state"] not in ("cpu", "irq", "softirq")}  # IRQ lanes are per CPU
    assert len(cpu_lanes) == 8 and 0 < len(thread_lanes) <= KERNEL_THREAD_LANES
    # at most one merged bar per lane, state and pixel, plus the intervals longer than a pixel
    bucket = (model.span.end - model.span.start) // px
    short = [b for b in bars if b["merged"] > 1]
    assert short and len(bars) < 28_325  # fewer bars than sched_switch events
    for b in bars:
        assert model.span.start <= b["start"] < b["end"] <= model.span.end
    # merged bars: at most one per lane, state and pixel
    keys = [(b["lane"], b["state"], (b["start"] - model.span.start) // bucket) for b in short]
    assert len(keys) == len(set(keys))
    # CPU time per CPU is kept by the merge: the bars of a CPU lane never overlap and cover
    # at least the busy time the whole model counts
    busy = {r["cpu"]: r["busy_ns"] for r in model.cpu_by_cpu().to_pylist()}
    for lane in cpu_lanes:
        cpu = int(lane.split()[1])
        spans = sorted((b["start"], b["end"]) for b in bars if b["lane"] == lane)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        assert sum(e - s for s, e in spans) >= busy[cpu]
    # preemption stays visible: some thread lane has a runnable bar labelled as such
    assert any(b["state"] == "runnable" and "preempted" in b["label"] for b in bars)


def test_one_window_object_over_overlapping_windows_equals_whole_model(many_threads):
    """The web UI keeps one KernelWindow per host: rows parsed for earlier windows are reused
    (only the gaps are read), so later, overlapping windows must still equal the whole model."""
    store, model = many_threads
    window = KernelWindow(store, "wilbrod")
    model._need("running")
    model._need("states")
    tids = [r[0] for r in model.con.execute(
        "SELECT tid FROM running WHERE tid <> 0 GROUP BY tid ORDER BY count(*) DESC, tid LIMIT 40").fetchall()]
    model.con.register("_t_all", pa.table({"tid": pa.array(sorted(tids), pa.int64())}))
    for frac in [(0.5, 0.7), (0.6, 0.6001), (0.45, 0.55), (0.3, 0.31), (0.2, 0.8), (0.0, 1.0), (0.69, 0.71)]:
        lo, hi = _window(model, frac)
        expected = model.con.execute("""
            SELECT cpu, tid, comm, greatest(start, $1), least("end", $2) FROM running
            WHERE least("end", $2) > greatest(start, $1)""", [lo, hi]).fetchall()
        got = [(r["cpu"], r["tid"], r["comm"], r["start"], r["end"]) for r in window.running(lo, hi).to_pylist()]
        assert expected and sorted(got) == sorted(expected), frac
        expected_states = model.con.execute("""
            SELECT tid, state, greatest(start, $1), least("end", $2) FROM states
            WHERE tid IN (SELECT tid FROM _t_all) AND state IN ('running', 'runnable')
              AND least("end", $2) > greatest(start, $1)""", [lo, hi]).fetchall()
        got_states = [(r["tid"], r["state"], r["start"], r["end"])
                      for r in window.thread_states(tids, lo, hi).to_pylist()]
        assert expected_states and sorted(got_states) == sorted(expected_states), frac
    assert len(window._cache) == 1  # the whole trace was read: one parsed range, no duplicate rows
