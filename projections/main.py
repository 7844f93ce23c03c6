"""Wiring of the projections service: event consumer, views database, query responders."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts import subjects
from contracts.events import EventEnvelope
from contracts.queries import (
    PendingQuery,
    PendingReply,
    QueryError,
    ThreadQuery,
    ThreadReply,
    ThreadsQuery,
    ThreadsReply,
)
from hitlflow.settings import Settings
from projections import thread_status
from projections.db import ViewDatabase
from projections.projector import Projector
from services.common.consumer import PullConsumer, Subscription, decode_envelope
from services.common.logging import get_logger
from services.common.messaging import ensure_streams, make_broker

log = get_logger(__name__)

DURABLE = "projections"
#: Longest a read-your-writes query waits for the view to catch up.
CATCH_UP_TIMEOUT = 5.0


class ProjectionsRuntime:
    def __init__(self, settings: Settings, *, nats_url: str | None = None,
                 data_dir: Path | None = None) -> None:
        self.settings = settings
        self.nats_url = nats_url or settings.resolved_nats_url()
        directory = data_dir or settings.home / "stores"
        self.db = ViewDatabase(directory / "projections.sqlite")
        self.projector = Projector(self.db)
        self.broker: NatsBroker | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied = asyncio.Condition()

    async def start(self) -> None:
        broker = make_broker(self.nats_url, name="hitlflow-projections",
                             user=self.settings.nats_user, password=self.settings.nats_password,
                             token=self.settings.nats_token)
        self.broker = broker
        self._register(broker)
        await broker.connect()
        js = broker.connection.jetstream()
        await ensure_streams(js, self.settings.stream_replicas)
        await broker.start()
        consumer = PullConsumer(
            js, Subscription(subjects.EVENTS_ALL, subjects.EVENTS_STREAM, DURABLE, _unused),
            batch_size=256, handle_messages=self.apply_batch,
        )
        self._task = asyncio.create_task(consumer.run(), name=DURABLE)
        log.info("service_started", service="projections", nats_url=self.nats_url)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.stop()
            self.broker = None
        self.db.close()

    async def apply_batch(self, messages: list[Msg]) -> None:
        good: list[tuple[Msg, EventEnvelope]] = []
        for msg in messages:
            try:
                good.append((msg, decode_envelope(msg.data)))
            except ValueError as error:
                log.error("event_rejected", consumer=DURABLE, subject=msg.subject,
                          reason=str(error))
                await msg.term()
        try:
            await asyncio.to_thread(self.projector.apply, [env for _, env in good])
        except Exception as error:
            log.warning("projection_retry", error=repr(error))
            for msg, _ in good:
                await msg.nak(delay=1.0)
            return
        for msg, _ in good:
            await msg.ack()
        async with self._applied:
            self._applied.notify_all()

    async def caught_up(self, after: dict[str, int], timeout: float = CATCH_UP_TIMEOUT) -> bool:
        """Wait until the thread_status view has applied ``after`` (service → position)."""

        def reached() -> bool:
            return all(self.db.position(thread_status.NAME, service) >= position
                       for service, position in after.items())

        if not after:
            return True
        async with self._applied:
            try:
                await asyncio.wait_for(self._applied.wait_for(reached), timeout)
            except TimeoutError:
                return False
        return True

    def _register(self, broker: NatsBroker) -> None:
        db = self.db

        @broker.subscriber(subjects.Q_THREAD, queue="projections")  # type: ignore[untyped-decorator]
        async def on_thread(body: dict[str, Any]) -> dict[str, Any]:
            try:
                query = ThreadQuery.model_validate(body)
            except ValidationError as error:
                return ThreadReply(error=QueryError(error=str(error), code="invalid_query")
                                   ).model_dump(mode="json")
            await self.caught_up(query.after)
            view = await asyncio.to_thread(thread_status.thread, db, query.thread_id)
            if view is None:
                return ThreadReply(error=QueryError(
                    error=f"unknown thread {query.thread_id!r}")).model_dump(mode="json")
            return ThreadReply(thread=view).model_dump(mode="json")

        @broker.subscriber(subjects.Q_THREADS, queue="projections")  # type: ignore[untyped-decorator]
        async def on_threads(body: dict[str, Any]) -> dict[str, Any]:
            query = ThreadsQuery.model_validate(body or {})
            views = await asyncio.to_thread(thread_status.threads, db, query.status,
                                            query.graph_name, query.limit)
            return ThreadsReply(threads=views).model_dump(mode="json")

        @broker.subscriber(subjects.Q_PENDING, queue="projections")  # type: ignore[untyped-decorator]
        async def on_pending(body: dict[str, Any]) -> dict[str, Any]:
            query = PendingQuery.model_validate(body or {})
            items = await asyncio.to_thread(thread_status.pending, db, query.thread_id,
                                            query.limit)
            return PendingReply(pending=items).model_dump(mode="json")


async def _unused(msg: Msg) -> None:  # batches go to apply_batch instead
    raise NotImplementedError


def build(settings: Settings, *, nats_url: str | None = None,
          data_dir: Path | None = None) -> ProjectionsRuntime:
    return ProjectionsRuntime(settings, nats_url=nats_url, data_dir=data_dir)
