"""Event store plumbing shared by the services: one eventsourcing application each.

Every service application records, in the same transaction as its new events, the position of
the upstream message that caused them (eventsourcing ``Tracking``, multi-row so that messages
may be handled out of order by several replicas). A redelivered message then changes nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    Transcoder,
)

from services.common.correlation import correlated, stamp
from services.common.datastores import on_postgres, on_sqlite, reading
from services.common.keyring import check_readable
from services.common.sealing import SealingMapper, ThreadKeys
from services.common.transcoding import QuickJSONTranscoder

T = TypeVar("T")

#: What one write saved: (notification id, domain event) in log order.
Saved = Sequence[tuple[int, Any]]

MAX_CONFLICT_RETRIES = 25
#: Aggregates this process saved last, kept to decide the next message without reading them
#: back (bounded: memory stays flat however many threads exist).
CACHE_SIZE = 4096


class ConflictError(RuntimeError):
    """An aggregate kept changing under a command: gave up after many retries."""


#: PostgreSQL advisory lock taken while a process creates its schema and tables.
DDL_LOCK = 0x6869746C


@contextmanager
def postgres_ddl_lock(conninfo: str | dict[str, Any]) -> Iterator[None]:
    """Hold a database-wide advisory lock while creating schemas and tables: replicas that
    start together would otherwise race on ``CREATE ... IF NOT EXISTS`` (PostgreSQL then fails
    one with "tuple concurrently updated")."""
    import psycopg

    params = {"conninfo": conninfo} if isinstance(conninfo, str) else conninfo
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (DDL_LOCK,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (DDL_LOCK,))


def _conninfo(env: dict[str, str]) -> dict[str, Any]:
    return {"host": env["POSTGRES_HOST"], "port": int(env.get("POSTGRES_PORT", "5432")),
            "dbname": env["POSTGRES_DBNAME"], "user": env["POSTGRES_USER"],
            "password": env.get("POSTGRES_PASSWORD") or None,
            "connect_timeout": int(env.get("POSTGRES_CONNECT_TIMEOUT", "5"))}


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
    trackings: list[Tracking]
    #: Run first in the write's savepoint, with its cursor (e.g. to store the keys its
    #: events are sealed with).
    prepare: Callable[[Any], None] | None = None
    done: bool = False
    error: BaseException | None = None
    ids: Sequence[int] = ()  # notification ids given to ``events``


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

    def write(self, events: list[StoredEvent], trackings: list[Tracking],
              prepare: Callable[[Any], None] | None = None) -> Sequence[int]:
        """Save ``events`` and ``trackings`` all together or not at all (with what
        ``prepare`` writes first); returns the notification ids the events got."""
        item = _Write(events, trackings, prepare)
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
        return item.ids

    def _commit(self, batch: list[_Write]) -> None:
        recorder = self._recorder
        try:
            with recorder.datastore.transaction(commit=True) as cursor:
                for item in batch:
                    cursor.execute("SAVEPOINT hitlflow_write")
                    try:
                        if item.prepare is not None:
                            item.prepare(cursor)
                        if item.events:
                            item.ids = recorder._insert_events(cursor, item.events) or ()
                        for tracking in item.trackings:
                            recorder._insert_tracking(cursor, tracking)
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


class PostgresBatchWrite:
    """The events and tracking rows of a job, or of a batch of jobs, in one PostgreSQL
    transaction with the data keys of threads new to the store: the events table locked once,
    one commit (eventsourcing's ``insert_events``, for many trackings and the keys). Any
    failure leaves nothing written."""

    def __init__(self, recorder: Any) -> None:
        self._recorder = recorder

    def write(self, events: list[StoredEvent], trackings: list[Tracking],
              prepare: Callable[[Any], None] | None = None) -> Sequence[int]:
        """Save ``events`` and ``trackings`` all together or not at all (with what ``prepare``
        writes first); returns the notification ids the events got."""
        from psycopg import Rollback

        recorder = self._recorder
        error: Exception | None = None
        ids: Sequence[int] | None = None
        with recorder.datastore.get_connection() as conn:
            with conn.pipeline() as pipeline, conn.transaction() as transaction:
                try:
                    with conn.cursor() as cursor:
                        if prepare is not None:
                            prepare(cursor)
                        for tracking in trackings:
                            recorder._insert_tracking(cursor, tracking)
                    if events:
                        with conn.cursor() as cursor:
                            recorder._insert_stored_events(cursor, events)
                            pipeline.sync()  # a conflict is raised here, not at commit
                            ids = recorder._fetch_ids_after_insert_events(cursor, events)
                except Exception as raised:  # re-raised once the pipeline is left
                    error = raised
                    # rolled back, not committed: an error raised here rather than by the
                    # server (a value psycopg cannot send) leaves the transaction open
                    raise Rollback(transaction) from None
            if error is not None:
                raise error
        return ids or ()


@dataclass(eq=False)
class Job:
    """One message's decision; the jobs of a batch are decided in order and saved together.

    ``decide`` loads aggregates (through :meth:`ServiceApplication.get_or_none` or
    :meth:`~ServiceApplication.load`, which see what earlier jobs of the batch changed),
    changes them, and returns them with the job's result. It may run more than once (after a
    version conflict with another writer it decides again), so it acts only through what it
    returns. Exceptions of the types in ``refusals`` are outcomes (``refused``): nothing is
    saved, not even the tracking, as when the job raises on its own. ``on_duplicate`` gives the
    result when ``tracking`` shows the message was handled before.
    """

    key: str
    decide: Callable[[], tuple[Sequence[Aggregate], Any]]
    tracking: Tracking | None = None
    refusals: tuple[type[Exception], ...] = ()
    on_duplicate: Callable[[], Any] | None = None
    #: Called once the outcome is saved (e.g. to log it: ``decide`` may run more than once).
    settled: Callable[[Job], None] | None = None
    #: The message's correlation id: bound to the job's log lines, kept on its events.
    correlation_id: str | None = None
    result: Any = None
    duplicate: bool = False
    refused: Exception | None = None
    #: An unexpected failure (the message is to be delivered again), or, with ``skipped``,
    #: an earlier job of the same key failed and this one must wait for it.
    error: BaseException | None = None
    skipped: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None or self.skipped

    def reset(self) -> None:
        self.result = self.refused = self.error = None
        self.duplicate = self.skipped = False


class _BatchAbandoned(Exception):
    """The jobs cannot be saved together: decide them again one by one."""


@dataclass
class _Watch:
    """Which cached aggregates one decision used (``bypass``: read the store instead)."""

    bypass: bool = False
    hits: set[UUID] = field(default_factory=set)

    def trusts(self, aggregates: Sequence[Aggregate]) -> bool:
        """A decision may rest on cached aggregates only if it saves them: the save fails on
        the version if another writer changed one meanwhile, and the decision is made again."""
        return not self.hits.difference(a.id for a in aggregates)


@dataclass
class _Batch:
    """What the jobs decided so far in this batch, seen by the later ones."""

    changed: dict[UUID, Aggregate] = field(default_factory=dict)
    used: set[UUID] = field(default_factory=set)


class ServiceApplication(Application[UUID]):
    """An eventsourcing application whose recorder also records tracking positions."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        if env and env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
            with postgres_ddl_lock(_conninfo(env)):
                ensure_postgres_schema(env)
                super().__init__(env=env)  # creates its tables
        else:
            super().__init__(env=env)
        #: Per-thread data keys (crypto-shredding: services/common/sealing.py).
        self.thread_keys = ThreadKeys(self)
        if self.env.get("CREATE_TABLE", "true").lower() != "false":
            self.thread_keys.create_table()
        self.sealing.keys = self.thread_keys
        if self.env.get("CHECK_READABLE", "true").lower() != "false":
            check_readable(self, str(self.name))  # a wrong or missing key: refuse at once
        self._listeners: list[Callable[[Saved], None]] = []
        self._listeners_lock = threading.Lock()
        self._local = threading.local()  # the batch and decision of this thread, if any
        self._cache: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._cache_lock = threading.Lock()
        #: SQLite: concurrent writes share transactions (PostgreSQL commits each on its own).
        self._group: GroupCommit | None = (
            GroupCommit(self.recorder) if on_sqlite(getattr(self.recorder, "datastore", None))
            else None
        )
        #: Where a batch of jobs is saved in one transaction (:meth:`run_jobs`).
        self._batch_write: GroupCommit | PostgresBatchWrite | None = self._group or (
            PostgresBatchWrite(self.recorder)
            if on_postgres(getattr(self.recorder, "datastore", None)) else None
        )

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    def construct_transcoder(self) -> Transcoder:
        transcoder = QuickJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(transcoder=self.construct_transcoder(),
                                   mapper_class=SealingMapper)

    @property
    def sealing(self) -> SealingMapper:
        mapper = self.mapper
        assert isinstance(mapper, SealingMapper)
        return mapper

    def erase_thread(self, thread_id: str) -> bool:
        """Destroy the thread's data key in this store (its personal values become
        unreadable) and forget what this process holds of it; False if erased before."""
        erased = self.thread_keys.erase(thread_id)
        with self._cache_lock:
            for aggregate_id in [i for i, a in self._cache.items()
                                 if getattr(a, "thread_id", None) == thread_id]:
                del self._cache[aggregate_id]
        return erased

    @property
    def decides_in_loop(self) -> bool:
        """May a batch be decided on the event loop rather than in a worker thread? Yes when the
        store is a local SQLite file (and, said by a subclass, no decision waits on code that
        may block): a batch is then a short burst of CPU and one local commit, and a thread
        hop would cost as much as it saves."""
        return self._group is not None

    @property
    def process_recorder(self) -> ProcessRecorder:
        recorder = self.recorder
        assert isinstance(recorder, ProcessRecorder)
        return recorder

    # -- change notification (wakes the relay) ------------------------------------------------

    def on_saved(self, listener: Callable[[Saved], None]) -> None:
        """Call ``listener`` (in the writing thread) with what each write saved."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def _notify_saved(self, events: Sequence[Any], ids: Sequence[int]) -> None:
        saved = list(zip(ids, events)) if len(ids) == len(events) else []  # noqa: B905
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(saved)

    # -- writing -----------------------------------------------------------------------------

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """eventsourcing's save, with the threads of ``objs`` noted for sealing first."""
        self.sealing.note_threads(objs)
        return super().save(*objs, **kwargs)

    def record(self, aggregates: Iterable[Aggregate], tracking: Tracking | None = None) -> None:
        """Save the pending events of ``aggregates`` (and ``tracking``) in one transaction."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent(tracking=tracking)
        for aggregate in aggregates:  # what collect_events() does, without its protocol checks
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        stamp(processing_event.events)  # the correlation id of the message being handled
        self.sealing.note_threads(processing_event.aggregates.values())
        if not processing_event.events and tracking is None:
            return
        ids: Sequence[int] = ()
        try:
            if self._batch_write is not None:  # (a new thread's data key goes in with it)
                ids = self._write_sealed(processing_event.events,
                                         [] if tracking is None else [tracking])
                self._take_snapshots(processing_event)
            elif processing_event.events:
                recordings = self._record(processing_event)
                ids = [recording.notification.id for recording in recordings]
                self._take_snapshots(processing_event)
            else:
                assert tracking is not None
                self.process_recorder.insert_tracking(tracking)
        except IntegrityError:
            self._forget(processing_event.aggregates)
            raise
        self._remember(processing_event.aggregates.values())
        self._notify_saved(processing_event.events, ids)

    def _write_sealed(self, events: Sequence[Any], trackings: list[Tracking]) -> Sequence[int]:
        """Map ``events`` and write them with ``trackings`` in one transaction (SQLite's group
        commit, PostgreSQL's batch write); the data keys of threads new to this store are
        stored by the same transaction."""
        assert self._batch_write is not None
        keys = self.thread_keys
        with keys.deferred() as made:
            stored = [self.mapper.to_stored_event(e) for e in events]
        ids = self._batch_write.write(
            stored, trackings, (lambda cursor: keys.insert_made(cursor, made)) if made else None)
        keys.stored(made)
        return ids

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record a position alone (no events, no listeners woken); with SQLite it shares the
        transaction of concurrent writes."""
        if self._group is not None:
            self._group.write([], [tracking])
        else:
            self.process_recorder.insert_tracking(tracking)

    def is_tracked(self, upstream: str, position: int) -> bool:
        """Has the message at ``position`` of ``upstream`` already been handled here?"""
        return bool(self._tracked([Tracking(upstream, position)]))

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

    def load(self, aggregate_id: UUID) -> Any:
        """The aggregate as saved, or as an earlier job of the batch being decided left it.

        A job's decision gets the aggregate this process saved last, when it is still cached,
        rather than reading it back (see :class:`_Watch`). It is taken out of the cache, not
        copied: no other decision sees it while this one may change it, and it goes back only
        once saved (:meth:`_remember`); a decision that fails or saves something else leaves
        it out, and the next one reads the store."""
        batch: _Batch | None = getattr(self._local, "batch", None)
        if batch is not None:
            changed = batch.changed.get(aggregate_id)
            if changed is not None:
                batch.used.add(aggregate_id)
                return changed
        watch: _Watch | None = getattr(self._local, "watch", None)
        if watch is not None and not watch.bypass:
            with self._cache_lock:
                cached = self._cache.pop(aggregate_id, None)
            if cached is not None:
                watch.hits.add(aggregate_id)
                return cached
        return self.repository.get(aggregate_id)

    def _remember(self, aggregates: Iterable[Any]) -> None:
        with self._cache_lock:
            cache = self._cache
            for aggregate in aggregates:
                cache[aggregate.id] = aggregate
                cache.move_to_end(aggregate.id)
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)

    def _forget(self, aggregate_ids: Iterable[UUID]) -> None:
        """Drop these aggregates from the cache: what a failed write changed may be stale."""
        with self._cache_lock:
            for aggregate_id in aggregate_ids:
                self._cache.pop(aggregate_id, None)

    def _decide(self, job: Job) -> Sequence[Aggregate]:
        """The job's decision, made again on the store's aggregates when the first one rested
        on cached aggregates it does not save (or failed after using one)."""
        for bypass in (False, True):
            watch = self._local.watch = _Watch(bypass)
            try:
                aggregates, job.result = job.decide()
            except Exception:
                if bypass or not watch.hits:
                    raise
                continue
            finally:
                self._local.watch = None
            if bypass or watch.trusts(aggregates):
                return aggregates
        raise AssertionError("unreachable")

    def peek(self, aggregate_id: UUID) -> Any:
        """The aggregate as saved, to read and not to change: the copy this process cached
        when it saved it (left in the cache), else the store's; None when there is none. A
        copy may be older than what another replica saved since."""
        with self._cache_lock:
            cached = self._cache.get(aggregate_id)
        return cached if cached is not None else self.get_or_none(aggregate_id)

    def get_or_none(self, aggregate_id: UUID) -> Any:
        try:
            return self.load(aggregate_id)
        except AggregateNotFoundError:
            return None

    # -- batches of jobs ---------------------------------------------------------------------

    def run_jobs(self, jobs: Sequence[Job]) -> None:
        """Decide ``jobs`` in order and save them; each gets its outcome.

        The whole batch is one transaction (SQLite and PostgreSQL): one tracking read for all,
        one write (every event and tracking row), one sync. If that cannot be (a conflict with
        another writer, an unexpected error, a refused job that left an aggregate half
        changed), nothing of it is kept and the jobs are decided again one by one, each in
        its own transaction, where a failure stops only the later jobs of its key.
        """
        together = self._batch_write is not None and len(jobs) > 1
        if together:
            try:
                self._run_together(jobs)
            except Exception:  # a conflict, an error, _BatchAbandoned: nothing was saved
                for job in jobs:
                    job.reset()
                together = False
        if not together:
            self._run_one_by_one(jobs)
        for job in jobs:
            if job.settled is not None and not job.failed:
                with structlog.contextvars.bound_contextvars(thread_id=job.key), \
                        correlated(job.correlation_id):
                    job.settled(job)

    def run_job(self, job: Job) -> Job:
        """One job on its own; an unexpected failure is raised."""
        self.run_jobs([job])
        if job.error is not None:
            raise job.error
        return job

    def _run_together(self, jobs: Sequence[Job]) -> None:
        assert self._batch_write is not None
        done = self._tracked([job.tracking for job in jobs if job.tracking is not None])
        batch = self._local.batch = _Batch()
        events: list[Any] = []
        trackings: list[Tracking] = []
        try:
            for job in jobs:
                tracking = job.tracking
                with structlog.contextvars.bound_contextvars(thread_id=job.key), \
                        correlated(job.correlation_id):
                    if tracking is not None and (
                            tracking.application_name, tracking.notification_id) in done:
                        job.duplicate = True
                        job.result = job.on_duplicate() if job.on_duplicate else None
                        continue
                    batch.used = set()
                    watch = self._local.watch = _Watch()
                    try:
                        aggregates, job.result = job.decide()
                    except job.refusals as refusal:
                        job.refused, aggregates = refusal, ()
                    finally:
                        self._local.watch = None
                    if not watch.trusts(aggregates):
                        raise _BatchAbandoned("a job relied on cached state it did not save")
                for aggregate in aggregates:
                    collected = aggregate.collect_events()
                    stamp(collected, job.correlation_id)
                    events.extend(collected)
                    batch.changed[aggregate.id] = aggregate
                if any(batch.changed[i].pending_events for i in batch.used):
                    raise _BatchAbandoned("a job left changes it did not return")
                if tracking is not None and job.refused is None:
                    trackings.append(tracking)
            if events or trackings:
                self.sealing.note_threads(batch.changed.values())
                ids = self._write_sealed(events, trackings)
        except BaseException:  # what the batch changed may be stale: read it again next time
            self._forget(batch.changed)
            raise
        finally:
            self._local.batch = None
        self._remember(batch.changed.values())
        if events:
            self._notify_saved(events, ids)

    def _run_one_by_one(self, jobs: Sequence[Job]) -> None:
        failed: set[str] = set()
        for job in jobs:
            if job.key in failed:
                job.skipped = True
                continue

            def decide(job: Job = job) -> Sequence[Aggregate]:
                return self._decide(job)

            def save(decide: Callable[[], Sequence[Aggregate]] = decide) -> None:
                self.record(decide())

            with structlog.contextvars.bound_contextvars(thread_id=job.key), \
                    correlated(job.correlation_id):
                try:
                    if job.tracking is None:
                        self.retry_on_conflict(save)
                    elif not self.handle_tracked(job.tracking.application_name,
                                                 job.tracking.notification_id, decide):
                        job.duplicate = True
                        job.result = job.on_duplicate() if job.on_duplicate else None
                except job.refusals as refusal:
                    job.refused = refusal
                except Exception as error:
                    job.error = error
                    failed.add(job.key)

    def _tracked(self, trackings: Sequence[Tracking]) -> set[tuple[str, int]]:
        """Which of these positions were recorded already (one query)."""
        if not trackings:
            return set()
        recorder: Any = self.recorder
        datastore = recorder.datastore
        sqlite = self._group is not None  # SQLite (PostgreSQL has no group commit)
        mark = "?" if sqlite else "%s"
        # only placeholders are joined in: the values are bound
        where = " OR ".join([f"(application_name={mark} AND notification_id={mark})"]
                            * len(trackings))
        query: Any = f"SELECT application_name, notification_id FROM tracking WHERE {where}"  # noqa: S608
        if not sqlite:
            from psycopg.sql import SQL, Identifier

            query = SQL("SELECT application_name, notification_id FROM {} WHERE ").format(
                Identifier(datastore.schema or "public", recorder.tracking_table_name)
            ) + SQL(where)
        with reading(datastore) as cursor:
            cursor.execute(query, [value for t in trackings
                                   for value in (t.application_name, t.notification_id)])
            rows = [row.values() if isinstance(row, dict) else row  # PostgreSQL: dict rows
                    for row in cursor.fetchall()]
            return {(str(name), int(position)) for name, position in rows}
