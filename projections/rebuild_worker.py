"""A rebuild's store reader: ``python -m projections.rebuild_worker SERVICE [DATA_DIR [START
[STOP [ANCHORED]]]]`` with the settings (JSON) on stdin writes the events of the store's
notifications START to STOP (default: all) to stdout, with the audit records of those past
ANCHORED (see :func:`projections.rebuild.read_in_worker`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the pipe
    from hitlflow.settings import Settings
    from projections.rebuild import read_in_worker
    from services.common.logging import configure_logging

    configure_logging("WARNING")  # a helper: its problems, not its routine, reach the terminal

    args = sys.argv[1:]
    service = args[0]
    data_dir = args[1] if len(args) > 1 else ""
    start = int(args[2]) if len(args) > 2 and args[2] else 1
    stop = int(args[3]) if len(args) > 3 and args[3] else None
    anchored = int(args[4]) if len(args) > 4 and args[4] else 0
    settings = Settings(**json.loads(sys.stdin.buffer.read()))
    read_in_worker(settings, Path(data_dir) if data_dir else None, service, out,
                   start=start, stop=stop, anchored=anchored)


if __name__ == "__main__":
    main()
