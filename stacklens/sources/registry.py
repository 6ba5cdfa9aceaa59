"""The readers stacklens knows, in the order they are tried on a part."""

from __future__ import annotations

from pathlib import Path

from stacklens.sources.base import Reader

HEAD_BYTES = 16384


def readers() -> list[type[Reader]]:
    # imported here, not at module level: each reader module loads its compiled scanners, and
    # a command that reads only trace directories needs none of them (`directory_readers`)
    from stacklens.sources.ftrace import FtraceReader
    from stacklens.sources.lab_config import LabConfigReader
    from stacklens.sources.oslo_log import OsloLogReader
    from stacklens.sources.qemu_trace import QemuTraceReader
    from stacklens.sources.qmp import QmpReader
    found: list[type[Reader]] = []
    try:
        from stacklens.sources.ctf import CtfReader
        found.append(CtfReader)
    except ImportError:  # the CTF package may be absent in a partial checkout
        pass
    found.append(OsloLogReader)
    found += [QemuTraceReader, QmpReader, LabConfigReader]
    from stacklens.sources.ovs_stats import OvsLogReader, OvsStatsReader  # issue 6 (OvS)
    found += [OvsStatsReader, OvsLogReader]
    found.append(FtraceReader)
    found.extend(_app_readers())
    return found


def _app_readers() -> list[type[Reader]]:
    # Application-layer readers (issue 4): notifications, oslo.log JSON, firehose dumps.
    from stacklens.sources.notifications import NotificationReader
    from stacklens.sources.oslo_json import OsloJsonLogReader
    from stacklens.sources.rabbitmq_dump import RabbitDumpReader
    from stacklens.sources.collect_samples import CollectSampleReader  # issue 9: our tracers
    return [NotificationReader, OsloJsonLogReader, RabbitDumpReader, CollectSampleReader]


def directory_readers() -> list[type[Reader]]:
    """The readers of directory parts, in `readers()` order, importing only their modules."""
    found: list[type[Reader]] = []
    try:
        from stacklens.sources.ctf import CtfReader
        found.append(CtfReader)
    except ImportError:
        pass
    from stacklens.sources.rabbitmq_dump import RabbitDumpReader
    found.append(RabbitDumpReader)
    return found


def recognise(path: Path) -> type[Reader] | None:
    """The reader for `path`, chosen by content (file head, or directory layout)."""
    if path.is_dir():
        for r in directory_readers():
            if r.is_directory and r.sniff(path, b""):
                return r
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return None
    if b"\0" in head[:1024]:
        return None  # binary files are never text logs; CTF streams live inside trace dirs
    for r in readers():
        if not r.is_directory and r.sniff(path, head):
            return r
    return None
