"""The oslo.log tailer against real oslo.log output: tracebacks written in two parts across
segment cuts, and a logrotate-style rename while the writer still appends to the old file.

Oracle: the same oslo.log text read directly from the complete files by the oslo.log reader
(the tailer's segments must give the same records: timestamps, request ids, fields with the
folded tracebacks), no line reported bad, and no segment starting inside a record.
"""

from __future__ import annotations

import json
import sys
import subprocess
import time
from pathlib import Path

import pytest

from stacklens.collect.oslo_log_tailer import record_start
from stacklens.collect.segments import sealed_segments
from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.collect_helpers import newlines_in, python, stop, wait_for

pytestmark = pytest.mark.timeout(120)

WRITER = """
import sys
from oslo_config import cfg
from oslo_context import context
from oslo_log import log as logging
path, n, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
CONF = cfg.ConfigOpts()
logging.register_options(CONF)
CONF(["--log-file", path], project="stacklenstest")
logging.setup(CONF, "stacklenstest")
LOG = logging.getLogger("stacklens.tailer")
for i in range(first, first + n):
    ctx = context.RequestContext(request_id=f"req-{i:08d}-0000-4000-8000-000000000000", user_id="u", project_id="p")
    if i % 10 == 5:
        try:
            {}["missing-%d" % i]
        except KeyError:
            LOG.exception("lookup %d failed", i, context=ctx)
    else:
        LOG.info("record %d", i, context=ctx)
"""


def _oslo_log(path: Path, n: int, first: int) -> list[bytes]:
    subprocess.run([sys.executable, "-c", WRITER, str(path), str(n), str(first)], check=True, timeout=60)
    return path.read_bytes().splitlines(keepends=True)


def _replay(f, lines: list[bytes], pause_s: float) -> None:
    """Append the lines; a traceback is written in two parts with a pause between them
    (longer than the tailer's seal age, shorter than its hold time)."""
    for i, line in enumerate(lines):
        f.write(line)
        if b"Traceback (most recent call last)" in line or i % 7 == 3:
            f.flush()
            time.sleep(pause_s)
    f.flush()


def _rows(store_root: Path, paths: list[Path]) -> list[tuple]:
    store = Store(store_root, create=True)
    results = ingest(store, paths, host="node1")
    assert {r.format for r in results} == {"oslo.log"}, [r.to_dict() for r in results]
    assert sum(r.skipped for r in results) == 0, [r.to_dict() for r in results]
    rows = store.connect().execute("SELECT ts, request_id, name, pid, fields FROM events").fetchall()
    # the same records whatever file they came from (`file` names it)
    return sorted((*r[:4], json.dumps({k: v for k, v in json.loads(r[4]).items() if k != "file"}))
                  for r in rows)


def test_tailer_keeps_records_whole_across_cuts_and_rotation(tmp_path):
    orig1 = _oslo_log(tmp_path / "orig1.log", 30, 0)
    orig2 = _oslo_log(tmp_path / "orig2.log", 20, 30)
    assert sum(b"Traceback" in ln for ln in orig1) == 3
    live = tmp_path / "live"
    live.mkdir()
    log = live / "nova-compute.log"
    log.touch()
    out = tmp_path / "segments"
    config = tmp_path / "tailer.json"
    config.write_text(json.dumps({"out": str(out), "paths": [str(log)], "interval_s": 0.05,
                                  "seal_after_s": 0.15, "hold_s": 2.0}))
    tailer = python("-m", "stacklens.collect.worker", "oslo_log", str(config), stderr=open(tmp_path / "tailer.err", "ab"))
    try:
        wait_for(lambda: out.is_dir(), 30, "the tailer")
        time.sleep(0.5)
        half = len(orig1) // 2
        with open(log, "ab") as old:
            _replay(old, orig1[:half], 0.3)
            # logrotate: the file is renamed; the service writes on into it until it reopens
            log.rename(live / "nova-compute.log.1")
            _replay(old, orig1[half:], 0.3)
        with open(log, "ab") as new:  # reopened (WatchedFileHandler): a new file at the path
            _replay(new, orig2, 0.3)
        total = len(orig1) + len(orig2)
        wait_for(lambda: newlines_in(out, "nova-compute*") >= total,
                 30, "every line in segments", interval=0.2)
    finally:
        stop(tailer)
    assert tailer.returncode == 0, (tmp_path / "tailer.err").read_text()[-2000:]
    segs = sealed_segments(out)
    assert len(segs) >= 6, segs  # many cuts
    for seg in segs:  # each segment starts with a record, never inside a traceback
        first = seg.read_bytes().split(b"\n", 1)[0] + b"\n"
        assert record_start(first, None)[0], (seg.name, first)
    got = _rows(tmp_path / "store-tailed", segs)
    want = _rows(tmp_path / "store-direct", [tmp_path / "orig1.log", tmp_path / "orig2.log"])
    assert len(want) == 50
    assert got == want
    folded = [r for r in got if "Traceback (most recent call last)" in json.loads(r[4])["message"]]
    assert len(folded) == 5  # every traceback folded into its record
