"""Timeout service's NATS subscribers: decode, make one application call, set timers or reply."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts import subjects
from contracts.base import Contract
from contracts.timeouts import (
    DeadlinesQuery,
    DeadlinesReply,
    DeadlineView,
    TimeoutCheck,
    TimeoutCheckReply,
    TimeoutInteraction,
)
from services.common.consumer import (
    Subscription,
    Work,
    decode_envelope,
    wait_handled,
)
from services.common.logging import get_logger
from services.common.replies import read_command
from services.common.store import Job
from services.common.threads import in_thread
from services.timeout.application import DEADLINE_EVENTS, TimeoutService
from services.timeout.domain import DeadlineNotDueError
from services.timeout.timers import Sweeper, Timers, send_timeout

log = get_logger(__name__)

#: Seconds the deadline consumer lets interaction events gather into one batch: no caller waits
#: on a deadline being set or cleared (its time comes from the event), and ten events in one
#: transaction cost the disk one sync instead of ten, next to the services a resume waits on.
DEADLINE_LINGER = 0.05
#: The durable consumer that records deadlines from interaction events.
DEADLINES_CONSUMER = "timeout-deadlines"
#: A timer that goes off at most this early (server and service clocks differ a little) waits
#: for its deadline; one earlier still is left to the sweep.
EARLY_TOLERANCE = 2.0


def subscriptions(broker: Any, app: TimeoutService) -> list[Subscription]:
    js = broker.connection.jetstream()
    timers = Timers(js)

    async def interaction_event(msg: Msg) -> Work | None:
        envelope = decode_envelope(msg.data)
        job = app.deadline_job(envelope.thread_id, envelope.event_type, envelope.payload,
                               envelope.service, envelope.position)
        return None if job is None else Work(msg, job)

    async def set_timers(jobs: list[Job]) -> None:
        await timers.apply([(job.result, job.correlation_id) for job in jobs
                            if job.result is not None])

    async def on_fire(msg: Msg) -> None:
        command = read_command(msg, TimeoutInteraction, subjects.schedule_fire_subject)
        with structlog.contextvars.bound_contextvars(thread_id=command.thread_id,
                                                     interaction_id=command.request_id):
            try:
                timer = await in_thread(app.fire, command.request_id, command.step,
                                                "schedule")
            except DeadlineNotDueError:
                early = (command.due_at - app.clock.now()).total_seconds()
                if early > EARLY_TOLERANCE:
                    log.warning("timer_early", early_seconds=round(early, 3),
                                detail="left to the sweep")
                    return
                await asyncio.sleep(max(early, 0.0))
                timer = await in_thread(app.fire, command.request_id, command.step,
                                                "schedule")
            if timer is not None:
                await send_timeout(js, command)

    return [
        Subscription(subjects.events_of("interaction", DEADLINE_EVENTS), subjects.EVENTS_STREAM,
                     DEADLINES_CONSUMER, prepare=interaction_event, app=app,
                     linger=DEADLINE_LINGER, then_all=set_timers),
        Subscription(subjects.SCHEDULE_FIRE_ALL, subjects.SCHEDULES_STREAM, "timeout-fire",
                     on_fire),
    ]


async def serve_control(nc: Any, sweeper: Sweeper, reply_timeout: float) -> list[Any]:
    """Answer ``hitlflow timeouts check`` and ``timeouts list`` (one replica answers each).

    Both first wait until every interaction event published before the request has been
    recorded (the deadline consumer gathers events for a moment): a check right after a start
    sees that start's deadline. After a third of ``reply_timeout`` they answer from what is
    recorded, with the number of events still to record (``unrecorded``).
    """
    js = nc.jetstream()

    async def recorded() -> int:
        left = await wait_handled(js, subjects.EVENTS_STREAM, DEADLINES_CONSUMER,
                                  timeout=reply_timeout / 3)
        if left:
            log.warning("deadlines_lagging", consumer=DEADLINES_CONSUMER, unrecorded=left,
                        detail="answered from the deadlines recorded so far")
        return left

    async def on_check(msg: Msg) -> TimeoutCheckReply:
        try:
            request = TimeoutCheck.model_validate_json(msg.data or b"{}")
        except ValidationError as error:
            return TimeoutCheckReply(checked_at=sweeper.clock.now(), error=str(error),
                                     code="invalid_request")
        unrecorded = await recorded()
        checked_at = sweeper.clock.now()
        fired = await sweeper.sweep(nc, limit=request.limit,
                                    wait=reply_timeout if request.wait else None)
        await in_thread(sweeper.index.catch_up)
        pending = await in_thread(sweeper.index.count_pending)
        return TimeoutCheckReply(checked_at=checked_at, fired=fired, pending=pending,
                                 unrecorded=unrecorded)

    async def on_list(msg: Msg) -> DeadlinesReply:
        try:
            query = DeadlinesQuery.model_validate_json(msg.data or b"{}")
        except ValidationError:
            query = DeadlinesQuery()
        unrecorded = await recorded()
        await in_thread(sweeper.index.catch_up)
        rows = await in_thread(sweeper.index.pending, query.thread_id, query.limit)
        return DeadlinesReply(deadlines=[
            DeadlineView(thread_id=r.thread_id, request_id=r.request_id, node_name=r.node_name,
                         interaction_type=r.interaction_type, step=r.step, policy=r.policy,
                         due_at=r.due_at, status="fired" if r.status == "fired" else "pending")
            for r in rows
        ], unrecorded=unrecorded)

    # a check may wait reply_timeout for the outcomes of what it fired (its caller waits twice
    # that and more); a list's caller waits reply_timeout
    check = answering("check", on_check, reply_timeout * 2,
                      lambda error: TimeoutCheckReply(checked_at=sweeper.clock.now(),
                                                      error=error, code="failed"))
    listing = answering("list", on_list, reply_timeout * 2 / 3,
                        lambda error: DeadlinesReply(deadlines=[], error=error, code="failed"))
    return [
        await nc.subscribe(subjects.TIMEOUTS_CHECK, queue="timeout", cb=check),
        await nc.subscribe(subjects.TIMEOUTS_LIST, queue="timeout", cb=listing),
    ]


def answering(what: str, handle: Callable[[Msg], Awaitable[Contract]], bound: float,
              failed: Callable[[str], Contract]) -> Callable[[Msg], Awaitable[None]]:
    """A control request's callback that always answers: with ``handle``'s reply, or, when it
    fails or has not answered within ``bound`` seconds, with what went wrong (``failed``), said
    in the log too. Work still running then goes on (a sweep is not cut off halfway); the
    reply has gone. (A callback that raises is dropped by the NATS client, and its caller
    would wait its whole timeout to hear only that nothing answered.)"""
    running: set[asyncio.Task[Contract]] = set()  # the loop holds tasks only weakly

    def finished(work: asyncio.Task[Contract]) -> None:
        running.discard(work)
        if not work.cancelled() and work.exception() is not None:
            log.error("timeouts_request_failed", request=what, exc_info=work.exception())

    async def answer(msg: Msg) -> None:
        work = asyncio.ensure_future(handle(msg))
        running.add(work)
        work.add_done_callback(finished)
        try:
            reply = await asyncio.wait_for(asyncio.shield(work), bound)
        except Exception as error:
            if work.done():  # it failed (and finished() has logged it)
                problem = f"{type(error).__name__}: {error}"
            else:
                problem = f"it had not answered within {bound:g} s"
                log.error("timeouts_request_failed", request=what, error=problem)
            reply = failed(f"the timeout service could not answer this {what} request: "
                           f"{problem}")
        await msg.respond(reply.model_dump_json().encode())

    return answer
