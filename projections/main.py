"""Wiring of the projections service: the events consumer, the views database, the query
responders (``hitl.q.*``) and the rebuild request.

The consumer resumes from the stream sequence recorded with the views (not from the durable
consumer's own acknowledgements), so after a crash the events of an interrupted batch are
applied again before any later event, and a batch whose database write fails for a reason that
may pass (the database busy or unreachable) is retried in place: a view never sees an event
before the ones that came earlier in the stream.

One event the views cannot take does not stop them: a batch that fails otherwise is applied
again one event at a time; an event that fails on its own ``poison_attempts`` times is
quarantined (``hitl.dlq.projections`` in ``HITL_DLQ``) and passed over (its stream sequence
recorded as applied), and so is a message that is not an event envelope at all. Nothing is
passed over before its quarantine record is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from faststream import ExceptionMiddleware
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from contracts import subjects
from contracts.events import EventEnvelope
from contracts.queries import (
    ADMIN_REBUILD,
    Q_ANALYTICS,
    Q_AUDIT,
    AnalyticsQuery,
    AnalyticsReply,
    AuditQuery,
    AuditReply,
    MineQuery,
    PendingQuery,
    PendingReply,
    QueryError,
    RebuildProgress,
    RebuildReply,
    RebuildRequest,
    ThreadQuery,
    ThreadReply,
    ThreadsQuery,
    ThreadsReply,
    TimelineQuery,
    TimelineReply,
)
from contracts.subjects import (
    InvalidPrincipalError,
    InvalidThreadIdError,
    check_thread_id,
    principal_of_token,
)
from hitlflow.settings import Settings
from projections import analytics, audit_trail, thread_status
from projections.db import ViewDatabase, epoch, open_view_database
from projections.erasure import redact_thread
from projections.lease import Lease, LeaseLostError
from projections.projector import Projector, UnknownViewError, select_views
from projections.rebuild import Progress, RebuildResult, rebuild_from_stores
from services.common import metrics
from services.common.clock import Clock, SystemClock
from services.common.consumer import (
    PoisonMessageError,
    PullConsumer,
    RetryPolicy,
    Subscription,
    decode_envelope,
    stream_seq,
)
from services.common.health import Health, Monitor, register, unregister
from services.common.identity import Directory, IdentityError
from services.common.logging import get_logger
from services.common.messaging import check_server, ensure_streams, make_broker
from services.common.quarantine import QuarantineError, describe, quarantine
from services.common.runtime import cancel_and_wait, consumer_gauges, nats_connected
from services.common.store import postgres_ddl_lock
from services.common.threads import in_thread

log = get_logger(__name__)

DURABLE = "projections"
QUEUE = "projections"
#: Longest a read-your-writes query waits for the view to catch up.
CATCH_UP_TIMEOUT = 5.0
#: Longest pause between two attempts at a batch the database refused.
MAX_RETRY_DELAY = 5.0

Applied = Callable[[Sequence[EventEnvelope], float], None]


def _query_failed(error: Exception) -> dict[str, Any]:
    """The reply to a query that failed while it was answered: the asker is told, at once,
    rather than left to wait for a reply that never comes."""
    log.error("query_failed", error=repr(error))
    return {"error": QueryError(error=f"the query failed: {type(error).__name__}: {error}"[:500],
                                code="query_failed").model_dump(mode="json")}


def _subject_thread(message: Any) -> str:
    """The thread a query's subject names: its last part."""
    return str(message.raw_message.subject).rsplit(".", 1)[-1]


def _other_thread(reply: type[BaseModel], subject_thread: str,
                  body_thread: str | None) -> dict[str, Any] | None:
    """The reply to a query about one thread whose subject names no valid thread, or whose
    body names another thread than its subject; None when it is fine."""
    try:
        check_thread_id(subject_thread)
    except InvalidThreadIdError as error:
        problem = f"invalid query: the subject names no thread: {error}"
    else:
        if body_thread in (None, subject_thread):
            return None
        problem = (f"invalid query: it names thread {body_thread!r} but was sent for thread "
                   f"{subject_thread!r}; a query about one thread is answered for the thread "
                   "its subject names")
    return reply.model_validate({"error": QueryError(error=problem, code="invalid_query")}
                                ).model_dump(mode="json")


