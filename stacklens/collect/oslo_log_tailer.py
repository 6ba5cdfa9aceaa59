"""The oslo.log file tailer: new complete lines of the services' log files → segments.

Lines are copied unchanged (the oslo.log and oslo.log JSON readers recognise them), one
segment stream per file. The read offset (and the file's inode, to follow rotation) is saved
after each durable write, so a restart resumes where the last durable batch ended.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from stacklens.collect.segments import SegmentWriter

MAX_READ = 8 << 20


def main(config: dict[str, Any]) -> None:
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in config.get("paths", [])]
    interval = float(config.get("interval_s", 0.5))
    state_file = out / ".offsets.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    writers = {str(p): SegmentWriter(out, re.sub(r"[^A-Za-z0-9_.-]", "_", p.name), ext="log",
                                     max_age_s=float(config.get("seal_after_s", 10.0)))
               for p in paths}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        for p in paths:
            key = str(p)
            try:
                st = p.stat()
            except OSError:
                continue  # not there yet (or rotated away): try again later
            ino, off = state.get(key, (st.st_ino, 0))
            if ino != st.st_ino or st.st_size < off:
                ino, off = st.st_ino, 0  # rotated or truncated: the new file from its start
            if st.st_size == off:
                continue
            with open(p, "rb") as f:
                f.seek(off)
                chunk = f.read(min(st.st_size - off, MAX_READ))
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                continue  # an incomplete last line waits for its newline
            writers[key].write_batch(chunk[:end])
            state[key] = (ino, off + end)
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, state_file)
        for w in writers.values():
            w.maybe_seal()
        time.sleep(interval)
    for w in writers.values():
        w.close()
