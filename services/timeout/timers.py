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
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from contracts import subjects
from contracts.commands import CommandReply
from contracts.timeouts import CheckedDeadline, TimeoutInteraction
from services.common.clock import Clock
from services.common.logging import get_logger
from services.timeout.application import TimeoutService, Timer
from services.timeout.domain import DeadlineNotDueError
from services.timeout.index import DeadlineIndex, stamp

log = get_logger(__name__)

#: How long a fired timer message stays in the stream unread before the server drops it (the
#: sweep then fires the deadline).
FIRED_TTL = "24h"


def at_header(moment: datetime) -> str:
    """``@at`` with an RFC 3339 UTC time, sub-second precision kept."""
    return "@at " + stamp(moment)


class Timers:
    """Sets and clears the NATS schedule of each deadline."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
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

    async def apply(self, timer: Timer) -> None:
        """Make the held schedule match the deadline: set it, or clear it."""
        if not await self.supported():
            return
        subject = subjects.schedule_subject(timer.request_id, timer.thread_id)
        if not timer.armed or timer.due_at is None:
            with contextlib.suppress(Exception):  # a leftover timer fires into a no-op
                await self._js.purge_stream(subjects.SCHEDULES_STREAM, subject=subject)
            return
        command = TimeoutInteraction(thread_id=timer.thread_id, request_id=timer.request_id,
                                     step=timer.step, due_at=timer.due_at)
        await self._js.publish(
            subject, command.model_dump_json().encode(),
            headers={
                "Nats-Schedule": at_header(timer.due_at),
                "Nats-Schedule-Target": subjects.schedule_fire_subject(timer.thread_id),
                "Nats-Schedule-TTL": FIRED_TTL,
            },
            stream=subjects.SCHEDULES_STREAM,
        )


async def send_timeout(js: JetStreamContext, command: TimeoutInteraction,
                       reply_to: str | None = None) -> None:
    """Publish the command to the interaction service; a re-send is dropped by the stream."""
    headers = {"Nats-Msg-Id": command.msg_id}
    if reply_to:
        headers[subjects.REPLY_TO_HEADER] = reply_to
    await js.publish(subjects.timeout_subject(command.thread_id),
                     command.model_dump_json().encode(), headers=headers,
                     stream=subjects.COMMANDS_STREAM)


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
        await asyncio.to_thread(self.index.catch_up)
        now = self.clock.now()
        js = nc.jetstream()
        inbox = nc.new_inbox() if wait else None
        replies: dict[str, CommandReply] = {}
        got_all = asyncio.Event()
        expected: list[int] = []
        fired: list[CheckedDeadline] = []
        sub: Any = None
        if inbox is not None:
            async def on_reply(msg: Any) -> None:
                with contextlib.suppress(ValueError):
                    replies[msg.subject.rsplit(".", 1)[-1]] = (
                        CommandReply.model_validate_json(msg.data))
                if expected and len(replies) >= expected[0]:
                    got_all.set()

            sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
        try:
            after: tuple[str, str] | None = None
            while len(fired) < limit:
                rows = await asyncio.to_thread(
                    self.index.due, now - timedelta(seconds=grace), min(self.page, limit),
                    refire_before=now - timedelta(seconds=self.refire_after), after=after)
                if not rows:
                    break
                after = (stamp(rows[-1].due_at), rows[-1].request_id)
                for row in rows:
                    try:
                        timer = await asyncio.to_thread(self.app.fire, row.request_id, row.step,
                                                        "sweep")
                    except DeadlineNotDueError:
                        continue
                    if timer is None or timer.due_at is None:
                        continue
                    command = TimeoutInteraction(
                        thread_id=timer.thread_id, request_id=timer.request_id,
                        step=timer.step, due_at=timer.due_at, fired_by="sweep")
                    key = str(len(fired))
                    fired.append(CheckedDeadline(
                        thread_id=timer.thread_id, request_id=timer.request_id,
                        node_name=timer.node_name, interaction_type=timer.interaction_type,
                        step=timer.step, policy=timer.policy, due_at=timer.due_at,
                        fired_at=self.clock.now()))
                    await send_timeout(js, command, f"{inbox}.{key}" if inbox else None)
                if len(rows) < self.page:
                    break
            if fired:
                log.info("sweep_fired", count=len(fired))
            if sub is not None and fired and wait:
                expected.append(len(fired))
                if len(replies) < len(fired):
                    with contextlib.suppress(TimeoutError, NatsTimeoutError):
                        await asyncio.wait_for(got_all.wait(), wait)
                fired = [_with_outcome(item, replies.get(str(i)))
                         for i, item in enumerate(fired)]
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        return fired

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
