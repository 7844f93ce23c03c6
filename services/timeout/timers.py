"""The timers themselves: NATS message schedules, and the sweep that backs them up.

A pending deadline is held by nats-server as one schedule message on
``hitl.sched.at.<request_id>.<thread_id>`` (stream HITL_SCHEDULES) with header
``Nats-Schedule: @at <deadline>``; at that time the server publishes its body, a
TimeoutInteraction, to ``hitl.sched.fire.<thread_id>`` in the same stream, durably. Setting the
timer again replaces it (one schedule per subject); clearing it purges the subject.

The sweep reads the deadline index for deadlines already due and fires those itself: a timer
message lost or purged by mistake, a server without message schedules, or a fired message
that expired unread all end up there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from contracts import subjects
from contracts.commands import CommandReply
from contracts.timeouts import CheckedDeadline, TimeoutInteraction
from services.common.clock import Clock
from services.common.correlation import CURRENT
from services.common.logging import get_logger
from services.common.relay import AckedPublisher, Outgoing
from services.common.threads import in_thread
from services.timeout.application import TimeoutService, Timer
from services.timeout.domain import DeadlineNotDueError
from services.timeout.index import DeadlineIndex, IndexedDeadline, stamp

log = get_logger(__name__)

#: How long a fired timer message stays in the stream unread before the server drops it (the
#: sweep then fires the deadline).
FIRED_TTL = "24h"


def at_header(moment: datetime) -> str:
    """``@at`` with an RFC 3339 UTC time, sub-second precision kept."""
    return "@at " + stamp(moment)


class Timers:
    """Sets and clears the NATS schedule of each deadline, a batch of timers at a time."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._publisher = AckedPublisher(js)
        self._supported: bool | None = None

    async def supported(self) -> bool:
        """Does the schedules stream allow message schedules (nats-server 2.12+)?"""
        if self._supported is None:
            info = await self._js.stream_info(subjects.SCHEDULES_STREAM)
            self._supported = bool(getattr(info.config, "allow_msg_schedules", False))
            if not self._supported:
                log.warning("message_schedules_unsupported", stream=subjects.SCHEDULES_STREAM,
                            detail="deadlines fire by the sweep only; use nats-server 2.12+")
        return self._supported

    async def apply(self, timers: Sequence[tuple[Timer, str | None]]) -> None:
        """Make the held schedules match the deadlines, given as (timer, correlation id) in the
        order they changed: a request's last timer counts. The schedules to set go out
        together, and the stream has stored every one when this returns (else
        :class:`PublishError`); the ones to clear are purged meanwhile."""
        if not timers or not await self.supported():
            return
        latest = {subjects.schedule_subject(timer.request_id, timer.thread_id): (timer, cid)
                  for timer, cid in timers}
        armed: list[tuple[Timer, Outgoing]] = []
        cleared: list[str] = []
        for subject, (timer, cid) in latest.items():
            if timer.armed and timer.due_at is not None:
                armed.append((timer, _schedule(subject, timer, timer.due_at, cid)))
            else:
                cleared.append(subject)
        refused, _ = await asyncio.gather(self._publisher.publish([m for _, m in armed]),
                                          self._purge(cleared))
        for index, reason in refused.items():  # the sweep fires these deadlines
            timer = armed[index][0]
            log.error("timer_refused", thread_id=timer.thread_id,
                      interaction_id=timer.request_id, reason=reason)

    async def _purge(self, cleared: Sequence[str]) -> None:
        """Drop the schedules held on these subjects, all at once."""

        async def purge(subject: str) -> None:
            with contextlib.suppress(Exception):  # a leftover timer fires into a no-op
                await self._js.purge_stream(subjects.SCHEDULES_STREAM, subject=subject)

        await asyncio.gather(*(purge(subject) for subject in cleared))


def _schedule(subject: str, timer: Timer, due_at: datetime, correlation_id: str | None
              ) -> Outgoing:
    """The schedule message that fires ``timer`` at ``due_at`` (no Nats-Msg-Id: the same
    schedule set again after a clear must not be dropped as a duplicate)."""
    command = TimeoutInteraction(thread_id=timer.thread_id, request_id=timer.request_id,
                                 step=timer.step, due_at=due_at)
    return subject, command.model_dump_json().encode(), None, {
        "Nats-Schedule": at_header(due_at),
        "Nats-Schedule-Target": subjects.schedule_fire_subject(timer.thread_id),
        "Nats-Schedule-TTL": FIRED_TTL,
        # the timer's command carries on the thread's correlation id when it fires
        **({subjects.CORRELATION_HEADER: correlation_id} if correlation_id else {}),
    }


async def send_timeout(js: JetStreamContext, command: TimeoutInteraction,
                       reply_to: str | None = None) -> bool:
    """Publish the command to the interaction service; False when the stream already had it
    (a re-send within the duplicate window is dropped, and gets no reply)."""
    headers = {"Nats-Msg-Id": command.msg_id}
    correlation_id = CURRENT.get()
    if correlation_id:
        headers[subjects.CORRELATION_HEADER] = correlation_id
    if reply_to:
        headers[subjects.REPLY_TO_HEADER] = reply_to
    ack = await js.publish(subjects.timeout_subject(command.thread_id),
                           command.model_dump_json().encode(), headers=headers,
                           stream=subjects.COMMANDS_STREAM)
    return not ack.duplicate


