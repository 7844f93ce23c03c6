"""A rebuild's store reader: ``python -m projections.rebuild_worker SERVICE DATA_DIR PART PARTS
BLOCK STOP ANCHORED`` with the settings (JSON) on stdin writes the events of the store's blocks
PART, PART + PARTS, … of BLOCK notifications (up to STOP) to stdout, with the audit records of
those past ANCHORED (see :func:`projections.rebuild.read_in_worker`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    frames = sys.stdout.fileno()
    sys.stdout = sys.stderr  # nothing but frames may reach the pipe
    from hitlflow.settings import Settings
    from projections.rebuild import read_in_worker
    from services.common.logging import configure_logging
    from services.common.output import WholeWriter

    configure_logging("WARNING")  # a helper: its problems, not its routine, reach the terminal

    args = sys.argv[1:]
    service, data_dir, part, parts, block, stop, anchored = args
    settings = Settings(**json.loads(sys.stdin.buffer.read()))
    read_in_worker(settings, Path(data_dir) if data_dir else None, service,
                   WholeWriter(frames),
                   part=int(part), parts=int(parts), block=int(block), stop=int(stop),
                   anchored=int(anchored))


if __name__ == "__main__":
    main()
