"""The outbox relay: follows a service's notification log and publishes it to JetStream.

Events are saved first and published after, from the log, starting at the last position
recorded as published. An event saved just before a crash is therefore published after the
restart; one published but not yet recorded is published again and dropped by the stream's
de-duplication (``Nats-Msg-Id = <service>:<position>``).

An event that can never be published does not hold back the ones after it: one larger than
the server takes in a message, one whose envelope cannot be built (or that cannot be read from
the store), and one the stream refuses for good (e.g. larger than its ``max_msg_size``) is
quarantined (``relay-<service>`` in ``HITL_DLQ``, with ``Hitl-Ref = <service>:<position>``: the
event itself stays in the store) and passed over. The position moves past it only once that
record is stored; no answer in time, or no stream (503), is an outage: the batch is tried
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import IntegrityError, Tracking
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.events import EventEnvelope
from services.common import metrics
from services.common.correlation import headers_of
from services.common.logging import get_logger
from services.common.quarantine import HEADER_ROOM, describe, is_transient, quarantine
from services.common.store import Saved, ServiceApplication
from services.common.threads import in_thread

log = get_logger(__name__)

RELAY_TRACKING_NAME = "nats-relay"

#: Domain event and its notification id (its position in the log) → its wire envelope, or
#: None for an internal event.
ToEnvelope = Callable[[Any, int], EventEnvelope | None]

#: Saved events held for publishing straight from memory, at most (beyond: read from the store).
MAX_FRESH = 10_000
#: JetStream refusals of one message that no retry can help (``err_code``): larger than the
#: stream's max_msg_size, headers over 64 KiB.
REFUSED_FOR_GOOD = {10054, 10097}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a worker thread
        return None


#: A message to publish: subject, data, Nats-Msg-Id (None: none), other headers.
Outgoing = tuple[str, bytes, str | None, dict[str, str]]


class PublishError(RuntimeError):
    """JetStream did not store every message of a batch (no stream, or no answer in time)."""


class AckedPublisher:
    """Publishes batches to JetStream and waits until the stream has stored every message.

    All acknowledgements come back to one subscription (``<inbox>.<batch>.<index>``): no
    request, token, future and timer per message, which ``JetStreamContext.publish`` costs.
    An acknowledgement of an older, abandoned batch is ignored.

    A message the stream refuses for good (:data:`REFUSED_FOR_GOOD`) is returned with the
    reason; any other refusal, or an acknowledgement missing in time, raises
    :class:`PublishError`.
    """

    def __init__(self, js: JetStreamContext, timeout: float = 5.0) -> None:
        self._nc: Any = js._nc
        self._timeout = timeout
        self._prefix = ""
        self._sub: Any = None
        self._batches = itertools.count(1)
        self._batch = 0
        self._expected = 0
        self._acked: set[int] = set()
        self._errors: list[str] = []
        self._refused: dict[int, str] = {}
        self._done: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()  # one batch in flight at a time

    @property
    def max_payload(self) -> int:
        """The largest message (headers and body) the server takes, in bytes."""
        return int(self._nc.max_payload)

    async def publish(self, messages: Sequence[Outgoing]) -> dict[int, str]:
        """Publish ``(subject, data, msg_id, headers)`` in order; return once all are stored,
        with the messages refused for good (index → reason)."""
        if not messages:
            return {}
        async with self._lock:
            return await self._publish(messages)

    async def _publish(self, messages: Sequence[Outgoing]) -> dict[int, str]:
        if self._sub is None:
            self._prefix = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._prefix}.>", cb=self._on_ack)
        batch = self._batch = next(self._batches)
        self._expected, self._acked, self._errors, self._refused = len(messages), set(), [], {}
        done = self._done = asyncio.get_running_loop().create_future()
        for index, (subject, data, msg_id, extra) in enumerate(messages):
            await self._nc.publish(subject, data, reply=f"{self._prefix}.{batch}.{index}",
                                   headers={"Nats-Msg-Id": msg_id, **extra} if msg_id
                                   else extra)
        try:
            async with asyncio.timeout(self._timeout):
                await done
        except TimeoutError:
            raise PublishError(f"{self._expected - len(self._acked)} of {self._expected} "
                               f"events not acknowledged within {self._timeout:g} s") from None
        finally:
            self._done = None
        if self._errors:
            raise PublishError("; ".join(self._errors[:3]))
        return dict(self._refused)

    async def _on_ack(self, msg: Msg) -> None:
        _, batch, index = msg.subject.rsplit(".", 2)
        done = self._done
        if done is None or done.done() or int(batch) != self._batch:
            return
        if msg.headers and msg.headers.get("Status") == "503":
            self._errors.append("no stream answered (503)")
        elif b'"error"' in msg.data:
            try:
                error = json.loads(msg.data)["error"]
                code, text = error.get("err_code"), str(error.get("description", error))
            except (ValueError, KeyError, TypeError, AttributeError):
                code, text = None, msg.data.decode(errors="replace")[:200]
            if code in REFUSED_FOR_GOOD:
                self._refused[int(index)] = f"refused by the stream: {text} (err_code {code})"
            else:
                self._errors.append(text)
        self._acked.add(int(index))
        if len(self._acked) >= self._expected:
            done.set_result(None)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


@dataclass(frozen=True)
class _Outgoing:
    """One saved event as it goes out: its message, or why it cannot go (``refusal``)."""

    position: int
    #: ``<service>:<position>``: the message's ``Nats-Msg-Id``, the quarantine's ``Hitl-Ref``.
    msg_id: str
    subject: str
    data: bytes
    thread_id: str | None
    refusal: str | None = None
    #: Headers beyond Nats-Msg-Id (the correlation id the event was saved with).
    headers: dict[str, str] = field(default_factory=dict)


class Relay:
    """Publishes a service's saved events in order, in batches.

    The events this process has just saved are handed over in memory with their notification
    ids and published from there when they follow the published position without a gap; any
    gap (another writer, a restart, more than ``MAX_FRESH`` waiting) is filled by reading the
    log, in a worker thread, as it is on start.

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
        self._nc: Any = js._nc
        self._service = str(getattr(app, "name", "") or type(app).__name__)
        self._publisher = AckedPublisher(js)
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
        self._published = metrics.RELAY_PUBLISHED.labels(self._service)
        #: Events saved here and not yet published, by notification id (filled by the
        #: writing threads), and whether the position was read from the log once.
        self._fresh: dict[int, Any] = {}
        self._fresh_lock = threading.Lock()
        self._caught_up = False

    def wake(self, saved: Saved = ()) -> None:
        """Thread-safe: called after every save of the application, with what it saved."""
        if saved:
            with self._fresh_lock:
                if len(self._fresh) < MAX_FRESH:
                    self._fresh.update(saved)
        loop = self._loop
        if loop is None or loop.is_closed() or self._wake_scheduled:
            return
        if _running_loop() is loop:  # saved on the loop itself: no need to signal across
            self._wake.set()
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
            # woken in the loop's next turn after a save: a consumer that yields once after
            # deciding sees its events published before it replies (asyncio.timeout, not
            # wait_for, which takes three turns)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()

    def lag(self) -> int:
        """In a worker thread: events saved in the store and not yet published by this relay
        (read from the store: for the health monitor, not the message path)."""
        recorder = self._app.process_recorder
        last = recorder.max_notification_id() or 0
        recorded = recorder.max_tracking_id(RELAY_TRACKING_NAME) or 0
        return max(last - max(recorded, self._position), 0)

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
        await self._publisher.close()

    async def _publish_next(self, *, from_recorded: bool) -> int:
        fresh = self._take_fresh() if self._caught_up and not from_recorded else []
        if fresh:
            read, last = len(fresh), fresh[-1][0]
            outgoing = [o for o in (self._outgoing(e, i) for i, e in fresh) if o is not None]
        else:
            read, last, outgoing = await in_thread(self._read_batch, from_recorded)
            self._caught_up = self._caught_up or not from_recorded
        if not read:
            return 0
        sendable = [o for o in outgoing if o.refusal is None]
        for item in outgoing:  # before anything moves: an outage fails the batch here
            if item.refusal is not None:
                await self._quarantine(item, item.refusal)
        refused = await self._publisher.publish([(o.subject, o.data, o.msg_id, o.headers)
                                                 for o in sendable])
        for index, reason in refused.items():
            await self._quarantine(sendable[index], reason)
        self._position = max(self._position, last)
        published = len(sendable) - len(refused)
        self.published += published
        if published:
            self._published.inc(published)
        return read

    def _read_batch(self, from_recorded: bool) -> tuple[int, int, list[_Outgoing]]:
        """In a worker thread: the next notifications, already encoded as messages."""
        recorder = self._app.process_recorder
        recorded = recorder.max_tracking_id(RELAY_TRACKING_NAME) or 0
        start = recorded if from_recorded else max(recorded, self._position)
        notifications = recorder.select_notifications(start + 1, self._batch_size)
        outgoing = []
        for notification in notifications:
            try:
                event = self._app.mapper.to_domain_event(notification)
            except Exception as error:  # e.g. a class this release no longer has
                if is_transient(error):
                    raise
                kind = str(notification.topic).rsplit(".", 1)[-1]
                outgoing.append(_Outgoing(
                    notification.id, f"{self._service}:{notification.id}",
                    f"hitl.evt.{self._service}.{kind}", bytes(notification.state), None,
                    f"the stored event cannot be read: {describe(error)}"))
                continue
            item = self._outgoing(event, notification.id)
            if item is not None:
                outgoing.append(item)
        last = notifications[-1].id if notifications else start
        return len(notifications), last, outgoing

    def _outgoing(self, event: Any, position: int) -> _Outgoing | None:
        """The event's message; None for an internal event; a refusal for one that can never
        be published (its envelope cannot be built, or it is too large for NATS)."""
        try:
            envelope = self._to_envelope(event, position)
            if envelope is None:
                return None
            subject, data = envelope.subject, envelope.model_dump_json().encode()
        except Exception as error:
            if is_transient(error):  # e.g. the store busy while finding the thread: try again
                raise
            thread_id = getattr(event, "thread_id", None)
            return _Outgoing(position, f"{self._service}:{position}",
                             f"hitl.evt.{self._service}.{type(event).__name__}",
                             self._stored(event), thread_id if isinstance(thread_id, str)
                             else None, f"its envelope could not be built: {describe(error)}")
        limit = self._publisher.max_payload - HEADER_ROOM
        if len(data) > limit:
            return _Outgoing(position, envelope.msg_id, subject, data, envelope.thread_id,
                             f"the event is {len(data):,} bytes as a message, more than the "
                             f"{limit:,} NATS takes (max_payload "
                             f"{self._publisher.max_payload:,} less {HEADER_ROOM:,} for "
                             "headers)")
        return _Outgoing(position, envelope.msg_id, subject, data, envelope.thread_id,
                         headers=headers_of(event))

    def _stored(self, event: Any) -> bytes:
        """The event's fields as JSON (what an operator looks at when it cannot go out; its
        store keeps them encrypted)."""
        try:
            return json.dumps(vars(event), default=str, ensure_ascii=False).encode()
        except Exception:
            return b""

    async def _quarantine(self, item: _Outgoing, reason: str) -> None:
        """Quarantine an event that can never be published; raises QuarantineError (the batch
        is then tried again) when the record is not stored."""
        await quarantine(self._nc, source=f"relay-{self._service}", subject=item.subject,
                         data=item.data, reason=reason, thread_id=item.thread_id,
                         ref=item.msg_id)

    def _take_fresh(self) -> list[tuple[int, Any]]:
        """The saved events that follow the published position without a gap (a batch at
        most); older ones, published meanwhile from the log, are dropped."""
        with self._fresh_lock:
            fresh = self._fresh
            for published in [i for i in fresh if i <= self._position]:
                del fresh[published]
            taken: list[tuple[int, Any]] = []
            following = self._position + 1
            while following in fresh and len(taken) < self._batch_size:
                taken.append((following, fresh.pop(following)))
                following += 1
            return taken

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
            await in_thread(self._app.insert_tracking,
                                    Tracking(RELAY_TRACKING_NAME, position))
        except IntegrityError:  # another replica's relay got there first
            pass
        except Exception as error:  # tried again when next due; re-sends are de-duplicated
            log.warning("relay_position_not_recorded", position=position, error=str(error))
            self._recorded_at = loop.time()
            return
        self._recorded = position
        self._recorded_at = loop.time()