def _invalid(reply: type[BaseModel], error: ValidationError, **fields: Any) -> dict[str, Any]:
    """The reply to a query that breaks its model: which field, and what was expected."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}"
                         for e in error.errors()[:5])
    return reply.model_validate({
        **fields, "error": QueryError(error=f"invalid query: {problems}", code="invalid_query"),
    }).model_dump(mode="json")


class ProjectionsRuntime:
    def __init__(self, settings: Settings, *, nats_url: str | None = None,
                 data_dir: Path | None = None, clock: Clock | None = None,
                 batch_size: int = 256, on_applied: Applied | None = None) -> None:
        self.settings = settings
        #: Times an event is tried on its own before it is quarantined.
        self.poison_attempts = settings.poison_attempts
        self.nats_url = nats_url or settings.resolved_nats_url()
        self.data_dir = data_dir
        self.clock = clock or SystemClock()
        self.batch_size = batch_size
        #: Called after each committed batch with its events and the commit time (epoch s).
        self.on_applied = on_applied
        with contextlib.ExitStack() as ddl:
            if settings.persistence == "postgres" and settings.postgres_dsn:
                ddl.enter_context(postgres_ddl_lock(settings.postgres_dsn))
            self.db: ViewDatabase = open_view_database(settings, data_dir)
            self.projector = Projector(self.db)
            #: Any number of replicas answer queries; the one holding the lease applies events.
            self.lease = Lease(self.db, settings.projections_lease_ttl)
        #: Who the principals are (for "my requests"); without one, authorization is off.
        self.directory = Directory(settings.identity_file)
        self.broker: NatsBroker | None = None
        self._task: asyncio.Task[None] | None = None
        self._consumer: PullConsumer | None = None  # the leader's, while it consumes
        self._leader: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._lease_changed = asyncio.Event()
        self._applied = asyncio.Condition()
        self._apply_lock = asyncio.Lock()
        #: (loop time, highest position applied per service): where compaction may go up to
        #: once ``projections_compact_after`` seconds have passed.
        self._marks: list[tuple[float, dict[str, int]]] = []
        self._marked_at = -1e18
        self.health = Health("projections",
                             stale_after=max(60.0, settings.health_interval * 6))
        self.monitor = Monitor(self.health, settings.health_interval,
                               [self._check_views, self._check_consumer])

    async def start(self) -> None:
        stale = self.projector.stale()
        if stale:
            log.info("views_schema_changed", views=stale)
            await self.rebuild(stale)
        broker = make_broker(self.nats_url, name="hitlflow-projections",
                             **self.settings.nats_auth(),
                             middlewares=(ExceptionMiddleware(
                                 publish_handlers={Exception: _query_failed}),))
        self.broker = broker
        self._register(broker)
        await broker.connect()
        check_server(broker.connection, self.nats_url)
        js = broker.connection.jetstream()
        await ensure_streams(js, self.settings.stream_replicas)
        await broker.start()
        self._leader = asyncio.create_task(self._lead(js), name="projections-lease")
        self.health.live("nats", lambda: nats_connected(broker))
        self.health.live("consumers", self._consuming_state)
        register(self.health)
        self._monitor = asyncio.create_task(self.monitor.run(), name="projections-health")
        log.info("service_started", service="projections", nats_url=self.nats_url,
                 views_database=self.db.name)

    @property
    def leading(self) -> bool:
        """Does this replica hold the lease and apply events to the views?"""
        return self._task is not None and not self._task.done()

    def _consuming_state(self) -> tuple[bool, str]:
        if self.leading:
            return True, "applying events (holds the lease)"
        if self._task is None:
            return True, "standby: another replica holds the lease; answering queries"
        return False, "the events consumer stopped"

    async def _lead(self, js: JetStreamContext) -> None:
        """Hold the single-writer lease (projections/lease.py): consume while it is held,
        stop at once when it is lost, take it over when it expires."""
        loop = asyncio.get_running_loop()
        renewed_at = -1e18
        while True:
            try:
                held = await in_thread(self.lease.acquire)
                renewed_at = loop.time()
            except Exception as error:  # the database unreachable: keep it while it lasts
                held = self.leading and loop.time() - renewed_at < self.lease.ttl
                log.warning("projections_lease_not_renewed", error=repr(error), held=held)
            if held and not self.leading:
                if self._task is not None:  # it ended on its own (e.g. NATS): start again
                    if not self._task.cancelled() and self._task.exception() is not None:
                        log.warning("projections_consumer_ended",
                                    error=repr(self._task.exception()), detail="restarted")
                    await cancel_and_wait([self._task])
                log.info("projections_leading", epoch=self.lease.epoch,
                         holder=self.lease.holder)
                self._marks.clear()
                self._task = asyncio.create_task(self._consume(js), name=DURABLE)
            elif not held and self._task is not None:
                log.warning("projections_lease_lost", holder=self.lease.holder,
                            detail="another replica applies the events now")
                await cancel_and_wait([self._task])
                self._task = None
            metrics.PROJECTIONS_LEADER.set(1 if self.leading else 0)
            if held:
                await self._compact_when_due()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease.ttl / 3):
                    await self._lease_changed.wait()
            self._lease_changed.clear()

    async def _compact_when_due(self) -> None:
        """Every so often, note how far each service's events are applied; fold the tracking
        rows up to a note older than ``projections_compact_after`` (Projector.compact)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        after = self.settings.projections_compact_after
        if now - self._marked_at < min(after / 4, 60.0):
            return
        self._marked_at = now
        try:
            self._marks.append((now, await in_thread(self.projector.max_applied)))
            due = [mark for mark in self._marks if now - mark[0] >= after]
            if not due or not due[-1][1]:
                return
            upto = due[-1][1]
            self._marks = [mark for mark in self._marks if now - mark[0] < after]
            async with self._apply_lock:
                left = await in_thread(self.projector.compact, upto, self.lease.check)
        except LeaseLostError:
            self._lease_changed.set()
            return
        except Exception as error:
            log.warning("tracking_not_compacted", error=repr(error))
            return
        metrics.VIEW_TRACKING_ROWS.set(left)
        log.info("tracking_compacted", upto=upto, rows_left=left)

    async def _check_views(self) -> None:
        """The views database answers; the backlog of open requests."""
        try:
            row = await in_thread(
                self.db.one, "SELECT COUNT(*) AS n, MIN(created_at) AS oldest"
                " FROM thread_requests WHERE status = 'pending'")
        except Exception as error:
            self.health.set("store", False, repr(error)[:300])
            raise
        self.health.set("store", True)
        if row is not None:
            metrics.PENDING_REQUESTS.set(int(row["n"] or 0))
            oldest = row["oldest"]
            age = self.clock.now().timestamp() - epoch(oldest) if oldest else 0.0
            metrics.OLDEST_PENDING_AGE.set(max(age, 0.0))

    async def _check_consumer(self) -> None:
        if self.broker is not None and self.leading:
            await consumer_gauges(self.broker.connection.jetstream(),
                                  [self.events_subscription()])

    async def stop(self) -> None:
        unregister(self.health)
        for task in (self._monitor, self._leader, self._task):
            if task is not None:
                await cancel_and_wait([task])
        with contextlib.suppress(Exception):  # a standby takes over at once
            await in_thread(self.lease.release)
        self._task = self._leader = self._monitor = None
        metrics.PROJECTIONS_LEADER.set(0)
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.stop()
            self.broker = None
        async with self._apply_lock:  # a batch or rebuild in a worker thread finishes first
            await in_thread(self.db.close)

    # -- consuming ----------------------------------------------------------------------------

    def events_subscription(self) -> Subscription:
        """The durable consumer the views are fed from: every event, in batches that linger
        ``projections_linger`` seconds for company (one commit for several events), except
        while a query waits to read its writes (:meth:`caught_up`)."""
        return Subscription(subjects.EVENTS_ALL, subjects.EVENTS_STREAM, DURABLE,
                            linger=self.settings.projections_linger)

    async def _consume(self, js: JetStreamContext) -> None:
        self._consumer = PullConsumer(js, self.events_subscription(),
                                      batch_size=self.batch_size,
                                      handle_messages=self.apply_batch,
                                      policy=RetryPolicy(self.poison_attempts,
                                                         self.settings.redelivery_delay),
                                      ack_wait=self.settings.ack_wait,
                                      make=functools.partial(self._make_consumer, js))
        await self._consumer.run()

    async def _make_consumer(self, js: JetStreamContext) -> None:
        """The durable consumer, made anew to start where the views are, whatever it had
        acknowledged before (a crash, another replica's lease, its deletion)."""
        applied_seq = await in_thread(self.db.consumer_position, DURABLE)
        config = ConsumerConfig(
            durable_name=DURABLE, filter_subject=subjects.EVENTS_ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if applied_seq else DeliverPolicy.ALL,
            opt_start_seq=applied_seq + 1 if applied_seq else None,
            ack_policy=AckPolicy.ALL, ack_wait=self.settings.ack_wait, max_deliver=-1,
            max_ack_pending=max(1000, self.batch_size * 4),
        )
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(subjects.EVENTS_STREAM, DURABLE)
        await js.add_consumer(subjects.EVENTS_STREAM, config=config)

    async def apply_batch(self, messages: list[Msg]) -> None:
        """Apply a fetched batch, in stream order (see the module's docstring for failures).
        A batch refused because this replica lost the lease is left unacknowledged: the
        replica that holds it now resumes from what the views recorded."""
        try:
            await self._apply_batch(messages)
        except LeaseLostError as error:
            log.warning("projections_batch_refused", error=str(error))
            self._lease_changed.set()

    async def _apply_batch(self, messages: list[Msg]) -> None:
        if not messages:
            return
        async with self._apply_lock:
            decoded: list[tuple[Msg, EventEnvelope]] = []
            for msg in messages:
                try:
                    decoded.append((msg, decode_envelope(msg.data)))
                except PoisonMessageError as error:
                    await self._in_place(functools.partial(self._quarantine, msg, None, error))
            last_seq = stream_seq(messages[-1])
            envelopes = [envelope for _, envelope in decoded]
            try:
                await self._in_place(lambda: self._apply(envelopes, last_seq))
            except LeaseLostError:
                raise
            except Exception as error:  # not an outage: find the event the views cannot take
                log.warning("projection_batch_failed", error=repr(error), events=len(envelopes),
                            detail="applying its events one at a time")
                envelopes = await self._apply_one_by_one(decoded, last_seq)
            committed = time.time()
        with contextlib.suppress(Exception):  # unacknowledged is fine: the views know
            await messages[-1].ack()
        if self.on_applied is not None:
            self.on_applied(envelopes, committed)
        async with self._applied:
            self._applied.notify_all()

    async def _apply(self, envelopes: Sequence[EventEnvelope], stream_seq: int) -> None:
        # a local SQLite commit is applied on the loop (no thread hop per batch), unless
        # another process (an offline rebuild) is writing: then in a thread, waiting
        if self.db.local:
            try:
                self.projector.apply(envelopes, consumer=DURABLE, stream_seq=stream_seq,
                                     careful=False, guard=self.lease.check, wait=False)
                return
            except Exception as error:
                if not self.db.is_transient(error):
                    raise
        await in_thread(self.projector.apply, envelopes, consumer=DURABLE,
                                stream_seq=stream_seq, careful=False, guard=self.lease.check)

    async def _skip(self, stream_seq: int) -> None:
        await in_thread(self.projector.skip, DURABLE, stream_seq, self.lease.check)

    async def _apply_one_by_one(self, decoded: Sequence[tuple[Msg, EventEnvelope]],
                                last_seq: int) -> list[EventEnvelope]:
        """Apply each event in its own transaction; one that keeps failing is quarantined and
        passed over. Returns the events applied."""
        applied: list[EventEnvelope] = []
        for msg, envelope in decoded:
            seq = stream_seq(msg)
            for attempt in range(1, self.poison_attempts + 1):
                try:
                    await self._in_place(functools.partial(self._apply, [envelope], seq))
                except LeaseLostError:
                    raise
                except Exception as error:
                    if attempt < self.poison_attempts:
                        log.warning("event_retry", thread_id=envelope.thread_id,
                                    event_type=envelope.event_type, service=envelope.service,
                                    position=envelope.position, attempt=attempt,
                                    error=repr(error))
                        await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), MAX_RETRY_DELAY))
                        continue
                    reason = f"{describe(error)} (failed {attempt} times)"
                    await self._in_place(functools.partial(self._quarantine, msg, envelope,
                                                           reason))
                    await self._in_place(functools.partial(self._skip, seq))
                else:
                    applied.append(envelope)
                break
        if not decoded or stream_seq(decoded[-1][0]) != last_seq:  # ended with non-envelopes
            await self._in_place(functools.partial(self._skip, last_seq))
        return applied

    async def _in_place(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until it does not fail for a reason that may pass (the views database
        busy or unreachable, NATS unreachable for a quarantine), waiting longer each time;
        any other error is raised."""
        delay = 0.1
        while True:
            try:
                await step()
                return
            except Exception as error:
                if not (isinstance(error, QuarantineError | OSError | TimeoutError)
                        or self.db.is_transient(error)):
                    raise
                log.warning("projection_retry", error=repr(error), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _quarantine(self, msg: Msg, envelope: EventEnvelope | None,
                          reason: BaseException | str) -> None:
        if self.broker is None:
            raise QuarantineError("not connected to NATS")
        await quarantine(self.broker.connection, source=DURABLE, subject=msg.subject,
                         data=msg.data, reason=reason, stream_seq=stream_seq(msg),
                         thread_id=envelope.thread_id if envelope else msg.subject.rsplit(
                             ".", 1)[-1], headers=msg.headers)

    async def caught_up(self, after: dict[str, int], timeout: float = CATCH_UP_TIMEOUT) -> bool:
        """Wait until the thread_status view has applied ``after`` (service → position)."""

        def reached() -> bool:
            return all(self.db.position(thread_status.NAME, service) >= position
                       for service, position in after.items())

        if not after:
            return True
        if not self.leading:  # a standby: another replica applies; read what is there
            return await self._polled(reached, timeout)
        with self._consumer.hurried() if self._consumer else contextlib.nullcontext():
            async with self._applied:
                try:
                    await asyncio.wait_for(self._applied.wait_for(reached), timeout)
                except TimeoutError:
                    return False
        return True

    async def _polled(self, reached: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await in_thread(reached):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # -- rebuilding ---------------------------------------------------------------------------

    async def rebuild(self, names: Sequence[str] = (),
                      progress_subject: str | None = None) -> RebuildResult:
        """Drop the views named (all when none) and replay every event store into them;
        :class:`RebuildProgress` messages go to ``progress_subject`` while it runs."""
        views = [view.name for view in select_views(names)]  # unknown names: refused first
        progress = self._progress_publisher(progress_subject, views)
        async with self._apply_lock:  # live batches wait; queries go on reading the old view
            result = await in_thread(self._rebuild, names, progress)
        async with self._applied:
            self._applied.notify_all()
        return result

    def _rebuild(self, names: Sequence[str], progress: Progress | None) -> RebuildResult:
        return rebuild_from_stores(self.db, self.projector, self.settings, names, self.data_dir,
                                   progress=progress)

    def _progress_publisher(self, subject: str | None, views: list[str]) -> Progress | None:
        """A progress callback (called in the rebuild's thread) that publishes to ``subject``
        from the event loop, in order, without waiting for anything."""
        if subject is None or self.broker is None:
            return None
        connection = self.broker.connection
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        sending: set[asyncio.Task[None]] = set()  # held until sent

        def start(data: bytes) -> None:
            task = loop.create_task(send(data))
            sending.add(task)
            task.add_done_callback(sending.discard)

        async def send(data: bytes) -> None:
            with contextlib.suppress(Exception):  # progress is a courtesy: never fail for it
                await connection.publish(subject, data)

        def progress(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            message = RebuildProgress(views=views, done=done, total=total,
                                      rate=round(done / elapsed, 1) if elapsed > 0 else 0.0,
                                      elapsed=round(elapsed, 3))
            data = message.model_dump_json().encode()
            loop.call_soon_threadsafe(start, data)

        return progress

    # -- queries ------------------------------------------------------------------------------

    def _register(self, broker: NatsBroker) -> None:
        db = self.db

        @broker.subscriber(subjects.erase_subject("projections"))
        async def on_erase(body: dict[str, Any]) -> dict[str, Any]:
            """Erase a thread's personal values from the views (``hitlflow erase``)."""
            try:
                thread_id = check_thread_id(str((body or {}).get("thread_id")))
            except InvalidThreadIdError as error:
                return {"ok": False, "error": f"invalid erase request: {error}"}
            async with self._apply_lock:  # no live batch folds the thread meanwhile
                events = await in_thread(redact_thread, db, thread_id)
            log.info("thread_erased", thread_id=thread_id, service="projections", events=events)
            return {"ok": True, "service": "projections", "events": events}

        @broker.subscriber(f"{subjects.Q_THREAD}.*", queue=QUEUE)
        async def on_thread(body: dict[str, Any], message: NatsMessage) -> dict[str, Any]:
            thread_id = _subject_thread(message)
            try:
                query = ThreadQuery.model_validate(body)
            except ValidationError as error:
                return _invalid(ThreadReply, error)
            refusal = _other_thread(ThreadReply, thread_id, query.thread_id)
            if refusal is not None:
                return refusal
            await self.caught_up(query.after)
            view = await in_thread(thread_status.thread, db, thread_id)
            if view is None:
                return ThreadReply(error=QueryError(
                    error=f"unknown thread {thread_id!r}")).model_dump(mode="json")
            return ThreadReply(thread=view).model_dump(mode="json")

        @broker.subscriber(f"{subjects.Q_MINE}.*", queue=QUEUE)
        async def on_mine(body: dict[str, Any], message: NatsMessage) -> dict[str, Any]:
            try:
                query = MineQuery.model_validate(body or {})
                principal = principal_of_token(_subject_thread(message))
                identity = self.directory.resolve(principal, asserted=query.principal,
                                                  groups=query.groups)
            except ValidationError as error:
                return _invalid(PendingReply, error)
            except (InvalidPrincipalError, IdentityError) as error:
                return PendingReply(error=QueryError(
                    error=f"invalid query: {error}", code="forbidden")).model_dump(mode="json")
            items, following = await in_thread(
                thread_status.pending_page, db, None, query.limit, query.after,
                person=identity.person, groups=identity.groups)
            return PendingReply(pending=items, next=following).model_dump(mode="json")

        @broker.subscriber(f"{subjects.Q_TIMELINE}.*", queue=QUEUE)
        async def on_timeline(body: dict[str, Any], message: NatsMessage) -> dict[str, Any]:
            thread_id = _subject_thread(message)
            try:
                query = TimelineQuery.model_validate(body)
            except ValidationError as error:
                return _invalid(TimelineReply, error)
            refusal = _other_thread(TimelineReply, thread_id, query.thread_id)
            if refusal is not None:
                return refusal
            await self.caught_up(query.after_positions)

            def read() -> TimelineReply:
                view = thread_status.thread(db, thread_id)
                if view is None:
                    return TimelineReply(error=QueryError(
                        error=f"unknown thread {thread_id!r}"))
                events, following = thread_status.timeline(db, thread_id, query.after,
                                                           query.limit)
                return TimelineReply(thread=view, events=events, next=following)

            return (await in_thread(read)).model_dump(mode="json")

        self._register_lists_and_reports(broker)

    def _register_lists_and_reports(self, broker: NatsBroker) -> None:
        db = self.db

        @broker.subscriber(subjects.Q_THREADS, queue=QUEUE)
        async def on_threads(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = ThreadsQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(ThreadsReply, error)
            views, following = await in_thread(
                thread_status.threads, db, query.status, query.graph_name, query.limit,
                query.after)
            return ThreadsReply(threads=views, next=following).model_dump(mode="json")

        async def pending(query: PendingQuery) -> dict[str, Any]:
            items, following = await in_thread(
                thread_status.pending_page, db, query.thread_id, query.limit, query.after)
            return PendingReply(pending=items, next=following).model_dump(mode="json")

        @broker.subscriber(subjects.Q_PENDING, queue=QUEUE)
        async def on_pending(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = PendingQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(PendingReply, error)
            return await pending(query)

        @broker.subscriber(f"{subjects.Q_PENDING}.*", queue=QUEUE)
        async def on_thread_pending(body: dict[str, Any],
                                    message: NatsMessage) -> dict[str, Any]:
            thread_id = _subject_thread(message)
            try:
                query = PendingQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(PendingReply, error)
            refusal = _other_thread(PendingReply, thread_id, query.thread_id)
            if refusal is not None:
                return refusal
            return await pending(query.model_copy(update={"thread_id": thread_id}))

        @broker.subscriber(Q_AUDIT, queue=QUEUE)
        async def on_audit(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = AuditQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(AuditReply, error)
            entries, following = await in_thread(audit_trail.entries, db, query)
            return AuditReply(entries=entries, next=following).model_dump(mode="json")

        @broker.subscriber(Q_ANALYTICS, queue=QUEUE)
        async def on_analytics(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = AnalyticsQuery.model_validate(body or {})
            except ValidationError as error:
                return _invalid(AnalyticsReply, error)
            reply = await in_thread(analytics.report, db, query, self.clock.now())
            return reply.model_dump(mode="json")

        @broker.subscriber(ADMIN_REBUILD, queue=QUEUE)
        async def on_rebuild(body: dict[str, Any]) -> dict[str, Any]:
            try:
                request = RebuildRequest.model_validate(body or {})
                result = await self.rebuild(request.views, request.progress_subject)
            except ValidationError as error:
                return _invalid(RebuildReply, error, ok=False)
            except UnknownViewError as error:
                return RebuildReply(ok=False, error=QueryError(
                    error=str(error), code="invalid_query")).model_dump(mode="json")
            except Exception as error:
                log.error("rebuild_failed", error=repr(error))
                return RebuildReply(ok=False, error=QueryError(
                    error=f"rebuild failed: {error}", code="rebuild_failed")).model_dump(
                        mode="json")
            return RebuildReply(
                ok=True, views=result.views, read=result.read, events=result.events,
                seconds=round(result.seconds, 3), events_per_second=round(result.rate, 1),
            ).model_dump(mode="json")


def build(settings: Settings, *, nats_url: str | None = None, data_dir: Path | None = None,
          clock: Clock | None = None) -> ProjectionsRuntime:
    return ProjectionsRuntime(settings, nats_url=nats_url, data_dir=data_dir, clock=clock)
