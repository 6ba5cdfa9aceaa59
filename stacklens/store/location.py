"""Where a store lives: a filesystem path, or a URL that fsspec understands.

A plain path is a store on a filesystem, committed by rename under an fcntl lock (store.py).
A URL (`file:///shared/st`, `s3://bucket/st`, `memory://st` in one process, any protocol of an
installed fsspec implementation) is a store committed by manifest objects (objectstore.py),
which needs neither rename nor locks: what object stores offer. A cluster's workers open the
store themselves, so it must be somewhere every one of them reaches under the same name: a
shared filesystem (NFS, CephFS, …) or an object store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stacklens.errors import StacklensError

LOCAL_PROTOCOLS = ("file", "local")


def is_url(location: str | os.PathLike[str]) -> bool:
    return "://" in os.fspath(location)


def protocol(location: str | os.PathLike[str]) -> str | None:
    """The URL's protocol (lower case), None for a plain path."""
    text = os.fspath(location)
    return text.split("://", 1)[0].lower() if "://" in text else None


def local_root(location: str | os.PathLike[str]) -> Path:
    """The local directory of a store given as a path or a `file://` URL."""
    text = os.fspath(location)
    if not is_url(text):
        return Path(text)
    if protocol(text) not in LOCAL_PROTOCOLS:
        raise StacklensError(f"{text}: not on a local filesystem")
    _, path = url_to_fs(text)
    return Path(path)


def url_to_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path in its terms) of a store URL, or one line on what is wrong:
    an unknown protocol, or one whose fsspec implementation (s3fs for s3://) is not installed."""
    import fsspec.core
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise StacklensError(f"{url}: the fsspec implementation of {protocol(url)}:// is not installed "
                             f"({e}; for s3:// run `pip install s3fs`)") from None
    except (ValueError, TypeError) as e:
        raise StacklensError(f"{url}: not a store location fsspec understands ({e})") from None
    return fs, path.rstrip("/") or path


def canonical(location: str | os.PathLike[str]) -> str:
    """`location` as the workers of a cluster must see it: a plain path made absolute (their
    working directory is not ours), a URL with its path made absolute (file://) or as is."""
    text = os.fspath(location)
    if not is_url(text):
        return str(Path(text).resolve())
    fs, path = url_to_fs(text)
    return fs.unstrip_protocol(path)
