"""Distinct copies of one CTF trace, for benches that must measure what users see.

A user ingesting N hosts' traces gets N different metadata files (each trace has its own
UUID, its own env.hostname), so every per-trace cost (metadata parse or cache lookup, decoder
compilation) is paid N times. Symlinks to one trace hide that: this copier writes real copies
where the trace UUID (in the metadata text, in every metadata packet header and in every
stream packet header) and the hostname differ per copy. Replacements keep every length, so
the packetized metadata's packet sizes and the stream files' layouts stay valid.

Not a bench itself (run.py skips modules starting with "_" and this one returns no figures);
usage from another bench:  from distinct_traces import distinct_copies
CLI: python bench/distinct_traces.py SRC DEST N  (prints the copies' paths)
"""

from __future__ import annotations

import re
import shutil
import sys
import uuid as uuidlib
from pathlib import Path

IS_HELPER = True  # bench/run.py: not a bench


def _trace_uuid(text: bytes) -> bytes | None:
    m = re.search(rb'trace\s*\{[^}]*?uuid\s*=\s*"([0-9a-fA-F-]{36})"', text, re.S)
    return m.group(1) if m else None


def _hostname(text: bytes) -> bytes | None:
    m = re.search(rb'env\s*\{[^}]*?hostname\s*=\s*"([^"]*)"', text, re.S)
    return m.group(1) if m else None


def _shift_clocks(meta: bytes, shift_ns: int, where: Path) -> bytes:
    """Every clock's `offset = N;` moved by shift_ns (same number of digits: packetized
    metadata keeps its packet sizes), so the copy's events come shift_ns later."""
    def one(m: re.Match) -> bytes:
        old = m.group(2)
        new = str(int(old) + shift_ns).encode()
        if len(new) != len(old):
            raise ValueError(f"{where}/metadata: clock offset {old.decode()} + {shift_ns} changes its length")
        return m.group(1) + new + b";"
    out, n = re.subn(rb"(\boffset\s*=\s*)([0-9]+);", one, meta)
    if not n:
        raise ValueError(f"{where}/metadata: no clock offset to shift")
    return out


def distinct_copy(src: Path, dest: Path, index: int, shift_ns: int = 0) -> Path:
    """Copy trace `src` to `dest` with a new trace UUID and a new hostname of the same length
    (derived from `index`, so copies made twice are identical), its clocks moved by
    `shift_ns` (copies that follow each other in time, as one long trace). Returns `dest`."""
    meta = (src / "metadata").read_bytes()
    if shift_ns:
        meta = _shift_clocks(meta, shift_ns, src)
    old_text = _trace_uuid(meta)
    if old_text is None:
        raise ValueError(f"{src}/metadata: no trace uuid found")
    old_bin = uuidlib.UUID(old_text.decode()).bytes
    new = uuidlib.UUID(bytes=bytes(a ^ b for a, b in zip(old_bin, uuidlib.uuid5(
        uuidlib.NAMESPACE_OID, f"stacklens-bench-{index}").bytes)))
    new_text, new_bin = str(new).encode(), new.bytes
    host = _hostname(meta)
    dest.mkdir(parents=True, exist_ok=True)
    meta = meta.replace(old_text, new_text).replace(old_bin, new_bin)
    if host:
        tag = f"{index:d}".encode()
        new_host = (host[:max(0, len(host) - len(tag))] + tag)[-len(host):] if len(tag) < len(host) \
            else tag[-len(host):]
        meta = meta.replace(b'hostname = "' + host + b'"', b'hostname = "' + new_host + b'"')
    (dest / "metadata").write_bytes(meta)
    for f in sorted(src.iterdir()):
        if f.name == "metadata":
            continue
        if f.is_dir():  # LTTng's index/ (packet offsets and sizes: unchanged)
            shutil.copytree(f, dest / f.name, dirs_exist_ok=True)
        elif f.is_file():
            # the 16 UUID bytes of every packet header (an accidental match elsewhere in
            # the payload is 2^-128 unlikely)
            (dest / f.name).write_bytes(f.read_bytes().replace(old_bin, new_bin))
    return dest


def distinct_copies(src: Path, root: Path, n: int, shift_ns: int = 0) -> list[Path]:
    """`n` distinct copies of trace `src` under `root` (reused when already there); copy i's
    clocks moved by i * shift_ns (shift_ns longer than the trace: one host's copies in a row)."""
    out = []
    for i in range(n):
        d = root / f"{src.name}-{i:03d}"
        if not (d / "metadata").is_file():
            tmp = root / f".{src.name}-{i:03d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            distinct_copy(src, tmp, i, i * shift_ns)
            tmp.rename(d)
        out.append(d)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    for p in distinct_copies(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])):
        print(p)
