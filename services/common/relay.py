"""The outbox relay: follows a service's notification log and publishes it to JetStream.

Events are saved first and published after, from the log, starting at the last position
recorded as published. An event saved just before a crash is therefore published after the
restart; one published but not yet recorded is published again and dropped by the stream's
de-duplication (``Nats-Msg-Id = <service>:<position>``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from eventsourcing.persistence import IntegrityError, Notification, Tracking
from nats.js import JetStreamContext

from contracts.events import EventEnvelope
from services.common.logging import get_logger
from services.common.store import ServiceApplication

log = get_logger(__name__)

RELAY_TRACKING_NAME = "nats-relay"

ToEnvelope = Callable[[Any, Notification], EventEnvelope | None]


class Relay:
    def __init__(
        self,
        app: ServiceApplication,
        js: JetStreamContext,
        to_envelope: ToEnvelope,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
    ) -> None:
        self._app = app
        self._js = js
        self._to_envelope = to_envelope
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0

    def wake(self) -> None:
        """Thread-safe: called after every save of the application."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._app.on_saved(self.wake)
        while True:
            try:
                while await self.publish_pending() == self._batch_size:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("relay_publish_failed", error=str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()

    async def publish_pending(self) -> int:
        """Publish the next batch of unpublished notifications; returns how many were read."""
        recorder = self._app.process_recorder
        last = await asyncio.to_thread(recorder.max_tracking_id, RELAY_TRACKING_NAME)
        notifications = await asyncio.to_thread(
            recorder.select_notifications, (last or 0) + 1, self._batch_size
        )
        if not notifications:
            return 0
        acks = []
        for notification in notifications:
            event = self._app.mapper.to_domain_event(notification)
            envelope = self._to_envelope(event, notification)
            if envelope is None:
                continue
            acks.append(
                self._js.publish(
                    envelope.subject,
                    envelope.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": envelope.msg_id},
                )
            )
        await asyncio.gather(*acks)
        with contextlib.suppress(IntegrityError):  # another replica's relay got there first
            await asyncio.to_thread(
                recorder.insert_tracking, Tracking(RELAY_TRACKING_NAME, notifications[-1].id)
            )
        self.published += len(acks)
        return len(notifications)
