"""Interaction service's NATS subscribers: decode a contract, make one application call, reply."""

from __future__ import annotations

from typing import Any

import structlog
from nats.aio.msg import Msg

from contracts import subjects
from contracts.commands import ResumeThread, TaskCommand
from contracts.events import InteractionRequested
from contracts.timeouts import TimeoutInteraction
from services.common.consumer import (
    Subscription,
    Work,
    decode_envelope,
    decode_payload,
    thread_of,
    with_store,
)
from services.common.logging import get_logger
from services.common.replies import (
    CommandRefusedError,
    audit_refusal,
    read_command,
    read_principal_command,
    refuse,
    send_reply,
)
from services.common.store import Job
from services.common.threads import in_thread
from services.interaction.application import THREAD_EVENTS, InteractionService
from services.interaction.notifications import Notifier, notification_from

log = get_logger(__name__)


def subscriptions(broker: Any, app: InteractionService) -> list[Subscription]:
    async def resume(msg: Msg) -> Work | None:
        try:
            command, principal = read_principal_command(msg, ResumeThread, "resume")
        except CommandRefusedError as error:
            # kept as a refused attempt in the audit of the thread the subject names
            await audit_refusal(msg, error, app.record_refused)
            await refuse(broker.connection, msg, "resume", error)
            return None

        async def reply(job: Job) -> None:
            await send_reply(broker.connection, msg, job.result)

        return Work(msg, app.respond_job(command, principal), reply)

    async def task(msg: Msg) -> Work | None:
        try:
            command, principal = read_principal_command(msg, TaskCommand, "task")
        except CommandRefusedError as error:
            await audit_refusal(msg, error, app.record_refused)
            await refuse(broker.connection, msg, "task", error)
            return None

        async def reply(job: Job) -> None:
            await send_reply(broker.connection, msg, job.result)

        return Work(msg, app.task_job(command, principal), reply)

    async def thread_event(msg: Msg) -> Work | None:
        envelope = decode_envelope(msg.data)
        if envelope.event_type not in THREAD_EVENTS:  # a consumer made by an older release
            return None
        return Work(msg, app.thread_event_job(envelope.thread_id, envelope.event_type,
                                              envelope.payload, envelope.service,
                                              envelope.position))

    async def on_timeout(msg: Msg) -> None:
        with structlog.contextvars.bound_contextvars(thread_id=thread_of(msg)):
            try:
                command = read_command(msg, TimeoutInteraction, subjects.timeout_subject)
            except CommandRefusedError as error:
                await refuse(broker.connection, msg, "timeout", error)
                return
            with structlog.contextvars.bound_contextvars(interaction_id=command.request_id):
                reply = await in_thread(app.time_out, command)
            await send_reply(broker.connection, msg, reply)

    return [
        Subscription(subjects.RESUME_ALL, subjects.COMMANDS_STREAM, "interaction-resume",
                     prepare=resume, app=app),
        Subscription(subjects.TASK_ALL, subjects.COMMANDS_STREAM, "interaction-task",
                     prepare=task, app=app),
        Subscription(subjects.events_of("workflow", THREAD_EVENTS), subjects.EVENTS_STREAM,
                     "interaction-threads", prepare=thread_event, app=app),
        Subscription(subjects.TIMEOUT_ALL, subjects.COMMANDS_STREAM, "interaction-timeout",
                     on_timeout),
    ]


def notification_subscriptions(notifier: Notifier,
                               app: InteractionService) -> list[Subscription]:
    """Announce every InteractionRequested (this service's own events) to the sinks, unless the
    request was closed before its turn came: a consumer made anew replays the stream from its
    start, and people are not told again of requests settled long ago. (An open request may be
    announced twice: receivers drop repeats by the notification id.)"""

    async def on_requested(msg: Msg) -> None:
        envelope = decode_envelope(msg.data)
        request = decode_payload(envelope, InteractionRequested)
        with structlog.contextvars.bound_contextvars(thread_id=envelope.thread_id,
                                                     interaction_id=request.id):
            settled = await with_store(app, app.settled, request.id)
            if settled is not None:
                log.info("notification_skipped", reason=f"the request is {settled}")
                return
            await notifier.notify(notification_from(request))

    return [Subscription("hitl.evt.interaction.InteractionRequested.>", subjects.EVENTS_STREAM,
                         "interaction-notify", on_requested)]
