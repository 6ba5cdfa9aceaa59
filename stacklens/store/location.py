"""Where a store lives: a filesystem path, or a URL that fsspec understands.

A cluster's workers open the store themselves, so it must be somewhere every one of them
reaches under the same name: a shared filesystem (NFS, CephFS, a cluster filesystem) given as
a path or a `file://` URL. Object stores (s3://, gs://, …) are refused in one line: the store
commits a source by renaming files and locking a directory, which object stores do not offer
(see the README, "Running on a cluster").
"""

from __future__ import annotations

import os
from pathlib import Path

from stacklens.errors import StacklensError


def local_root(location: str | os.PathLike[str]) -> Path:
    """The local directory of a store given as a path or a `file://` URL."""
    text = os.fspath(location)
    if "://" not in text:
        return Path(text)
    protocol = text.split("://", 1)[0].lower()
    if protocol not in ("file", "local"):
        raise StacklensError(
            f"{text}: a store on {protocol}:// is not supported (commits rename files and lock the "
            f"store directory); use a filesystem every worker mounts, as a path or a file:// URL")
    import fsspec.core
    try:
        _, path = fsspec.core.url_to_fs(text)
    except ValueError as e:
        raise StacklensError(f"{text}: not a store location fsspec understands ({e})") from None
    return Path(path)
