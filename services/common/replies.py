"""Sending a command's outcome back to whoever asked (header ``Hitl-Reply-To``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from contracts.commands import CommandReply
from contracts.subjects import REPLY_TO_HEADER
from services.common.consumer import PoisonMessageError, thread_of


async def send_reply(client: Client, msg: Msg, reply: CommandReply) -> None:
    reply_to = (msg.headers or {}).get(REPLY_TO_HEADER)
    if reply_to:
        await client.publish(reply_to, reply.model_dump_json().encode())


def stream_position(msg: Msg) -> int:
    """The message's sequence in its stream: the upstream position of a command."""
    return int(msg.metadata.sequence.stream)


def describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    return "invalid command: " + "; ".join(parts)


async def refuse(client: Client, msg: Msg, command: Any, error: ValidationError) -> None:
    """A command that breaks its contract: tell the sender exactly why, then dead-letter it."""
    reply = CommandReply(ok=False, command=command, thread_id=thread_of(msg),
                         code="invalid_command", error=describe_validation_error(error))
    await send_reply(client, msg, reply)
    raise PoisonMessageError(reply.error or "invalid command")


C = TypeVar("C", bound=BaseModel)


def command_handler(
    broker: Any,
    model: type[C],
    command: Any,
    decide: Callable[[C, int], CommandReply],
) -> Callable[[Msg], Awaitable[None]]:
    """The thin handler of a command stream: decode ``model``, one application call (given the
    command and its stream position), reply. A command that breaks its contract is refused."""

    async def handle(msg: Msg) -> None:
        with structlog.contextvars.bound_contextvars(thread_id=thread_of(msg)):
            try:
                parsed = model.model_validate_json(msg.data)
            except ValidationError as error:
                await refuse(broker.connection, msg, command, error)
                return
            reply = await asyncio.to_thread(decide, parsed, stream_position(msg))
            await send_reply(broker.connection, msg, reply)

    return handle
