"""Inputs stay inside their bundle (issue 15, class 4): symlink cycles, FIFOs and devices,
notification samples' `$ref`.

Each case is built for real (os.mkfifo, /dev/zero, symbolic links) beside real data, runs
under a timeout (a FIFO opened for reading blocks, a cycle of two links per directory walks
2^depth paths) and checks that the real data around it is still ingested whole (oracle: its
own line count, or the unmodified sample resolved by Nova's layout).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.conftest import need_data

pytestmark = pytest.mark.timeout(120)

LOGHUB = ("openstack", "loghub", "OpenStack_2k.log")
SAMPLES = ("openstack", "nova-notification-samples")
DUMP = ("thesis", "rabbitmq-dump")


def by_name(results) -> dict[str, object]:
    return {Path(r.path).name: r for r in results}


def test_fifo_given_directly_is_rejected_unopened(tmp_path):
    fifo = tmp_path / "nova.log"
    os.mkfifo(fifo)
    results = ingest(Store(tmp_path / "st", create=True), [fifo])
    assert [(r.status, r.message) for r in results] == [
        ("rejected", "a FIFO (named pipe): not read (only files and directories are)")]


def test_device_given_directly_is_rejected(tmp_path):
    results = ingest(Store(tmp_path / "st", create=True), [Path("/dev/zero")])
    assert len(results) == 1 and results[0].status == "rejected"
    assert results[0].message.startswith("a character device")


def test_fifo_socket_and_device_inside_a_bundle(tmp_path):
    """Beside a real log: a FIFO, a listening Unix socket and a link to /dev/zero are rejected
    by name; the log is ingested whole (its 2,000 lines)."""
    import socket
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    os.symlink(need_data(*LOGHUB), bundle / "nova.log")
    os.mkfifo(bundle / "pipe.log")
    os.symlink("/dev/zero", bundle / "zero.log")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(bundle / "agent.sock"))
    try:
        results = by_name(ingest(Store(tmp_path / "st", create=True), [bundle]))
    finally:
        sock.close()
    assert results["nova.log"].status == "ingested" and results["nova.log"].rows == 2000
    assert results["pipe.log"].status == "rejected" and "FIFO" in results["pipe.log"].message
    assert results["zero.log"].status == "rejected" and "character device" in results["zero.log"].message
    assert results["agent.sock"].status == "rejected" and "socket" in results["agent.sock"].message
    assert len(results) == 4


def test_fifo_inside_a_directory_part(tmp_path):
    """A FIFO named like a dump file inside the real RabbitMQ dump: the dump is read (every
    message of the real files), the FIFO named and never opened (its writer never comes)."""
    dump = tmp_path / "dump"
    shutil.copytree(need_data(*DUMP), dump)
    os.mkfifo(dump / "aaa.xml")
    store = Store(tmp_path / "st", create=True)
    results = by_name(ingest(store, [dump]))
    assert results["dump"].status == "ingested"
    events = sum(p.read_text().count("<event>") for p in dump.glob("*.xml") if p.is_file())
    assert results["dump"].rows + results["dump"].skipped == events
    assert results["aaa.xml"].status == "rejected" and "FIFO" in results["aaa.xml"].message


def test_directory_symlink_cycle(tmp_path):
    """Two links back up from a nested directory (2^depth paths if followed blindly): each
    directory is walked once, each link back reported, the real log ingested once."""
    bundle = tmp_path / "bundle"
    (bundle / "a" / "b").mkdir(parents=True)
    shutil.copy(need_data(*LOGHUB), bundle / "a" / "b" / "nova.log")
    os.symlink("../..", bundle / "a" / "b" / "up")
    os.symlink("..", bundle / "a" / "b" / "up2")
    os.symlink(str(bundle), bundle / "a" / "root")
    os.symlink("loop2", bundle / "loop1")  # a link loop: stat fails with ELOOP
    os.symlink("loop1", bundle / "loop2")
    results = ingest(Store(tmp_path / "st", create=True), [bundle])
    got = sorted((os.path.relpath(r.path, bundle), r.status) for r in results)
    assert got == [("a/b/nova.log", "ingested"), ("a/b/up", "rejected"), ("a/b/up2", "rejected"),
                   ("a/root", "rejected"), ("loop1", "rejected"), ("loop2", "rejected")]
    by = {os.path.relpath(r.path, bundle): r for r in results}
    assert by["a/b/nova.log"].rows == 2000
    assert "already walked" in by["a/b/up"].message and str(bundle) in by["a/b/up"].message
    assert "link loop" in by["loop1"].message


def test_linked_directory_walked_once(tmp_path):
    """A directory reached by its own name and through a link is read once."""
    bundle = tmp_path / "bundle"
    (bundle / "logs").mkdir(parents=True)
    shutil.copy(need_data(*LOGHUB), bundle / "logs" / "nova.log")
    os.symlink("logs", bundle / "same")
    results = ingest(Store(tmp_path / "st", create=True), [bundle])
    assert sorted((Path(r.path).parent.name, r.status) for r in results) == [
        ("bundle", "rejected"), ("logs", "ingested")]


def _sample_tree(tmp_path: Path) -> Path:
    """A copy of Nova's samples (with common_payloads/) to alter."""
    d = tmp_path / "samples"
    shutil.copytree(need_data(*SAMPLES), d)
    return d


def test_ref_outside_the_sample_tree_is_refused(tmp_path):
    """`$ref` to a JSON file outside the sample's directory (absolute, `..`, a link out of it)
    is refused with the reason; the secret's content is in no row; the real samples still
    resolve through common_payloads/."""
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"password": "hunter2-secret"}))
    d = _sample_tree(tmp_path)
    base = json.loads((d / "instance-pause-start.json").read_text())
    os.symlink(secret, d / "common_payloads" / "linked.json")
    refs = {"abs.json": str(secret), "dotdot.json": "../secret.json#", "link.json": "common_payloads/linked.json#",
            "etc.json": "/etc/passwd#"}
    for name, ref in refs.items():
        doc = json.loads(json.dumps(base))
        doc["payload"] = {"$ref": ref}
        (d / name).write_text(json.dumps(doc, indent=4))  # a document (samples are), not a line
    store = Store(tmp_path / "st", create=True)
    results = by_name(ingest(store, [d]))
    for name in refs:
        r = results[name]
        assert r.rows == 0 and r.skipped == 1, r.to_dict()
        assert any("refused" in n for n in r.notes), r.notes
        assert all("\n" not in n for n in r.notes)
    rows = store.connect().execute("SELECT count(*), count(*) FILTER (WHERE fields LIKE '%hunter2%') FROM events").fetchone()
    assert rows[1] == 0
    # every real sample still resolves (its common_payloads are inside the tree)
    real = [p for p in need_data(*SAMPLES).glob("*.json")]
    assert rows[0] == len(real) and all(results[p.name].status == "ingested" for p in real)


def test_ref_to_a_fifo_inside_the_tree_is_refused(tmp_path):
    d = _sample_tree(tmp_path)
    os.mkfifo(d / "common_payloads" / "pipe.json")
    doc = json.loads((d / "instance-pause-start.json").read_text())
    doc["payload"] = {"$ref": "common_payloads/pipe.json#"}
    (d / "piped.json").write_text(json.dumps(doc, indent=4))
    results = by_name(ingest(Store(tmp_path / "st", create=True), [d / "piped.json", d / "instance-pause-start.json"]))
    assert results["piped.json"].skipped == 1 and any("not a regular file" in n for n in results["piped.json"].notes)
    assert results["instance-pause-start.json"].rows == 1
