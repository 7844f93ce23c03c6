"""The views' database: SQLite file by default. Each view keeps tracking rows
(service, position) written in the same transaction as its rows, so a redelivered event
changes nothing."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TRACKING_DDL = """
CREATE TABLE IF NOT EXISTS view_tracking (
    view TEXT NOT NULL,
    service TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (view, service, position)
)
"""


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class ViewDatabase:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                     timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.RLock()
        self._conn.execute(TRACKING_DDL)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cursor = self._conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            else:
                cursor.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def track(self, cursor: sqlite3.Cursor, view: str, service: str, position: int) -> bool:
        """Record a position for a view; False when the view has seen it before."""
        cursor.execute(
            "INSERT OR IGNORE INTO view_tracking (view, service, position) VALUES (?, ?, ?)",
            (view, service, position),
        )
        return cursor.rowcount == 1

    def position(self, view: str, service: str) -> int:
        rows = self.query(
            "SELECT MAX(position) AS p FROM view_tracking WHERE view=? AND service=?",
            (view, service),
        )
        return int(rows[0]["p"] or 0)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
