"""The sweep's index of deadlines: a SQLite table folded from the timeout service's own event log.

The event store is the truth; this table only answers "which deadlines are due" without
loading aggregates or holding anything in memory. It follows the notification log from the
position it has applied (kept in the same transaction as its rows), so it can be deleted and
rebuilt at any time, and several replicas may share one file.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.store import ServiceApplication

DDL = (
    """
    CREATE TABLE IF NOT EXISTS deadlines (
        request_id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        node_name TEXT NOT NULL,
        interaction_type TEXT NOT NULL,
        step INTEGER NOT NULL,
        policy TEXT NOT NULL,
        due_at TEXT,
        status TEXT NOT NULL,
        fired_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS deadlines_due ON deadlines (status, due_at)",
    "CREATE TABLE IF NOT EXISTS applied (id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER)",
    "INSERT OR IGNORE INTO applied (id, position) VALUES (1, 0)",
)


def stamp(moment: datetime) -> str:
    """A UTC timestamp that sorts as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class IndexedDeadline:
    request_id: str
    thread_id: str
    node_name: str
    interaction_type: str
    step: int
    policy: str
    due_at: datetime
    status: str

    @classmethod
    def of(cls, row: sqlite3.Row) -> IndexedDeadline:
        return cls(row["request_id"], row["thread_id"], row["node_name"],
                   row["interaction_type"], row["step"], row["policy"],
                   parse_stamp(row["due_at"]), row["status"])


class DeadlineIndex:
    def __init__(self, path: Path, app: ServiceApplication, *, batch_size: int = 1000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._app = app
        self._batch_size = batch_size
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                     timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        with self._lock:
            for statement in DDL:
                self._conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- following the log --------------------------------------------------------------------

    def catch_up(self) -> int:
        """Apply every notification not applied yet; returns how many were read."""
        total = 0
        while True:
            read = self._apply_next_batch()
            total += read
            if read < self._batch_size:
                return total

    def _apply_next_batch(self) -> int:
        recorder = self._app.process_recorder
        with self._lock:
            cursor = self._conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                position = int(cursor.execute("SELECT position FROM applied").fetchone()[0])
                notifications = recorder.select_notifications(position + 1, self._batch_size)
                for notification in notifications:
                    event = self._app.mapper.to_domain_event(notification)
                    self._apply(cursor, type(event).__name__, event)
                if notifications:
                    cursor.execute("UPDATE applied SET position=?", (notifications[-1].id,))
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
        return len(notifications)

    @staticmethod
    def _apply(cursor: sqlite3.Cursor, name: str, event: Any) -> None:
        if name == "DeadlineScheduled":  # a new deadline (step 0)
            cursor.execute(
                "INSERT OR IGNORE INTO deadlines (request_id, thread_id, node_name, "
                "interaction_type, step, policy, due_at, status) "
                "VALUES (?,?,?,?,?,?,?,'pending')",
                (event.request_id, event.thread_id, event.node_name, event.interaction_type,
                 event.step, event.policy, stamp(event.due_at)),
            )
        elif name == "DeadlineRescheduled":
            cursor.execute(
                "UPDATE deadlines SET step=?, policy=?, due_at=?, status='pending', "
                "fired_at=NULL WHERE request_id=?",
                (event.step, event.policy, stamp(event.due_at), event.request_id),
            )
        elif name == "DeadlineFired":
            cursor.execute(
                "UPDATE deadlines SET status='fired', fired_at=? WHERE request_id=? AND step=?",
                (stamp(event.fired_at), event.request_id, event.step),
            )
        elif name == "DeadlineCleared":
            cursor.execute("DELETE FROM deadlines WHERE request_id=?", (event.request_id,))

    # -- questions ------------------------------------------------------------------------------

    def due(self, now: datetime, limit: int, *, refire_before: datetime | None = None,
            after: tuple[str, str] | None = None) -> list[IndexedDeadline]:
        """Pending deadlines due at ``now``; with ``refire_before``, also those that fired
        before it and were never settled (their command may have been lost).

        ``after`` = (due_at stamp, request_id) of the last row of the previous page.
        """
        sql = ("SELECT * FROM deadlines WHERE ((status='pending' AND due_at <= :now) OR "
               "(status='fired' AND :refire IS NOT NULL AND fired_at <= :refire)) AND "
               "(:after_due IS NULL OR (due_at, request_id) > (:after_due, :after_id)) "
               "ORDER BY due_at, request_id LIMIT :limit")
        params = {"now": stamp(now), "limit": limit,
                  "refire": stamp(refire_before) if refire_before else None,
                  "after_due": after[0] if after else None,
                  "after_id": after[1] if after else None}
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [IndexedDeadline.of(r) for r in rows]

    def pending(self, thread_id: str | None = None, limit: int = 100) -> list[IndexedDeadline]:
        where = "status IN ('pending', 'fired')" + (" AND thread_id=?" if thread_id else "")
        params: tuple[Any, ...] = ((thread_id, limit) if thread_id else (limit,))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM deadlines WHERE {where} ORDER BY due_at LIMIT ?",  # noqa: S608
                params,
            ).fetchall()
        return [IndexedDeadline.of(r) for r in rows]

    def count_due(self, now: datetime) -> int:
        """Deadlines past due whose timer has not gone off (the sweep's work; near 0)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM deadlines WHERE status='pending' AND due_at <= ?",
                (stamp(now),)).fetchone()
        return int(row[0])

    def count_pending(self) -> int:
        """Deadlines whose timer is still to go off."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM deadlines WHERE status='pending'").fetchone()
        return int(row[0])
