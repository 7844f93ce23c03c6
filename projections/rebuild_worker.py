"""A rebuild's store reader: ``python -m projections.rebuild_worker SERVICE [DATA_DIR]`` with the
settings (JSON) on stdin writes the store's envelopes to stdout (see
:func:`projections.rebuild.read_in_worker`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the pipe
    from hitlflow.settings import Settings
    from projections.rebuild import read_in_worker

    service, data_dir = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    settings = Settings(**json.loads(sys.stdin.buffer.read()))
    read_in_worker(settings, Path(data_dir) if data_dir else None, service, out)


if __name__ == "__main__":
    main()
