"""TOML files of the collection plane (agent config, agents list), read with one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from stacklens.errors import StacklensError


def load_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML document at `path`; a file that cannot be read or parsed is one StacklensError
    naming the file and `what` it should have been."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise StacklensError(f"{path}: cannot read {what}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise StacklensError(f"{path}: not valid TOML: {e}") from None
