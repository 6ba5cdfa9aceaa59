"""One tracer in its own process: `python -m stacklens.collect.worker NAME CONFIG.json`."""

from __future__ import annotations

import json
import logging
import sys

from stacklens.collect.tracers import TRACERS, entry_point


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in TRACERS:
        print(f"usage: worker {{{','.join(TRACERS)}}} CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with open(argv[1]) as f:
        config = json.load(f)
    entry_point(argv[0])(config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
