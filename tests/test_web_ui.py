"""The web UI in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no
browser download): load, navigate every view, select from a finding, zoom by dragging, and
every trace field escaped. Screenshots go to the test's output directory."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import need_program

pytestmark = pytest.mark.timeout(300)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = "<img src=x onerror=window.__pwned=1>vm&evil"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    need_program("qemu-system-x86_64")
    chromium = need_program("chromium")
    pytest.importorskip("playwright")
    root = tmp_path_factory.mktemp("web")
    bundle = root / "interference"
    done = subprocess.run([sys.executable, "-m", "stacklens.cli", "lab", "run", "--scenario", "interference",
                           "--out", str(bundle)], capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    # a VM whose display name is HTML (log lines and payloads can carry anything)
    lab = json.loads((bundle / "lab.json").read_text())
    hostile = {"message_id": "m-hostile", "publisher_id": "nova-compute:lab-src", "priority": "INFO",
               "event_type": "instance.update", "timestamp": "2030-01-01 00:00:00.000000",
               "payload": {"nova_object.name": "InstanceUpdatePayload", "nova_object.namespace": "nova",
                           "nova_object.version": "1.0", "nova_object.data": {
                               "uuid": "00000000-0000-4000-8000-000000000bad", "display_name": HOSTILE,
                               "host": "lab-src", "state": "active", "task_state": None}}}
    notes = bundle / "control" / "notifications.jsonl"
    lines = notes.read_text().splitlines()
    first = json.loads(lines[0])
    hostile["timestamp"] = first["timestamp"]
    notes.write_text("\n".join(lines + [json.dumps(hostile)]) + "\n")
    store = root / "store"
    subprocess.run([sys.executable, "-m", "stacklens.cli", "ingest", str(bundle), "--store", str(store)],
                   check=True, capture_output=True, timeout=120)
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "stacklens.cli", "ui", "--store", str(store), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/api/summary", timeout=30)
                break
            except OSError:
                time.sleep(0.2)
        yield url, lab, chromium
    finally:
        server.kill()
        server.wait(timeout=10)


def test_browser_load_navigate_select_zoom(served, tmp_path):
    from playwright.sync_api import sync_playwright
    url, lab, chromium = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        # a fresh profile directory (Playwright passes it as --user-data-dir)
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium,
                                                       args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 800})
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, timeout=60_000)
            page.wait_for_selector("body[data-loaded='1']", timeout=120_000)
            page.wait_for_selector("#chart[data-ready='1']", timeout=60_000)
            # every view: navigate by its tab, wait for its data, save a screenshot
            views = json.loads(urllib.request.urlopen(url + "/api/summary", timeout=30).read())["views"]
            for v in views:
                page.click(f"#tab-{v}")
                page.wait_for_selector("#chart[data-ready='1']", timeout=60_000)
                page.wait_for_timeout(300)
                path = shots / f"{v}.png"
                page.screenshot(path=str(path))
                assert path.stat().st_size > 10_000, v
            page.click("#tab-migration")
            page.wait_for_selector("#chart[data-ready='1']")
            assert int(page.get_attribute("#chart", "data-bars")) >= 3  # attempt, rounds, nova steps
            # the hostile name is text, not markup: no <img> injected, no script ran
            page.click("#tab-vm_states")
            page.wait_for_selector("#chart[data-ready='1']")
            assert page.locator("#chart img").count() == 0
            assert page.evaluate("window.__pwned") is None
            assert "<img src=x" not in page.inner_html("#chart")
            # select: the interference finding → the VM selected, its tree with kernel preemptors
            page.click("#findings li.warning")
            page.wait_for_selector("body[data-selected='1']", timeout=60_000)
            page.wait_for_selector("#chart[data-ready='1']")
            assert lab["vm"] in page.inner_text("#selection")
            tree = page.inner_text("#tree")
            assert "live migration" in tree and "preempted by" in tree
            assert page.evaluate("state.view") == "kernel"
            page.screenshot(path=str(shots / "selected-kernel.png"))
            # zoom: drag a box over the middle of the plot; the window narrows and is re-queried
            before = page.evaluate("[state.start, state.end]")
            box = page.locator("#chart .nsewdrag").first.bounding_box()
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] * 0.3, y)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=8)
            page.mouse.up()
            page.wait_for_function("state.start !== null && document.getElementById('chart').dataset.ready === '1'",
                                   timeout=60_000)
            after = page.evaluate("[state.start, state.end]")
            assert after[1] - after[0] < 0.5 * (before[1] - before[0])
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "zoomed.png"))
            assert not errors, errors
        finally:
            browser.close()
    for png in shots.glob("*.png"):
        assert png.stat().st_size > 0
    print("screenshots:", shots)
