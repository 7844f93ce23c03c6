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
    """Publishes a service's saved events in order, in batches, one thread hop per batch.

    The position published up to is kept in memory and recorded in the store (``Tracking``
    under ``nats-relay``) at most every ``track_interval`` seconds, when the relay goes idle
    after that, and on :meth:`close`: recording it is bookkeeping, not durability (the events
    are already saved, and re-sent ones are dropped by the stream), so it need not cost a
    write transaction per batch.
    """

    def __init__(
        self,
        app: ServiceApplication,
        js: JetStreamContext,
        to_envelope: ToEnvelope,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        track_interval: float = 0.5,
    ) -> None:
        self._app = app
        self._js = js
        self._to_envelope = to_envelope
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._track_interval = track_interval
        self._wake = asyncio.Event()
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Last notification id published (0: nothing yet); the store may lag behind it.
        self._position = 0
        self._recorded = 0
        self._recorded_at = 0.0
        self._recording: asyncio.Task[None] | None = None
        self.published = 0

    def wake(self) -> None:
        """Thread-safe: called after every save of the application."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._wake_scheduled:
            return
        self._wake_scheduled = True
        loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        self._wake_scheduled = False
        self._wake.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._app.on_saved(self.wake)
        while True:
            try:
                while await self._publish_next(from_recorded=False) == self._batch_size:
                    pass
                self._record_position_soon()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("relay_publish_failed", error=str(error))
            timeout = self._poll_interval
            if self._position > self._recorded:  # come back to record it once it is due
                timeout = min(timeout, self._track_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    async def publish_pending(self) -> int:
        """Publish the next batch after the position recorded in the store; returns how many
        notifications were read."""
        return await self._publish_next(from_recorded=True)

    async def close(self) -> None:
        """Record the position published so far (call when the service stops)."""
        if self._recording is not None:
            with contextlib.suppress(Exception):
                await self._recording
        await self._record_position(force=True)

    async def _publish_next(self, *, from_recorded: bool) -> int:
        read, last, messages = await asyncio.to_thread(self._read_batch, from_recorded)
        if not read:
            return 0
        await asyncio.gather(*(
            self._js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            for subject, data, msg_id in messages
        ))
        self._position = max(self._position, last)
        self.published += len(messages)
        return read

    def _read_batch(self, from_recorded: bool) -> tuple[int, int, list[tuple[str, bytes, str]]]:
        """In a worker thread: the next notifications, already encoded as messages."""
        recorder = self._app.process_recorder
        recorded = recorder.max_tracking_id(RELAY_TRACKING_NAME) or 0
        start = recorded if from_recorded else max(recorded, self._position)
        notifications = recorder.select_notifications(start + 1, self._batch_size)
        messages = []
        for notification in notifications:
            event = self._app.mapper.to_domain_event(notification)
            envelope = self._to_envelope(event, notification)
            if envelope is not None:
                messages.append((envelope.subject, envelope.model_dump_json().encode(),
                                 envelope.msg_id))
        last = notifications[-1].id if notifications else start
        return len(notifications), last, messages

    def _record_position_soon(self) -> None:
        """Once due, record the position in the background: publishing does not wait on it."""
        if self._recording is not None and not self._recording.done():
            return
        if self._position <= self._recorded:
            return
        if asyncio.get_running_loop().time() - self._recorded_at < self._track_interval:
            return
        self._recording = asyncio.create_task(self._record_position(force=True))

    async def _record_position(self, *, force: bool) -> None:
        position = self._position
        if position <= self._recorded:
            return
        loop = asyncio.get_running_loop()
        if not force and loop.time() - self._recorded_at < self._track_interval:
            return
        try:
            await asyncio.to_thread(self._app.insert_tracking,
                                    Tracking(RELAY_TRACKING_NAME, position))
        except IntegrityError:  # another replica's relay got there first
            pass
        except Exception as error:  # tried again when next due; re-sends are de-duplicated
            log.warning("relay_position_not_recorded", position=position, error=str(error))
            self._recorded_at = loop.time()
            return
        self._recorded = position
        self._recorded_at = loop.time()
