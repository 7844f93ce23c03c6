"""Workflow service's NATS subscribers: decode a contract into a job, reply once it is decided.

Starts and accepted answers arrive in batches that are decided in one application call and one
transaction (see ``handle_jobs``); cancels, rare, one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from contracts import subjects
from contracts.commands import CancelThread, StartThread
from contracts.events import InteractionTimedOut, ResponseAccepted
from services.common.consumer import Subscription, Work, decode_envelope, decode_payload
from services.common.replies import (
    CommandRefusedError,
    audit_refusal,
    command_handler,
    read_principal_command,
    refuse,
    send_reply,
    stream_position,
)
from services.common.store import Job
from services.workflow.application import WorkflowService


def subscriptions(broker: Any, app: WorkflowService) -> list[Subscription]:
    def refused(command: str) -> Callable[[str, str, str, int], None]:
        return lambda thread_id, code, reason, position: app.record_refused(
            thread_id, command, code, reason, position)

    on_cancel = command_handler(broker, CancelThread, "cancel", app.cancel_thread,
                                refused("cancel"))

    async def start(msg: Msg) -> Work | None:
        try:
            command, principal = read_principal_command(msg, StartThread, "start")
        except CommandRefusedError as error:
            await audit_refusal(msg, error, refused("start"))
            await refuse(broker.connection, msg, "start", error)
            return None

        async def reply(job: Job) -> None:
            await send_reply(broker.connection, msg, app.start_reply(command, job))

        return Work(msg, app.start_job(command, principal, stream_position(msg)), reply)

    async def answer(msg: Msg) -> Work:
        envelope = decode_envelope(msg.data)
        accepted = decode_payload(envelope, ResponseAccepted)
        return Work(msg, app.answer_job(envelope.thread_id, accepted, envelope.service,
                                        envelope.position))

    async def timed_out(msg: Msg) -> Work:
        envelope = decode_envelope(msg.data)
        expired = decode_payload(envelope, InteractionTimedOut)
        return Work(msg, app.timed_out_job(envelope.thread_id, expired, envelope.service,
                                           envelope.position))

    return [
        Subscription(subjects.START_ALL, subjects.COMMANDS_STREAM, "workflow-start",
                     prepare=start, app=app),
        Subscription(subjects.CANCEL_ALL, subjects.COMMANDS_STREAM, "workflow-cancel", on_cancel),
        Subscription("hitl.evt.interaction.ResponseAccepted.>", subjects.EVENTS_STREAM,
                     "workflow-answers", prepare=answer, app=app),
        Subscription("hitl.evt.interaction.InteractionTimedOut.>", subjects.EVENTS_STREAM,
                     "workflow-timeouts", prepare=timed_out, app=app),
    ]
