"""The fixed registry of tracers an agent may run: name → worker entry point.

An agent starts only these (never a command from a request); each runs in its own worker
process (`python -m stacklens.collect.worker NAME CONFIG.json`) and writes segments.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

TRACERS: dict[str, str] = {
    "notifications": "stacklens.collect.notification_listener:main",
    "proc": "stacklens.collect.proc_sampler:main",
    "packages": "stacklens.collect.packages:main",
    "oslo_log": "stacklens.collect.oslo_log_tailer:main",
    "qmp": "stacklens.collect.qmp_poller:main",
    "ftrace": "stacklens.collect.ftrace_tracer:main",
    "ovs": "stacklens.collect.ovs_sampler:main",
    "lttng": "stacklens.collect.lttng_tracer:main",
}


def entry_point(name: str) -> Callable[[dict[str, Any]], None]:
    if name not in TRACERS:
        raise KeyError(name)
    module, func = TRACERS[name].split(":")
    return getattr(importlib.import_module(module), func)
