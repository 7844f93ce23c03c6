"""Workflow service's NATS subscribers: decode a contract, make one application call, reply."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts import subjects
from contracts.commands import CancelThread, StartThread
from contracts.events import InteractionTimedOut, ResponseAccepted
from services.common.consumer import PoisonMessageError, Subscription, decode_envelope
from services.common.replies import command_handler
from services.workflow.application import WorkflowService


def subscriptions(broker: Any, app: WorkflowService) -> list[Subscription]:
    on_start = command_handler(broker, StartThread, "start", app.start_thread)
    on_cancel = command_handler(broker, CancelThread, "cancel", app.cancel_thread)

    async def on_answer(msg: Msg) -> None:
        envelope = decode_envelope(msg.data)
        with structlog.contextvars.bound_contextvars(thread_id=envelope.thread_id):
            try:
                answer = ResponseAccepted.model_validate(envelope.payload)
            except ValidationError as error:
                raise PoisonMessageError(str(error)) from error
            await asyncio.to_thread(app.on_response_accepted, envelope.thread_id, answer,
                                    envelope.service, envelope.position)

    async def on_timed_out(msg: Msg) -> None:
        envelope = decode_envelope(msg.data)
        with structlog.contextvars.bound_contextvars(thread_id=envelope.thread_id):
            try:
                timed_out = InteractionTimedOut.model_validate(envelope.payload)
            except ValidationError as error:
                raise PoisonMessageError(str(error)) from error
            await asyncio.to_thread(app.on_interaction_timed_out, envelope.thread_id,
                                    timed_out, envelope.service, envelope.position)

    return [
        Subscription(subjects.START_ALL, subjects.COMMANDS_STREAM, "workflow-start", on_start),
        Subscription(subjects.CANCEL_ALL, subjects.COMMANDS_STREAM, "workflow-cancel", on_cancel),
        Subscription("hitl.evt.interaction.ResponseAccepted.>", subjects.EVENTS_STREAM,
                     "workflow-answers", on_answer),
        Subscription("hitl.evt.interaction.InteractionTimedOut.>", subjects.EVENTS_STREAM,
                     "workflow-timeouts", on_timed_out),
    ]