class _Outcomes:
    """Replies of the interaction service to the timeouts one sweep sent (one inbox each)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.inbox = nc.new_inbox()
        self.replies: dict[str, CommandReply] = {}
        self._expected: int | None = None
        self._all = asyncio.Event()
        self._sub: Any = None

    async def __aenter__(self) -> _Outcomes:
        self._sub = await self._nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    def reply_to(self, key: str) -> str:
        return f"{self.inbox}.{key}"

    async def _on_reply(self, msg: Any) -> None:
        with contextlib.suppress(ValueError):
            self.replies[msg.subject.rsplit(".", 1)[-1]] = CommandReply.model_validate_json(
                msg.data)
        if self._expected is not None and len(self.replies) >= self._expected:
            self._all.set()

    async def wait(self, count: int, timeout: float) -> None:
        self._expected = count
        if len(self.replies) < count:
            with contextlib.suppress(TimeoutError, NatsTimeoutError):
                await asyncio.wait_for(self._all.wait(), timeout)


class Sweeper:
    """Fires every deadline that is due but whose timer did not (yet) go off."""

    def __init__(self, app: TimeoutService, index: DeadlineIndex, clock: Clock, *,
                 page: int = 500, refire_after: float = 300.0) -> None:
        self.app = app
        self.index = index
        self.clock = clock
        self.page = page
        #: A deadline fired this long ago and still unsettled is fired again (lost command).
        self.refire_after = refire_after

    async def sweep(self, nc: Client, *, grace: float = 0.0, limit: int = 100_000,
                    wait: float | None = None) -> list[CheckedDeadline]:
        """Fire what is due ``grace`` seconds ago or more; with ``wait``, collect outcomes."""
        await in_thread(self.index.catch_up)
        if wait is None:
            fired, _ = await self._fire_due(nc, grace, limit, None)
            return fired
        async with _Outcomes(nc) as outcomes:
            fired, awaited = await self._fire_due(nc, grace, limit, outcomes)
            if awaited:
                await outcomes.wait(awaited, wait)
            return [_with_outcome(item, outcomes.replies.get(str(i)))
                    for i, item in enumerate(fired)]

    async def _fire_due(self, nc: Client, grace: float, limit: int,
                        outcomes: _Outcomes | None) -> tuple[list[CheckedDeadline], int]:
        """Fire due deadlines page by page; returns them and how many replies to expect."""
        now = self.clock.now()
        js = nc.jetstream()
        fired: list[CheckedDeadline] = []
        awaited = 0
        after: tuple[str, str] | None = None
        while len(fired) < limit:
            rows = await in_thread(
                self.index.due, now - timedelta(seconds=grace), min(self.page, limit),
                refire_before=now - timedelta(seconds=self.refire_after), after=after)
            for row in rows:
                timer = await self._fire(row)
                if timer is None or timer.due_at is None:
                    continue
                key = str(len(fired))
                item = CheckedDeadline(
                    thread_id=timer.thread_id, request_id=timer.request_id,
                    node_name=timer.node_name, interaction_type=timer.interaction_type,
                    step=timer.step, policy=timer.policy, due_at=timer.due_at,
                    fired_at=self.clock.now())
                command = TimeoutInteraction(thread_id=timer.thread_id,
                                             request_id=timer.request_id, step=timer.step,
                                             due_at=timer.due_at, fired_by="sweep")
                if await send_timeout(js, command, outcomes.reply_to(key) if outcomes else None):
                    fired.append(item)
                    awaited += 1
                else:
                    fired.append(item.model_copy(update={"code": "already_sent"}))
            if len(rows) < self.page:
                break
            after = (stamp(rows[-1].due_at), rows[-1].request_id)
        if fired:
            log.info("sweep_fired", count=len(fired))
        return fired, awaited

    async def _fire(self, row: IndexedDeadline) -> Timer | None:
        """Record the firing of one due row; the timer when its command should go out."""
        try:
            timer = await in_thread(self.app.fire, row.request_id, row.step, "sweep")
        except DeadlineNotDueError:
            return None
        if timer is None or (not timer.fired_now and row.status != "fired"):
            return None  # nothing left to fire, or the timer / another replica got there first
        return timer

    async def run(self, nc: Client, interval: float, grace: float) -> None:
        """Sweep every ``interval`` seconds, for deadlines due ``grace`` seconds ago or more."""
        while True:
            try:
                await self.sweep(nc, grace=grace)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("sweep_failed", error=repr(error))
            await asyncio.sleep(interval)


def _with_outcome(item: CheckedDeadline, reply: CommandReply | None) -> CheckedDeadline:
    if reply is None:
        return item
    return item.model_copy(update={"applied": reply.ok, "code": reply.code,
                                   "error": reply.error})
