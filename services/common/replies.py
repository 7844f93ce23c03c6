"""Sending a command's outcome back to whoever asked (header ``Hitl-Reply-To``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from contracts.commands import CommandReply
from contracts.limits import MAX_COMMAND_BYTES, TooLargeError
from contracts.subjects import (
    REPLY_TO_HEADER,
    InvalidPrincipalError,
    InvalidThreadIdError,
    check_thread_id,
    command_subject,
    principal_of_token,
)
from services.common import metrics
from services.common.consumer import PoisonMessageError, thread_of
from services.common.threads import in_thread


async def send_reply(client: Client, msg: Msg, reply: CommandReply) -> None:
    """Publish a command's outcome to its sender's ``Hitl-Reply-To`` (when it named one), and
    count it (``hitlflow_commands``; a resume's latency too)."""
    metrics.count_command(reply.command, "ok" if reply.ok else reply.code or "refused")
    if reply.command == "resume":
        try:
            stored_at = msg.metadata.timestamp
        except Exception:  # not a JetStream delivery
            stored_at = None
        metrics.observe_resume(stored_at)
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


class CommandRefusedError(PoisonMessageError):
    """A command message no retry will make valid: too large, not of its contract, or for
    another thread than its subject names. ``code`` is ``too_large`` or ``invalid_command``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


C = TypeVar("C", bound=BaseModel)


def _decode(msg: Msg, model: type[C]) -> C:
    size = len(msg.data)
    if size > MAX_COMMAND_BYTES:
        raise CommandRefusedError("too_large",
                                  str(TooLargeError("the command", size, MAX_COMMAND_BYTES)))
    try:
        return model.model_validate_json(msg.data)
    except ValidationError as error:
        raise CommandRefusedError("invalid_command", describe_validation_error(error)) from error


def _check_subject(msg: Msg, thread_id: str, expected: Callable[[str], str]) -> None:
    try:
        wanted = expected(thread_id)
    except (InvalidThreadIdError, InvalidPrincipalError) as error:
        raise CommandRefusedError("invalid_command", f"invalid command: {error}") from error
    if msg.subject != wanted:
        raise CommandRefusedError(
            "invalid_command",
            f"invalid command: it names thread {thread_id!r} but was sent to {msg.subject!r}; "
            f"a command acts on the thread its subject names (for this body: {wanted!r})")


def read_command(msg: Msg, model: type[C], subject_for: Callable[[str], str]) -> C:
    """Decode a command the services send each other (``subject_for(thread_id)`` is its
    subject). The subject is the authority on the thread: a body naming another thread than
    the subject is refused, whatever else it says."""
    parsed = _decode(msg, model)
    _check_subject(msg, str(getattr(parsed, "thread_id", "")), subject_for)
    return parsed


def read_principal_command(msg: Msg, model: type[C], verb: str) -> tuple[C, str]:
    """Decode a command sent as ``hitl.cmd.<verb>.<principal>.<thread>`` and return it with
    the principal its subject names (the sender: each NATS user may publish only under its
    own name). A subject of another shape, or a body naming another thread, is refused."""
    parts = msg.subject.split(".")
    if len(parts) != 5 or parts[:3] != ["hitl", "cmd", verb]:
        raise CommandRefusedError(
            "invalid_command", f"invalid command: {msg.subject!r} is not "
            f"hitl.cmd.{verb}.<principal>.<thread_id>")
    try:
        principal = principal_of_token(parts[3])
    except InvalidPrincipalError as error:
        raise CommandRefusedError("invalid_command", f"invalid command: {error}") from error
    parsed = _decode(msg, model)
    _check_subject(msg, str(getattr(parsed, "thread_id", "")),
                   lambda thread_id: command_subject(verb, principal, thread_id))
    return parsed, principal


async def audit_refusal(msg: Msg, error: CommandRefusedError,
                        record: Callable[[str, str, str, int], None] | None) -> None:
    """Give a refused command to ``record`` when its subject names a valid thread."""
    thread_id = thread_of(msg)
    if record is None:
        return
    try:
        check_thread_id(thread_id)
    except InvalidThreadIdError:
        return
    await in_thread(record, thread_id, error.code, str(error), stream_position(msg))


async def refuse(client: Client, msg: Msg, command: Any, error: CommandRefusedError) -> None:
    """Tell the sender exactly why its command was refused, then dead-letter it."""
    reply = CommandReply(ok=False, command=command, thread_id=thread_of(msg),
                         code=error.code, error=str(error))
    await send_reply(client, msg, reply)
    raise error


def command_handler(
    broker: Any,
    model: type[C],
    command: Any,
    decide: Callable[[C, str, int], CommandReply],
    on_refused: Callable[[str, str, str, int], None] | None = None,
) -> Callable[[Msg], Awaitable[None]]:
    """The thin handler of a command stream: decode ``model`` from
    ``hitl.cmd.<command>.<principal>.<thread>`` (:func:`read_principal_command`), one
    application call (given the command, its principal and its stream position), reply. A
    refused command is given to ``on_refused(thread_id, code, reason, position)`` (to keep it
    in the audit of the thread its subject names) before the sender is told."""

    async def handle(msg: Msg) -> None:
        with structlog.contextvars.bound_contextvars(thread_id=thread_of(msg)):
            try:
                parsed, principal = read_principal_command(msg, model, command)
            except CommandRefusedError as error:
                await audit_refusal(msg, error, on_refused)
                await refuse(broker.connection, msg, command, error)
                return
            reply = await in_thread(decide, parsed, principal, stream_position(msg))
            await send_reply(broker.connection, msg, reply)

    return handle
