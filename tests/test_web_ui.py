"""The web UI in headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser
download), used as a person would, on two stores:
  (a) the shared data: the thesis's Nova/Cinder/OvS traces, loghub's OpenStack log and Trace
      Compass's synctraces (two kernel hosts, an scp between them, a clock-sync finding);
  (b) a lab store: `stacklens lab run --scenario interference` (real QEMU, a live migration
      slowed by co-located VMs), with a VM whose display name is HTML.
Every view is screenshotted (the test's tmp dir, and a copy under /tmp/h5-shots/) and checked
in the DOM: axis titles with units, tick labels without SI suffixes, legends, the host picker
(oracle: SELECT DISTINCT host over the store's Parquet files, read by DuckDB directly), the
events table of a clicked bar (oracle: the same window queried with DuckDB here), time cursors
(oracle: the pixel geometry of the plot), the URL restoring the view after a reload, and
findings jumping to non-empty evidence."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from conftest import need_data, need_program

pytestmark = pytest.mark.timeout(400)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = "<img src=x onerror=window.__pwned=1>vm&evil"
SHOTS_COPY = Path("/tmp/h5-shots")
UNIT = r"(h|min|s|ms|µs|ns)"
READY = "document.getElementById('chart').dataset.ready === '1'"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(store: Path):
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "stacklens.cli", "ui", "--store", str(store), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(url + "/api/summary", timeout=30)
            break
        except OSError:
            assert server.poll() is None, server.stdout.read().decode()[-2000:]
            time.sleep(0.2)
    return server, url


def _parquet(store: Path) -> str:
    return f"read_parquet('{store}/events/**/*.parquet', union_by_name=true, hive_partitioning=false)"


def _oracle(store: Path, sql: str, args: list | None = None) -> list[tuple]:
    """A query over the store's Parquet files with a fresh DuckDB (not stacklens's connection)."""
    with duckdb.connect() as con:
        return con.execute(sql.replace("EVENTS", _parquet(store)), args or []).fetchall()


def _ingest(paths: list[Path], store: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "stacklens.cli", "ingest", *map(str, paths), "--store", str(store)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def browser_factory(tmp_path_factory):
    chromium = need_program("chromium")
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    thesis = need_data("thesis")
    loghub = need_data("openstack", "loghub", "OpenStack_2k.log")
    sync = need_data("tracecompass", "synctraces")
    store = tmp_path_factory.mktemp("web-shared") / "store"
    _ingest([thesis / "nova", thesis / "cinder", thesis / "ovs-switch", loghub, sync], store)
    server, url = _serve(store)
    try:
        yield store, url
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def lab_store(tmp_path_factory):
    need_program("qemu-system-x86_64")
    root = tmp_path_factory.mktemp("web-lab")
    bundle = root / "interference"
    done = subprocess.run([sys.executable, "-m", "stacklens.cli", "lab", "run", "--scenario", "interference",
                           "--out", str(bundle)], capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    # a VM whose display name is HTML (log lines and payloads can carry anything)
    lab = json.loads((bundle / "lab.json").read_text())
    notes = bundle / "control" / "notifications.jsonl"
    lines = notes.read_text().splitlines()
    hostile = {"message_id": "m-hostile", "publisher_id": "nova-compute:lab-src", "priority": "INFO",
               "event_type": "instance.update", "timestamp": json.loads(lines[0])["timestamp"],
               "payload": {"nova_object.name": "InstanceUpdatePayload", "nova_object.namespace": "nova",
                           "nova_object.version": "1.0", "nova_object.data": {
                               "uuid": "00000000-0000-4000-8000-000000000bad", "display_name": HOSTILE,
                               "host": "lab-src", "state": "active", "task_state": None}}}
    notes.write_text("\n".join(lines + [json.dumps(hostile)]) + "\n")
    store = root / "store"
    _ingest([bundle], store)
    server, url = _serve(store)
    try:
        yield store, url, lab
    finally:
        server.kill()
        server.wait(timeout=10)


def _page(browser, url: str, tmp_path: Path):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, timeout=60_000)
    page.wait_for_selector("body[data-loaded='1']", timeout=120_000)
    page.wait_for_function(READY, timeout=60_000)
    return page, errors


def _shot(page, shots: Path, name: str) -> None:
    shots.mkdir(exist_ok=True)
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, name
    SHOTS_COPY.mkdir(exist_ok=True)
    shutil.copy(path, SHOTS_COPY / path.name)


def _tab(page, view: str) -> None:
    page.click(f"#tab-{view}")
    page.wait_for_function(READY, timeout=90_000)
    page.wait_for_timeout(200)


def _check_axes(page, view: str) -> None:
    """A drawn view has an x-axis title naming the origin and the unit, tick labels in that
    unit without SI suffixes (the old '435.173425M'), and a legend; an empty one says so."""
    if page.get_attribute("#chart", "data-empty") == "1":
        note = page.text_content("#chart .annotation-text")
        assert note.startswith("no "), (view, note)
        return
    title = page.text_content("#chart .g-xtitle")
    m = re.search(r"time since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9}) UTC.*, in " + UNIT + "$", title)
    assert m, (view, title)
    ticks = [t.strip() for t in page.locator("#chart .xtick text").all_text_contents() if t.strip()]
    assert len(ticks) >= 2, (view, ticks)
    for t in ticks:
        assert re.fullmatch(r"-?[\d,]+(\.\d+)? " + re.escape(m.group(2)), t.replace("\u2212", "-")), (view, t)
    legend = page.locator("#chart .legend .traces").all_text_contents()
    assert legend and all(x.strip() for x in legend), (view, legend)


def _largest_bar(page, trace_name: str):
    """Centre of the widest drawn bar of the legend entry `trace_name`."""
    idx = page.evaluate("""name => document.getElementById('chart').data.findIndex(t => t.name === name)""", trace_name)
    assert idx >= 0, trace_name
    boxes = [b for b in (p.bounding_box() for p in
                         page.locator(f"#chart .barlayer .trace:nth-child({idx + 1}) .point path").all()) if b]
    box = max(boxes, key=lambda b: b["width"])
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _events_ready(page) -> dict:
    page.wait_for_selector("#eventsbox[data-ready='1']", timeout=60_000)
    return {"total": int(page.get_attribute("#eventsbox", "data-total")),
            "ts": [int(t) for t in page.eval_on_selector_all("#events tbody tr", "rs => rs.map(r => r.dataset.ts)")]}


def test_shared_data_every_view(shared_store, browser_factory, tmp_path):
    store, url = shared_store
    shots = tmp_path / "shots"
    page, errors = _page(browser_factory, url, tmp_path)
    views = page.evaluate("state.summary.views")
    assert set(views) == {"vm_states", "tasks", "requests", "migration", "ovs", "kernel", "resources"}
    for v in views:
        _tab(page, v)
        _check_axes(page, v)
        _shot(page, shots, f"shared-{v}")
    # no migration in these traces: the view says so instead of drawing an empty axis
    _tab(page, "migration")
    assert page.get_attribute("#chart", "data-empty") == "1"
    assert "no live migrations" in page.text_content("#chart")
    # OvS (the thesis's kprobe trace): packet counts per path, the y axis names the bin
    _tab(page, "ovs")
    assert int(page.get_attribute("#chart", "data-series")) >= 2
    assert re.search(r"packets per [\d.]+ " + UNIT, page.text_content("#chart .g-ytitle"))
    # VM states: coloured by state, lanes named by VM name (the thesis's vm-26009 and vm-18387)
    _tab(page, "vm_states")
    legend = " ".join(page.locator("#chart .legend .traces").all_text_contents())
    assert "VM active" in legend and "VM building" in legend
    lanes = page.locator("#chart .ytick text").all_text_contents()
    assert {"vm-26009", "vm-18387"} <= set(lanes)
    # request flow: hops of one request on different services joined by arrows
    _tab(page, "requests")
    assert "hop (request flow)" in " ".join(page.locator("#chart .legend .traces").all_text_contents())
    assert errors == [], errors


def test_shared_data_kernel_hosts_events_cursors_url(shared_store, browser_factory, tmp_path):
    store, url = shared_store
    shots = tmp_path / "shots"
    page, errors = _page(browser_factory, url, tmp_path)
    _tab(page, "kernel")
    # the host picker lists every host of the store (independent oracle: DuckDB on the Parquet files)
    hosts = sorted(r[0] for r in _oracle(store, "SELECT DISTINCT host FROM EVENTS"))
    options = page.eval_on_selector_all("#host option", "os => os.map(o => o.value)")
    assert sorted(options) == hosts and {"VM1", "VM3", "controller"} <= set(hosts)
    kernel_hosts = {r[0] for r in _oracle(store, "SELECT DISTINCT host FROM EVENTS WHERE layer = 'kernel'")}
    for h in hosts:  # each option says whether the host has kernel events
        text = page.inner_text(f"#host option[value='{h}']")
        assert ("no kernel events" in text) == (h not in kernel_hosts), (h, text)
    page.select_option("#host", "VM3")
    page.wait_for_function(READY + " && document.getElementById('viewtitle').textContent.includes('VM3')")
    _check_axes(page, "kernel VM3")
    assert int(page.get_attribute("#chart", "data-bars")) > 0
    lanes = page.locator("#chart .ytick text").all_text_contents()
    assert "CPU 0" in lanes and any("›" in x for x in lanes)  # CPUs, then threads by process
    legend = " ".join(page.locator("#chart .legend .traces").all_text_contents())
    assert "running" in legend and "blocked (sleeping)" in legend and "on CPU (colour = thread)" in legend
    _shot(page, shots, "shared-kernel-VM3")

    # click the widest CPU bar → its events; oracle: the same window and CPU queried here
    x, y = _largest_bar(page, "on CPU (colour = thread)")
    page.mouse.click(x, y)
    got = _events_ready(page)
    clicked = page.evaluate("state.clicked")
    assert clicked["host"] == "VM3" and clicked["lane"].startswith("CPU ")
    want = _oracle(store, "SELECT ts FROM EVENTS WHERE host = ? AND cpu = ? AND ts >= ? AND ts <= ? ORDER BY ts",
                   ["VM3", clicked["cpu"], int(clicked["start"]), int(clicked["end"])])
    assert got["total"] == len(want) > 0
    assert got["ts"] == [w[0] for w in want][:500]
    # the filter box narrows the same window (oracle: the same ILIKE here)
    page.fill("#filter", "sched_switch")
    page.wait_for_function("document.getElementById('events-info').textContent.includes('sched_switch')")
    got = _events_ready(page)
    want = _oracle(store, "SELECT ts FROM EVENTS WHERE host = ? AND cpu = ? AND ts >= ? AND ts <= ? "
                   "AND (name ILIKE '%sched_switch%' OR fields ILIKE '%sched_switch%') ORDER BY ts",
                   ["VM3", clicked["cpu"], int(clicked["start"]), int(clicked["end"])])
    assert got["total"] == len(want) > 0 and got["ts"] == [w[0] for w in want][:500]
    _shot(page, shots, "shared-kernel-events")
    page.fill("#filter", "")

    # two time cursors: the delta shown is the time between the two clicked pixels
    page.click("#cursor-mode")
    page.evaluate("window.scrollTo(0, 0); document.getElementById('chartscroll').scrollTo(0, 0)")
    xa = page.evaluate("(() => { const l = document.getElementById('chart')._fullLayout, a = l.xaxis;"
                       " return {off: a._offset, len: a._length, r0: a.range[0], r1: a.range[1], top: l.yaxis._offset};"
                       " })()")
    box = page.locator("#chart").bounding_box()
    f = page.evaluate("state.axis.f")
    y = box["y"] + xa["top"] + 30
    x1, x2 = box["x"] + xa["off"] + xa["len"] * 0.25, box["x"] + xa["off"] + xa["len"] * 0.75
    page.mouse.click(x1, y)
    page.wait_for_function(READY)
    page.wait_for_timeout(600)  # two separate clicks, not a double click
    page.mouse.click(x2, y)
    page.wait_for_function("document.getElementById('cursors').dataset.delta")
    delta = int(page.get_attribute("#cursors", "data-delta"))
    expected = (xa["r1"] - xa["r0"]) * 0.5 * f
    assert abs(delta - expected) <= 0.01 * expected, (delta, expected, xa, x1, x2, y, box, page.evaluate("[state.cursors.map(String), String(state.axis.origin), state.axis.f, String(state.start), String(state.end)]"))
    assert re.search(r"Δ\(B−A\) = [\d.]+ " + UNIT, page.inner_text("#cursors"))
    page.wait_for_function(READY)
    page.click("#cursor-mode")
    _shot(page, shots, "shared-kernel-cursors")

    # zoom by dragging; then reload: the URL brings back the view, host, window and cursors
    before = page.evaluate("[String(state.start), String(state.end)]")
    plot = page.locator("#chart .nsewdrag").first.bounding_box()
    page.mouse.move(plot["x"] + plot["width"] * 0.3, plot["y"] + 60)
    page.mouse.down()
    page.mouse.move(plot["x"] + plot["width"] * 0.5, plot["y"] + 60, steps=8)
    page.mouse.up()
    page.wait_for_function("state.start !== null && location.hash.includes('start=') && " + READY, timeout=60_000)
    after = page.evaluate("[String(state.start), String(state.end)]")
    assert after != before
    title = page.text_content("#chart .g-xtitle")
    page.reload()
    page.wait_for_selector("body[data-loaded='1']", timeout=120_000)
    page.wait_for_function(READY)
    assert page.evaluate("[state.view, state.host, String(state.start), String(state.end)]") == ["kernel", "VM3", *after]
    assert page.text_content("#chart .g-xtitle") == title
    assert page.get_attribute("#cursors", "data-delta") == str(delta)
    _shot(page, shots, "shared-kernel-zoomed-reloaded")
    assert errors == [], errors


def test_shared_data_finding_jumps_to_evidence(shared_store, browser_factory, tmp_path):
    store, url = shared_store
    page, errors = _page(browser_factory, url, tmp_path)
    findings = json.loads(urllib.request.urlopen(url + "/api/findings", timeout=60).read())
    i = next(i for i, f in enumerate(findings) if f["rule"] == "clock_sync")
    page.click(f"#finding-{i}")
    got = _events_ready(page)
    page.wait_for_function(READY)
    assert page.evaluate("state.view") == "kernel" and page.evaluate("state.host") == "VM1"
    assert int(page.get_attribute("#chart", "data-bars")) > 0
    # the evidence events (the packet sent on VM1, received on VM3) are in the table; oracle:
    # the events at those timestamps on those hosts, read here
    evidence = [e for e in findings[i]["evidence"] if e["start"] is not None]
    want = set()
    for e in evidence:
        want |= {r[0] for r in _oracle(store, "SELECT ts FROM EVENTS WHERE host = ? AND ts >= ? AND ts <= ?",
                                       [e["host"], int(e["start"]), int(e["end"] or e["start"])])}
    assert want and set(got["ts"]) == want and got["total"] == len(want)
    assert "inet_sock_local_out" in page.inner_text("#events") and "inet_sock_local_in" in page.inner_text("#events")
    _shot(page, tmp_path / "shots", "shared-finding-evidence")
    assert errors == [], errors


def test_lab_store_every_view_select_and_escape(lab_store, browser_factory, tmp_path):
    store, url, lab = lab_store
    shots = tmp_path / "shots"
    page, errors = _page(browser_factory, url, tmp_path)
    for v in page.evaluate("state.summary.views"):
        _tab(page, v)
        _check_axes(page, v)
        _shot(page, shots, f"lab-{v}")
    # migration: stages in their own colours, rounds labelled, stop&copy highlighted
    _tab(page, "migration")
    legend = " ".join(page.locator("#chart .legend .traces").all_text_contents())
    for stage in ("precopy (first pass)", "dirty-page round", "stop&copy (VM paused)", "Nova step"):
        assert stage in legend, (stage, legend)
    assert "R1" in page.text_content("#chart .barlayer") or "R1" in page.text_content("#chart .barlayer")
    assert page.evaluate("document.getElementById('chart').layout.shapes.filter(s => s.type === 'rect').length") >= 1
    assert page.text_content("#chart .g-y2title") == "dirty pages (log)"
    # no OvS in the lab bundle: a message, no empty axis
    _tab(page, "ovs")
    assert page.get_attribute("#chart", "data-empty") == "1" and "no OvS packets" in page.text_content("#chart")
    # the hostile name is text, not markup: no <img> injected, no script ran
    _tab(page, "vm_states")
    assert page.locator("#chart img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert "<img src=x" not in page.inner_html("#chart")
    # the interference finding → kernel view of the source host, the VM selected, its whole
    # tree (preemptors included) shown, and the evidence's events listed
    page.click("#findings li.warning")
    page.wait_for_selector("body[data-selected='1']", timeout=60_000)
    got = _events_ready(page)
    page.wait_for_function(READY)
    assert page.evaluate("state.view") == "kernel" and page.evaluate("state.host") == "lab-src"
    assert lab["vm"] in page.inner_text("#selection")
    tree = page.inner_text("#tree")
    assert "live migration" in tree and "preempted by" in tree
    assert page.evaluate("(() => { const t = document.getElementById('tree'); return t.scrollWidth <= t.clientWidth; })()")
    assert got["total"] > 0 and got["ts"]
    lanes = page.locator("#chart .ytick text").all_text_contents()
    assert any(lab["vm"] in x for x in lanes)
    _shot(page, shots, "lab-finding-kernel")
    # a task bar → its request's events; oracle: the same request and window here
    _tab(page, "tasks")
    x, y = _largest_bar(page, "task ok")
    page.mouse.click(x, y)
    got = _events_ready(page)
    c = page.evaluate("state.clicked")
    assert c["request_id"]
    want = _oracle(store, "SELECT ts FROM EVENTS WHERE request_id = ? AND ts >= ? AND ts <= ? ORDER BY ts",
                   [c["request_id"], int(c["start"]), int(c["end"])])
    assert got["total"] == len(want) > 0 and got["ts"] == [w[0] for w in want][:500]
    _shot(page, shots, "lab-task-events")
    assert errors == [], errors
