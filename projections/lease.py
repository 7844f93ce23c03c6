"""The single-writer lease of the projections service: any number of replicas answer queries,
one at a time applies events to the views.

The lease is a row of the views database (``view_lease``): who holds it, until when (the
database's own clock, so replicas on several hosts agree), and an epoch that grows with each
change of holder. The holder renews it every third of ``ttl``; a replica that finds it expired
takes it. Every transaction that applies events checks, after taking the writers' turn
(``view_writer``, see :mod:`projections.db`), that its replica still holds the lease, so a
replica that lost it (paused, partitioned, too slow to renew) can never write after another
took over: its batch is refused (:class:`LeaseLostError`) and the new holder resumes from the
stream sequence the views recorded. A replica killed outright is replaced within ``ttl``
seconds.
"""

from __future__ import annotations

import threading
import uuid

from projections.db import Tx, ViewDatabase

LEASE_DDL = """CREATE TABLE IF NOT EXISTS view_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    epoch BIGINT NOT NULL
)"""

NAME = "live"


class LeaseLostError(RuntimeError):
    """This replica no longer holds the projections' single-writer lease."""


def _now(tx: Tx) -> str:
    """The database's clock in epoch seconds, as SQL."""
    if tx.dialect == "sqlite":
        return "((julianday('now') - 2440587.5) * 86400.0)"
    return "EXTRACT(EPOCH FROM clock_timestamp())"


class Lease:
    def __init__(self, db: ViewDatabase, ttl: float, holder: str | None = None) -> None:
        self.db = db
        self.ttl = ttl
        self.holder = holder or uuid.uuid4().hex
        self.epoch = 0
        # acquire() runs in a worker thread that outlives a cancelled caller: release() waits
        # for it, and no acquire() after a release() takes the lease again
        self._lock = threading.Lock()
        self._released = False
        with db.transaction(turn=False) as tx:
            tx.execute(LEASE_DDL)

    def acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if held: whether it is held."""
        with self._lock:
            if self._released:
                return False
            return self._acquire()

    def _acquire(self) -> bool:
        with self.db.transaction() as tx:
            now = _now(tx)
            tx.execute(
                "INSERT INTO view_lease (name, holder, expires_at, epoch)"  # noqa: S608 - no input
                f" VALUES (?, ?, {now} + ?, 1)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at,"
                " epoch = CASE WHEN view_lease.holder = excluded.holder THEN view_lease.epoch"
                " ELSE view_lease.epoch + 1 END"
                f" WHERE view_lease.holder = excluded.holder OR view_lease.expires_at < {now}",
                (NAME, self.holder, self.ttl))
            row = tx.one("SELECT holder, epoch FROM view_lease WHERE name = ?", (NAME,))
        held = row is not None and row["holder"] == self.holder
        if held and row is not None:
            self.epoch = int(row["epoch"])
        return held

    def release(self) -> None:
        """Give the lease up at once (a clean stop): a standby takes over at its next try. Also
        when this replica never knew it held it (its stop came while it was taking it)."""
        with self._lock:
            self._released = True
            self._expire()

    def _expire(self) -> None:
        with self.db.transaction() as tx:
            tx.execute("UPDATE view_lease SET expires_at = 0 WHERE name = ? AND holder = ?",
                       (NAME, self.holder))

    def check(self, tx: Tx) -> None:
        """Inside a write transaction (after the writers' turn): raise LeaseLostError unless
        this replica holds the lease."""
        row = tx.one("SELECT holder FROM view_lease WHERE name = ?", (NAME,))
        if row is None or row["holder"] != self.holder:
            raise LeaseLostError(
                f"the projections lease is held by another replica ({row and row['holder']})")

    def current(self) -> dict[str, object] | None:
        """Who holds the lease, until when (epoch seconds), and its epoch."""
        return self.db.one("SELECT holder, expires_at, epoch FROM view_lease WHERE name = ?",
                           (NAME,))
