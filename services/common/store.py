"""Event store plumbing shared by the services: one eventsourcing application each.

Every service application records, in the same transaction as its new events, the position of
the upstream message that caused them (eventsourcing ``Tracking``, multi-row so that messages
may be handled out of order by several replicas). A redelivered message then changes nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, ProcessRecorder, StoredEvent, Tracking

T = TypeVar("T")

MAX_CONFLICT_RETRIES = 25


class ConflictError(RuntimeError):
    """An aggregate kept changing under a command: gave up after many retries."""


def ensure_postgres_schema(env: dict[str, str]) -> None:
    """Create the configured PostgreSQL schema if missing (eventsourcing expects it to exist)."""
    schema = env.get("POSTGRES_SCHEMA")
    if not schema:
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=env["POSTGRES_HOST"], port=int(env.get("POSTGRES_PORT", "5432")),
        dbname=env["POSTGRES_DBNAME"], user=env["POSTGRES_USER"],
        password=env.get("POSTGRES_PASSWORD") or None, autocommit=True,
        connect_timeout=int(env.get("POSTGRES_CONNECT_TIMEOUT", "5")),
    ) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


@dataclass
class _Write:
    events: list[StoredEvent]
    tracking: Tracking | None
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Writes that arrive together share one SQLite transaction, so one WAL sync.

    Each caller's write (its events and tracking) runs in its own savepoint: a version
    conflict fails that write alone, with the ``IntegrityError`` it would have had on its own,
    while the others commit. A caller returns only after the commit that holds its write, so
    every write is durable before its caller goes on, as with a transaction per write.
    """

    def __init__(self, recorder: Any) -> None:
        self._recorder = recorder
        self._cond = threading.Condition()
        self._queue: list[_Write] = []
        self._busy = False
        self.commits = 0
        self.writes = 0

    def write(self, events: list[StoredEvent], tracking: Tracking | None) -> None:
        item = _Write(events, tracking)
        with self._cond:
            self._queue.append(item)
            while self._busy and not item.done:
                self._cond.wait()
            if not item.done:  # lead: write everything queued so far
                self._busy = True
                batch, self._queue = self._queue, []
            else:
                batch = []
        if batch:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    for queued in batch:
                        queued.done = True
                    self._busy = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error

    def _commit(self, batch: list[_Write]) -> None:
        recorder = self._recorder
        try:
            with recorder.datastore.transaction(commit=True) as cursor:
                for item in batch:
                    cursor.execute("SAVEPOINT hitlflow_write")
                    try:
                        if item.events:
                            recorder._insert_events(cursor, item.events, tracking=item.tracking)
                        elif item.tracking is not None:
                            recorder._insert_tracking(cursor, item.tracking)
                    except (sqlite3.IntegrityError, IntegrityError) as error:
                        cursor.execute("ROLLBACK TO hitlflow_write")
                        item.error = (error if isinstance(error, IntegrityError)
                                      else IntegrityError(error))
                    cursor.execute("RELEASE hitlflow_write")
        except BaseException as error:  # nothing of the batch was committed
            for item in batch:
                if item.error is None:
                    item.error = error
            raise
        self.commits += 1
        self.writes += len(batch)


class ServiceApplication(Application[UUID]):
    """An eventsourcing application whose recorder also records tracking positions."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        if env and env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
            ensure_postgres_schema(env)
        super().__init__(env=env)
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()
        #: SQLite: concurrent writes share transactions (PostgreSQL commits each on its own).
        self._group: GroupCommit | None = (
            GroupCommit(self.recorder) if type(self.recorder).__module__.endswith("sqlite")
            else None
        )

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    @property
    def process_recorder(self) -> ProcessRecorder:
        recorder = self.recorder
        assert isinstance(recorder, ProcessRecorder)
        return recorder

    # -- change notification (wakes the relay) ------------------------------------------------

    def on_saved(self, listener: Callable[[], None]) -> None:
        with self._listeners_lock:
            self._listeners.append(listener)

    def _notify_saved(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    # -- writing -----------------------------------------------------------------------------

    def record(self, aggregates: Iterable[Aggregate], tracking: Tracking | None = None) -> None:
        """Save the pending events of ``aggregates`` (and ``tracking``) in one transaction."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent(tracking=tracking)
        for aggregate in aggregates:  # what collect_events() does, without its protocol checks
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        if not processing_event.events and tracking is None:
            return
        if self._group is not None:
            self._group.write(
                [self.mapper.to_stored_event(e) for e in processing_event.events], tracking)
            if self.repository.cache and not self.repository.fastforward:
                for aggregate_id, saved in processing_event.aggregates.items():
                    self.repository.cache.put(aggregate_id, saved)
            self._take_snapshots(processing_event)
        elif processing_event.events:
            self._record(processing_event)
            self._take_snapshots(processing_event)
        else:
            assert tracking is not None
            self.process_recorder.insert_tracking(tracking)
        self._notify_saved()

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record a position alone (no events, no listeners woken); with SQLite it shares the
        transaction of concurrent writes."""
        if self._group is not None:
            self._group.write([], tracking)
        else:
            self.process_recorder.insert_tracking(tracking)

    def is_tracked(self, upstream: str, position: int) -> bool:
        """Has the message at ``position`` of ``upstream`` already been handled here?"""
        recorder: Any = self.recorder
        datastore = recorder.datastore
        with datastore.transaction(commit=False) as cursor:
            if type(recorder).__module__.endswith("sqlite"):
                cursor.execute(
                    "SELECT 1 FROM tracking WHERE application_name=? AND notification_id=?",
                    (upstream, position),
                )
            else:
                from psycopg.sql import SQL, Identifier

                cursor.execute(
                    SQL("SELECT 1 FROM {} WHERE application_name=%s AND notification_id=%s").format(
                        Identifier(datastore.schema or "public", recorder.tracking_table_name)
                    ),
                    (upstream, position),
                )
            return cursor.fetchone() is not None

    def handle_tracked(
        self,
        upstream: str,
        position: int,
        decide: Callable[[], Sequence[Aggregate]],
    ) -> bool:
        """Run ``decide`` (which loads and changes aggregates) and save with tracking.

        Returns False when the message was handled before. Version conflicts with another
        writer reload and decide again.
        """
        for _ in range(MAX_CONFLICT_RETRIES):
            if self.is_tracked(upstream, position):
                return False
            aggregates = decide()
            try:
                self.record(aggregates, Tracking(upstream, position))
            except IntegrityError:
                continue
            return True
        raise ConflictError(f"gave up on {upstream}:{position} after repeated version conflicts")

    def retry_on_conflict(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` again (it reloads what it needs) after an optimistic conflict."""
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                return attempt()
            except IntegrityError:
                continue
        raise ConflictError("gave up after repeated version conflicts")

    def get_or_none(self, aggregate_id: UUID) -> Any:
        from eventsourcing.application import AggregateNotFoundError

        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
