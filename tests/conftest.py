"""Shared test fixtures: the real data in ../shared/data and the babeltrace2 oracle.

The data is required: in CI (CI=true) a missing ../shared/data fails the run loudly;
elsewhere the tests that need it are skipped with a message saying where it was looked for.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("STACKLENS_DATA", ROOT.parent / "shared" / "data")).resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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


@pytest.fixture
def data() -> Path:
    if not DATA.exists():
        need_data()
    return DATA
