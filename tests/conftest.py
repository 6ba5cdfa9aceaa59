"""Shared test fixtures: the real data in ../shared/data and the babeltrace2 oracle.

The data is required: in CI (CI=true) a missing ../shared/data fails the run loudly;
elsewhere the tests that need it are skipped with a message saying where it was looked for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("STACKLENS_DATA", ROOT.parent / "shared" / "data")).resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# every packet seen leaving one host and entering the other, by TCP (seq, ack_seq, flags):
# (sending host, receiving host, receive ts - send ts)
PACKET_DELAYS = """
WITH o AS (SELECT host, ts, fields->>'seq' s, fields->>'ack_seq' a, fields->>'flags' f
           FROM events WHERE name = 'inet_sock_local_out'),
     i AS (SELECT host, ts, fields->>'seq' s, fields->>'ack_seq' a, fields->>'flags' f
           FROM events WHERE name = 'inet_sock_local_in')
SELECT o.host, i.host, i.ts - o.ts FROM o JOIN i ON o.s = i.s AND o.a = i.a AND o.f = i.f AND o.host <> i.host
"""


def marker_window(con) -> tuple[int, int]:  # noqa: ANN001
    """(start, end) ts of the `stacklens_window start|end` trace markers a test wrote."""
    rows = con.execute(
        "SELECT fields->>'text', ts FROM events WHERE name = 'tracing_mark_write' "
        "AND fields->>'text' LIKE 'stacklens_window%' ORDER BY ts").fetchall()
    marks = {text.split()[-1]: ts for text, ts in rows}
    return marks["start"], marks["end"]


def need_data(*parts: str) -> Path:
    """Path under the shared data; fail in CI, skip elsewhere, when it is missing."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        msg = f"real data missing: {p} (set STACKLENS_DATA or check out ../shared/data)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def need_program(name: str) -> str:
    """A program the tests drive for real (e.g. babeltrace2); fail in CI, skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (./dev setup installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def need_bt2():
    """Debian's python3-bt2 (babeltrace2's bindings), the decoding oracle."""
    try:
        import bt2  # noqa: F401
    except ImportError as e:
        msg = f"python3-bt2 cannot be imported ({e}); ./dev setup links it into the venv"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return bt2


def need_python_lttngust(env: dict | None = None) -> None:
    """Skip unless Debian's /usr/bin/python3 imports lttngust (the LTTng Python agent)."""
    env = dict(env or os.environ, LTTNG_UST_PYTHON_REGISTER_TIMEOUT="0")
    if not Path("/usr/bin/python3").exists() or subprocess.run(
            ["/usr/bin/python3", "-c", "import lttngust"], capture_output=True, timeout=30, env=env).returncode:
        pytest.skip("python3-lttngust is not installed for /usr/bin/python3 (./dev setup installs it)")


@contextmanager
def own_lttng_sessiond(env: dict) -> Iterator[subprocess.Popen]:
    """An lttng-sessiond of the test's own (user space only, LTTNG_HOME from `env`), in the
    foreground so that we hold its PID; ready when `lttng list` answers; stopped by PID."""
    from stacklens.processes import stop_process
    need_program("lttng-sessiond")
    need_program("lttng")
    sessiond = subprocess.Popen(["lttng-sessiond", "--no-kernel"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["lttng", "list"], env=env, capture_output=True, timeout=10).returncode:
            assert sessiond.poll() is None, "lttng-sessiond exited at start"
            assert time.monotonic() < deadline, "lttng-sessiond did not start"
            time.sleep(0.1)
        yield sessiond
    finally:
        stop_process(sessiond, 20, 10)


def bt2_thesis_lines(trace: Path) -> Iterator[tuple[int, str]]:
    """(ts ns, line) of every `lttng_trace:` record line babeltrace2 prints for `trace`."""
    text = subprocess.run([need_program("babeltrace2"), "--clock-seconds", str(trace)], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    for line in text.splitlines():
        if "lttng_trace:" in line:
            sec, frac = re.match(r"^\[(\d+)\.(\d{9})\]", line).groups()
            yield int(sec) * 10**9 + int(frac), line


@pytest.fixture
def data() -> Path:
    if not DATA.exists():
        need_data()
    return DATA
