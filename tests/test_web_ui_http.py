"""The web UI's HTTP edges, with real requests to a real uvicorn server (`stacklens ui` in a
subprocess) over a store ingested from the thesis's Nova trace: absurd window parameters and
odd paths get 400/404 (never 500), the Host header is checked (DNS rebinding gets 403), a
token when asked for, a view over its time limit answers 503 "too slow"."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from conftest import need_data

pytestmark = pytest.mark.timeout(180)
INT64_MAX = 2 ** 63 - 1


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ui_server(store: Path, *args: str, env: dict | None = None):
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "stacklens.cli", "ui", "--store", str(store), "--port", str(port),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    try:
        for _ in range(150):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                time.sleep(0.1)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def request(port: int, path: str, headers: dict | None = None, host: str | None = None) -> tuple[int, dict, bytes]:
    """A raw GET: the path is sent byte for byte (no client-side normalisation of `..`)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.putrequest("GET", path, skip_host=True)
    c.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
    for k, v in (headers or {}).items():
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, dict(r.getheaders()), body


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    trace = need_data("thesis", "nova")
    root = tmp_path_factory.mktemp("webhttp") / "store"
    subprocess.run([sys.executable, "-m", "stacklens.cli", "ingest", str(trace), "--store", str(root)],
                   check=True, capture_output=True, timeout=120)
    return root


@pytest.fixture(scope="module")
def server(store):
    with ui_server(store) as port:
        yield port


BAD_WINDOWS = [
    "start=NaN&end=5", "start=0&end=inf", "start=-inf&end=0", "start=1e3&end=2e3", "start=abc&end=5",
    "start=0x10&end=0x20", f"start={INT64_MAX + 1}&end={INT64_MAX + 2}", f"start={-2 ** 63 - 1}&end=0",
    "start=99999999999999999999999&end=1", "start=5&end=1", "start=5&end=5", "start=5", "end=5",
    "start=1.5&end=2", "start=%00&end=1", "px=0", "px=-3", "px=1e9", f"px={INT64_MAX}", "offset=-1",
]


def test_absurd_window_parameters_get_400_never_500(server):
    for view in ("tasks", "kernel", "ovs"):
        for q in BAD_WINDOWS:
            status, _, body = request(server, f"/api/view/{view}?{q}")
            assert status == 400, (view, q, status, body[:200])
            msg = json.loads(body)["error"]
            assert "\n" not in msg and "Traceback" not in msg
    for q in ["start=NaN&end=1", "start=5&end=1", "tid=NaN&start=1&end=2", "cpu=-1&start=1&end=2", "limit=0&start=1&end=2"]:
        status, _, body = request(server, f"/api/events?{q}")
        assert status == 400, (q, status, body[:200])


def test_int64_extremes_answer_with_data_or_empty(server, store):
    # the whole int64 range is a legal (if absurd) window: answered, with the store's tasks in it
    with duckdb.connect() as con:
        n_tasks_events = con.execute(f"SELECT count(*) FROM read_parquet('{store}/events/**/*.parquet', union_by_name=true) "
                                     "WHERE layer = 'app'").fetchall()[0][0]
    assert n_tasks_events > 0
    for view in ("vm_states", "tasks", "requests", "migration", "ovs", "kernel", "resources"):
        status, _, body = request(server, f"/api/view/{view}?start={-2 ** 63}&end={INT64_MAX}&px=100000")
        assert status == 200, (view, status, body[:300])
    status, _, body = request(server, f"/api/view/tasks?start={-2 ** 63}&end={INT64_MAX}")
    assert json.loads(body)["bars"]
    # a window far outside the store: empty, with a message saying so
    status, _, body = request(server, f"/api/view/tasks?start={INT64_MAX - 10}&end={INT64_MAX}")
    assert status == 200 and json.loads(body)["message"]
    status, _, body = request(server, f"/api/events?start={-2 ** 63}&end={INT64_MAX}&q=%25_%5C&limit=5000")
    assert status == 200
    status, _, body = request(server, f"/api/events?start={-2 ** 63}&end={INT64_MAX}&limit=5000")
    assert status == 200 and json.loads(body)["total"] == 299  # every event of the trace (babeltrace2: 299)


def test_odd_paths(server):
    for path, want in [("/static/%00", 400), ("/static/..", 400), ("/static/.", 400), ("/static/.hidden", 400),
                       ("/static/%2e%2e", 400), ("/static/a%00b.js", 400), ("/static/nope.js", 404),
                       ("/static/..%2f..%2fetc%2fpasswd", 404), ("/static/%2e%2e%2fapp.py", 404),
                       ("/api/view/%00", 404), ("/api/view/..", 404)]:
        status, _, body = request(server, path)
        assert status == want, (path, status, body[:200])
        assert b"root:" not in body
    status, headers, body = request(server, "/static/app.js")
    assert status == 200 and b"use strict" in body
    status, _, body = request(server, "/static/plotly.min.js")
    assert status == 200 and len(body) > 1_000_000


def test_host_header_blocks_dns_rebinding(server):
    ok = [f"127.0.0.1:{server}", f"localhost:{server}", f"[::1]:{server}", "localhost", "LOCALHOST:%d" % server]
    for host in ok:
        status, _, _ = request(server, "/api/summary", host=host)
        assert status == 200, host
    # a rebinding page: its own name resolves to 127.0.0.1, the browser sends that name
    for host in [f"evil.example:{server}", "evil.example", f"127.0.0.1.evil.example:{server}",
                 f"localhost:{server + 1 if server < 65535 else server - 1}", "", f"127.0.0.2:{server}@evil"]:
        status, _, body = request(server, "/api/summary", host=host)
        assert status == 403, (host, status)
        status, _, _ = request(server, "/", host=host)
        assert status == 403


def test_token_and_allowed_names(store):
    assert subprocess.run([sys.executable, "-m", "stacklens.cli", "ui", "--store", str(store), "--host", "0.0.0.0",
                           "--port", str(_port())], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "STACKLENS_UI_TOKEN"}).returncode != 0
    token = "s3cret-token-for-test"
    with ui_server(store, "--allow-host", "stacklens.lab", env={"STACKLENS_UI_TOKEN": token}) as port:
        status, _, body = request(port, "/api/summary")
        assert status == 401 and b"token" in body
        status, _, _ = request(port, "/api/summary?token=wrong-token-xx")
        assert status == 401
        status, _, _ = request(port, "/api/summary", {"Authorization": "Bearer " + token})
        assert status == 200
        status, headers, _ = request(port, "/?token=" + token)
        assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        status, _, _ = request(port, "/api/summary", {"Cookie": cookie})
        assert status == 200
        status, _, _ = request(port, "/api/summary", {"Cookie": cookie}, host=f"stacklens.lab:{port}")
        assert status == 200
        status, _, _ = request(port, "/api/summary", {"Cookie": cookie}, host=f"other.lab:{port}")
        assert status == 403


def test_slow_view_answers_503_and_the_server_keeps_serving(store):
    with ui_server(store, env={"STACKLENS_UI_TIME_LIMIT": "0.000001"}) as port:
        status, _, body = request(port, "/api/view/tasks")
        assert status == 503 and "too slow" in json.loads(body)["error"]
        status, _, body = request(port, "/")
        assert status == 200 and b"<html" in body
