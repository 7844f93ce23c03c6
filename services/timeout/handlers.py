"""Timeout service's NATS subscribers: decode, make one application call, set timers or reply."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts import subjects
from contracts.timeouts import (
    DeadlinesQuery,
    DeadlinesReply,
    DeadlineView,
    TimeoutCheck,
    TimeoutCheckReply,
    TimeoutInteraction,
)
from services.common.consumer import PoisonMessageError, Subscription, decode_envelope
from services.common.logging import get_logger
from services.timeout.application import DEADLINE_EVENTS, TimeoutService
from services.timeout.domain import DeadlineNotDueError
from services.timeout.timers import Sweeper, Timers, send_timeout

log = get_logger(__name__)

#: A timer that goes off at most this early (server and service clocks differ a little) waits
#: for its deadline; one earlier still is left to the sweep.
EARLY_TOLERANCE = 2.0


def subscriptions(broker: Any, app: TimeoutService) -> list[Subscription]:
    js = broker.connection.jetstream()
    timers = Timers(js)

    async def on_interaction_event(msg: Msg) -> None:
        envelope = decode_envelope(msg.data)
        if envelope.event_type not in DEADLINE_EVENTS:
            return
        with structlog.contextvars.bound_contextvars(thread_id=envelope.thread_id):
            timer = await asyncio.to_thread(app.on_interaction_event, envelope.event_type,
                                            envelope.payload, envelope.service,
                                            envelope.position)
            if timer is not None:
                await timers.apply(timer)

    async def on_fire(msg: Msg) -> None:
        try:
            command = TimeoutInteraction.model_validate_json(msg.data)
        except ValidationError as error:
            raise PoisonMessageError(f"not a TimeoutInteraction: {error}") from error
        with structlog.contextvars.bound_contextvars(thread_id=command.thread_id,
                                                     interaction_id=command.request_id):
            try:
                timer = await asyncio.to_thread(app.fire, command.request_id, command.step,
                                                "schedule")
            except DeadlineNotDueError:
                early = (command.due_at - app.clock.now()).total_seconds()
                if early > EARLY_TOLERANCE:
                    log.warning("timer_early", early_seconds=round(early, 3),
                                detail="left to the sweep")
                    return
                await asyncio.sleep(max(early, 0.0))
                timer = await asyncio.to_thread(app.fire, command.request_id, command.step,
                                                "schedule")
            if timer is not None:
                await send_timeout(js, command)

    return [
        Subscription(subjects.INTERACTION_EVENTS, subjects.EVENTS_STREAM, "timeout-deadlines",
                     on_interaction_event),
        Subscription(subjects.SCHEDULE_FIRE_ALL, subjects.SCHEDULES_STREAM, "timeout-fire",
                     on_fire),
    ]


async def serve_control(nc: Any, sweeper: Sweeper, reply_timeout: float) -> list[Any]:
    """Answer ``hitlflow timeouts check`` and ``timeouts list`` (one replica answers each)."""

    async def on_check(msg: Msg) -> None:
        try:
            request = TimeoutCheck.model_validate_json(msg.data or b"{}")
        except ValidationError as error:
            reply = TimeoutCheckReply(checked_at=sweeper.clock.now(), error=str(error))
        else:
            checked_at = sweeper.clock.now()
            fired = await sweeper.sweep(nc, limit=request.limit,
                                        wait=reply_timeout if request.wait else None)
            await asyncio.to_thread(sweeper.index.catch_up)
            pending = await asyncio.to_thread(sweeper.index.count_pending)
            reply = TimeoutCheckReply(checked_at=checked_at, fired=fired, pending=pending)
        await msg.respond(reply.model_dump_json().encode())

    async def on_list(msg: Msg) -> None:
        try:
            query = DeadlinesQuery.model_validate_json(msg.data or b"{}")
        except ValidationError:
            query = DeadlinesQuery()
        await asyncio.to_thread(sweeper.index.catch_up)
        rows = await asyncio.to_thread(sweeper.index.pending, query.thread_id, query.limit)
        reply = DeadlinesReply(deadlines=[
            DeadlineView(thread_id=r.thread_id, request_id=r.request_id, node_name=r.node_name,
                         interaction_type=r.interaction_type, step=r.step, policy=r.policy,
                         due_at=r.due_at, status="fired" if r.status == "fired" else "pending")
            for r in rows
        ])
        await msg.respond(reply.model_dump_json().encode())

    return [
        await nc.subscribe(subjects.TIMEOUTS_CHECK, queue="timeout", cb=on_check),
        await nc.subscribe(subjects.TIMEOUTS_LIST, queue="timeout", cb=on_list),
    ]
