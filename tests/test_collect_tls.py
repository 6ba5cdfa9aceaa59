"""An agent over TLS (a self-signed certificate made by the test with `cryptography`), driven
through the CLI's --json output.

Oracles: the agent's segment list and bytes fetched by the test itself over TLS (urllib +
the certificate as CA), the store's own row count, and the TLS handshake failing for a
client that does not trust the certificate and for plain HTTP.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stacklens.collect.tracers import TRACERS
from stacklens.store import Store
from tests.collect_helpers import start_agent, stop, wait_for

pytestmark = pytest.mark.timeout(180)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stacklens-agent-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "agent.crt", directory / "agent.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _cli(agents: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stacklens.cli", "client", "--agents", str(agents), *args],
                          capture_output=True, text=True, timeout=120)


def test_tls_agent_driven_by_the_cli_json(tmp_path):
    pytest.importorskip("cryptography")
    cert, key = _self_signed(tmp_path)
    token = secrets.token_hex(16)
    conf = tmp_path / "agent.toml"
    conf.write_text(f"""
[agent]
host = "tls-node"
port = 0
token = "{token}"
data_dir = "{tmp_path / 'agent'}"
tls_cert = "{cert}"
tls_key = "{key}"

[tracers.proc]
interval_s = 0.2
seal_after_s = 0.4
""")
    ready = tmp_path / "port"
    agent, port = start_agent(conf, ready, tmp_path / "agent.err")
    try:
        url = f"https://127.0.0.1:{port}"
        agents = tmp_path / "agents.toml"
        agents.write_text(f'[[agent]]\nname = "tls-node"\nurl = "{url}"\ntoken = "{token}"\nca = "{cert}"\n')
        untrusting = tmp_path / "untrusting.toml"
        untrusting.write_text(f'[[agent]]\nname = "tls-node"\nurl = "{url}"\ntoken = "{token}"\n')
        trusted = ssl.create_default_context(cafile=str(cert))

        def get(path: str, auth: bool = True) -> bytes:
            req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"} if auth else {})
            with urllib.request.urlopen(req, timeout=10, context=trusted) as r:
                return r.read()

        # TLS only: plain HTTP gets no HTTP answer; a client without the CA refuses the agent
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=10).read()
        refused = _cli(untrusting, "status", "--json")
        assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr.upper().replace(" ", "_")
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        with pytest.raises(urllib.error.HTTPError) as e:
            get("/v1/status", auth=False)
        assert e.value.code == 401

        status = _cli(agents, "status", "--json")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert [s["agent"] for s in st] == ["tls-node"] and st[0]["host"] == "tls-node"
        assert set(st[0]["tracers"]) == set(TRACERS) and st[0]["pid"] == agent.pid

        started = _cli(agents, "start", "proc", "--json")
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout) == [{"agent": "tls-node", "tracer": "proc", "state": "running"}]
        wait_for(lambda: json.loads(get("/v1/status"))["tracers"]["proc"]["segments"] >= 2, 60, "2 proc segments")
        stopped = _cli(agents, "stop", "proc", "--json")
        assert json.loads(stopped.stdout) == [{"agent": "tls-node", "tracer": "proc", "state": "stopped"}]

        listed = json.loads(get("/v1/segments"))
        lines = sum(get(f"/v1/segments/{s['tracer']}/{s['name']}").count(b"\n") for s in listed)
        pulled = _cli(agents, "pull", "--store", str(tmp_path / "central"), "--json")
        assert pulled.returncode == 0, pulled.stderr
        report = json.loads(pulled.stdout)
        node = report["agents"]["tls-node"]
        assert node["segments"] == node["fetched"] == len(listed) and not node["problems"]
        con = Store(tmp_path / "central").connect()
        (rows,) = con.execute("SELECT count(*) FROM events WHERE host = 'tls-node'").fetchall()[0]
        assert node["rows"] == rows == lines  # one proc.sample row per line the agent served
    finally:
        stop(agent)
    assert agent.returncode == 0
