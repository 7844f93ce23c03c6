"""A rebuild's work in one process, to count its instructions (prints what it did; not a test).

Instructions do not depend on how busy the host is, so this is how a change to the rebuild is
measured on a shared machine. The stores are those ``bench.projections`` generates and keeps
(``--events N --data DIR``).

    # a reader: the first N notifications of the workflow store, as a rebuild's worker reads
    # them (frames to /dev/null); the difference of two runs is the cost of the notifications
    # (--anchored: as on a running install, whose audit chains are anchored already)
    valgrind --tool=callgrind --callgrind-out-file=/tmp/r2k.out \\
        .venv/bin/python -m bench.rebuild_work reader --data /tmp/rb-200k --notifications 2000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/r12k.out \\
        .venv/bin/python -m bench.rebuild_work reader --data /tmp/rb-200k --notifications 12000
    # the main process of a whole rebuild (its readers are processes of their own: not counted)
    valgrind --tool=callgrind --callgrind-out-file=/tmp/main.out \\
        .venv/bin/python -m bench.rebuild_work main --data /tmp/rb-30k

``grep summary FILE`` gives each run's total.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from hitlflow.settings import Settings
from projections.db import ViewDatabase
from projections.projector import Projector
from projections.rebuild import read_in_worker, rebuild_from_stores
from services.common.logging import configure_logging
from services.common.output import WholeWriter


def reader(data: Path, notifications: int, service: str, anchored: bool) -> None:
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        read_in_worker(Settings(home=data), data / "stores", service, WholeWriter(sink),
                       stop=notifications, anchored=notifications if anchored else 0)
    finally:
        os.close(sink)
    print(f"read {notifications:,} notifications of the {service} store"
          f" ({'anchored' if anchored else 'fresh'})")


def main(data: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        db = ViewDatabase.sqlite(Path(scratch) / "views.sqlite")
        try:
            result = rebuild_from_stores(db, Projector(db), Settings(home=data),
                                         data_dir=data / "stores", parallel=True)
        finally:
            db.close()
    print(f"rebuilt {result.events:,} events")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("reader", "main"))
    parser.add_argument("--data", type=Path, required=True,
                        help="a directory bench.projections generated stores in")
    parser.add_argument("--notifications", type=int, default=12_000, help="reader: how many")
    parser.add_argument("--service", default="workflow", help="reader: which store")
    parser.add_argument("--anchored", action="store_true",
                        help="reader: as when the audit chains are anchored already (no audit"
                             " records); else as into a fresh views database")
    args = parser.parse_args()
    if not (args.data / "stores").is_dir():
        parser.error(f"no stores under {args.data}: generate them with "
                     f"'python -m bench.projections --events N --skip-lag --data {args.data}'")
    configure_logging("WARNING")
    if args.part == "reader":
        reader(args.data, args.notifications, args.service, args.anchored)
    else:
        main(args.data)


if __name__ == "__main__":
    cli()
