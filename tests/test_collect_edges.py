"""The collection plane's edges (issue 15, class 5): a hostile agent's segment names, a silent
TLS connection, bad Content-Length headers.

The agents are real (`stacklens agent` processes); the only fake is the hostile agent of the
pull test — a small real HTTP server in the test answering malicious names, a peer the real
agent never is. Oracles: the files on disk after the pull (nothing outside the spool), the
bytes the hostile peer served, the HTTP status line read from a raw socket.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stacklens.collect import client
from stacklens.store import Store
from tests.collect_helpers import start_agent, stop

pytestmark = pytest.mark.timeout(120)


def _hostile_agent(segments: list, payloads: dict[str, bytes]) -> ThreadingHTTPServer:
    """An HTTP server that lists `segments` (whatever they say) and serves any segment path
    with the bytes of `payloads` (by the last path component, else b"EVIL\\n")."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # noqa: ANN002
            pass

        def do_GET(self):  # noqa: N802
            if self.path == "/v1/segments":
                body = json.dumps(segments).encode()
            else:
                from urllib.parse import unquote
                body = payloads.get(unquote(self.path.rsplit("/", 1)[-1]), b"EVIL\n")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_pull_keeps_every_file_under_the_spool(tmp_path):
    from stacklens.collect.proc_sampler import sample_all
    good = "".join(json.dumps(r) + "\n" for r in sample_all()).encode()
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = [
        {"tracer": "proc", "name": "../../../outside/dotdot.jsonl", "size": 5},
        {"tracer": "proc", "name": str(outside / "absolute.jsonl"), "size": 5},
        {"tracer": "../../../outside", "name": "tracer-dotdot.jsonl", "size": 5},
        {"tracer": "proc", "name": "sub/dir.jsonl", "size": 5},
        {"tracer": "proc", "name": "nul\u0000.jsonl", "size": 5},
        {"tracer": "proc", "name": "..", "size": 5},
        {"tracer": "proc", "name": "", "size": 5},
        {"tracer": "proc", "name": 7, "size": 5},
        {"tracer": "proc"},
        "not an object",
    ]
    segments = [*evil, {"tracer": "proc", "name": "proc-000001.jsonl", "size": len(good)}]
    server = _hostile_agent(segments, {"proc-000001.jsonl": good})
    try:
        agent = client.AgentRef("hostile", f"http://127.0.0.1:{server.server_address[1]}", "t" * 16)
        spool = tmp_path / "spool"
        report = client.pull([agent], str(tmp_path / "store"), spool=spool)
    finally:
        server.shutdown()
        server.server_close()
    # nothing was written outside the spool and the store
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.is_relative_to(spool) or p.is_relative_to(tmp_path / "store") for p in written), written
    assert not list(outside.iterdir())
    spooled = sorted(p.relative_to(spool).as_posix() for p in spool.rglob("*") if p.is_file())
    assert spooled == ["hostile/proc/proc-000001.jsonl"]
    assert (spool / "hostile" / "proc" / "proc-000001.jsonl").read_bytes() == good
    node = report["agents"]["hostile"]
    assert node["fetched"] == 1 and node["rows"] == good.count(b"\n")
    # each refused entry is reported with its reason, in one line
    refused = [p for p in node["problems"] if p["status"] == "refused"]
    assert len(refused) == len(evil), node["problems"]
    assert all(p["message"] and "\n" not in p["message"] for p in refused)
    rows = Store(tmp_path / "store").connect().execute("SELECT count(*) FROM events").fetchone()[0]
    assert rows == good.count(b"\n")


def _conf(tmp_path: Path, token: str, tls: tuple[Path, Path] | None = None) -> Path:
    conf = tmp_path / "agent.toml"
    tls_lines = f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n' if tls else ""
    conf.write_text(f'[agent]\nhost = "edge"\nport = 0\ntoken = "{token}"\n'
                    f'data_dir = "{tmp_path / "agent"}"\n{tls_lines}')
    return conf


def test_silent_tls_connection_does_not_stall_other_clients(tmp_path):
    """A TCP connection that never starts its TLS handshake: a real client's calls still
    succeed at once (before, the accepting thread waited in that handshake for ever)."""
    pytest.importorskip("cryptography")
    from tests.test_collect_tls import _self_signed
    cert, key = _self_signed(tmp_path)
    token = secrets.token_hex(16)
    proc, port = start_agent(_conf(tmp_path, token, (cert, key)), tmp_path / "port", tmp_path / "agent.err")
    silent = []
    try:
        ref = client.AgentRef("edge", f"https://127.0.0.1:{port}", token, str(cert))
        assert ref.json("GET", "/v1/status")["host"] == "edge"  # up, trusted
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            silent.append(s)
        time.sleep(0.3)  # the agent has accepted them
        t0 = time.monotonic()
        for _ in range(3):
            assert ref.request("GET", "/v1/status", timeout=5)
        assert time.monotonic() - t0 < 5
    finally:
        for s in silent:
            s.close()
        stop(proc)
    assert proc.returncode == 0
    assert "Traceback" not in (tmp_path / "agent.err").read_text()


def _raw(port: int, request: bytes, timeout: float = 5) -> bytes:
    """What the agent answers `request` on a fresh connection (until it closes or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    n = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                              if h.lower().startswith(b"content-length:")), None)
                    if n is not None and len(body) >= n:
                        break
        except socket.timeout:
            pass
        return out


@pytest.mark.parametrize("path", ["/v1/tracers/proc/stop", "/v1/ship/logs"])
def test_bad_content_length_is_a_400(tmp_path, path):
    token = secrets.token_hex(16)
    proc, port = start_agent(_conf(tmp_path, token), tmp_path / "port", tmp_path / "agent.err")
    try:
        for value in (b"-5", b"abc", b"99999999999999999999999", b"1e3", b" 12 12"):
            t0 = time.monotonic()
            answer = _raw(port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: " + value + b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400"), (value, answer[:200])
            assert time.monotonic() - t0 < 4, value
        # the agent still answers (no thread left blocked on a body that never comes)
        ref = client.AgentRef("edge", f"http://127.0.0.1:{port}", token)
        assert ref.json("GET", "/v1/status")["host"] == "edge"
        if path.startswith("/v1/ship"):  # and a good body is still taken
            body = b'{"msg": "one line"}\n'
            answer = _raw(port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                          + token.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert answer.startswith(b"HTTP/1.1 200") and json.loads(answer.partition(b"\r\n\r\n")[2]) == {"lines": 1}
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert "Traceback" not in (tmp_path / "agent.err").read_text()


def test_body_longer_than_allowed_is_refused_without_reading_it(tmp_path):
    """A Content-Length over the agent's limit is answered at once (413), not read first."""
    from stacklens.collect.agent import MAX_SHIP_BYTES
    token = secrets.token_hex(16)
    proc, port = start_agent(_conf(tmp_path, token), tmp_path / "port", tmp_path / "agent.err")
    try:
        t0 = time.monotonic()
        answer = _raw(port, b"POST /v1/ship/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                      + token.encode() + b"\r\nContent-Length: " + str(MAX_SHIP_BYTES + 1).encode() + b"\r\n\r\n")
        assert answer.split(b"\r\n")[0] in (b"HTTP/1.1 413 Request Entity Too Large", b"HTTP/1.1 413 Content Too Large")
        assert time.monotonic() - t0 < 4
    finally:
        stop(proc)
