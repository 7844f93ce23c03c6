"""NATS subject and stream names: the one place they are spelled."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from contracts.limits import MAX_NAME, MAX_THREAD_ID

COMMANDS_STREAM: Final = "HITL_COMMANDS"
EVENTS_STREAM: Final = "HITL_EVENTS"
SCHEDULES_STREAM: Final = "HITL_SCHEDULES"
#: Quarantined messages: what no retry could handle, kept for operators (``hitlflow doctor``).
DLQ_STREAM: Final = "HITL_DLQ"

COMMANDS_ALL: Final = "hitl.cmd.>"
EVENTS_ALL: Final = "hitl.evt.>"
SCHEDULES_ALL: Final = "hitl.sched.>"
NOTIFY_ALL: Final = "hitl.notify.>"
DLQ_ALL: Final = "hitl.dlq.>"

#: Header naming the subject a command's outcome is published to (JetStream messages carry
#: no usable reply subject of their own once consumed through a pull consumer).
REPLY_TO_HEADER: Final = "Hitl-Reply-To"
#: Header carrying a correlation id through commands, events and logs.
CORRELATION_HEADER: Final = "Hitl-Correlation-Id"

THREAD_ID_PATTERN: Final = rf"^[A-Za-z0-9][A-Za-z0-9_\-]{{0,{MAX_THREAD_ID - 1}}}$"
_THREAD_ID_RE = re.compile(THREAD_ID_PATTERN)


class InvalidThreadIdError(ValueError):
    """A thread id that cannot be used as a NATS subject token."""


def check_thread_id(thread_id: str) -> str:
    """Return ``thread_id`` if it is usable as a subject token, else raise with what is allowed."""
    if not isinstance(thread_id, str) or not _THREAD_ID_RE.fullmatch(thread_id):
        raise InvalidThreadIdError(
            f"invalid thread id {str(thread_id)[:200]!r}: expected 1-{MAX_THREAD_ID} characters "
            "of letters, digits, '_' or '-', starting with a letter or digit"
        )
    return thread_id


class InvalidPrincipalError(ValueError):
    """A principal that cannot be named in a subject."""


#: Characters a subject token cannot hold, and how a principal's name carries them.
_ESCAPES: Final = {"%": "%25", ".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09"}


def check_principal(name: str) -> str:
    """Return ``name`` if it can name a principal: 1-200 printable characters."""
    if (not isinstance(name, str) or not name or len(name) > MAX_NAME
            or any(ch < " " or ch == "\x7f" for ch in name)):
        raise InvalidPrincipalError(f"invalid principal name {str(name)[:60]!r}: expected "
                                    f"1-{MAX_NAME} printable characters")
    return name


def principal_token(name: str) -> str:
    """The subject token naming principal ``name`` (``.``, ``*``, ``>``, blanks and ``%``
    written as ``%2E``, ``%2A``, ``%3E``, ``%20``/``%09`` and ``%25``)."""
    return "".join(_ESCAPES.get(ch, ch) for ch in check_principal(name))


def principal_of_token(token: str) -> str:
    """The principal a subject token names; raises unless the token is written as
    :func:`principal_token` writes it."""
    name = token
    for plain, escaped in _ESCAPES.items():
        if plain != "%":
            name = name.replace(escaped, plain)
    name = name.replace("%25", "%")
    try:
        if principal_token(name) == token:
            return name
    except InvalidPrincipalError:
        pass
    raise InvalidPrincipalError(
        f"subject token {token[:60]!r} names no principal: expected a name of 1-{MAX_NAME} "
        "printable characters with '.', '*', '>', blanks and '%' written as %2E, %2A, %3E, "
        "%20/%09 and %25")


def command_subject(verb: str, principal: str, thread_id: str) -> str:
    """``hitl.cmd.<verb>.<principal>.<thread_id>``: who sends the command, and for which
    thread (each NATS user may publish only under its own name)."""
    return f"hitl.cmd.{verb}.{principal_token(principal)}.{check_thread_id(thread_id)}"


def start_subject(principal: str, thread_id: str) -> str:
    return command_subject("start", principal, thread_id)


def resume_subject(principal: str, thread_id: str) -> str:
    return command_subject("resume", principal, thread_id)


def cancel_subject(principal: str, thread_id: str) -> str:
    return command_subject("cancel", principal, thread_id)


def task_subject(principal: str, thread_id: str) -> str:
    """Claim, release, delegate or reassign a request."""
    return command_subject("task", principal, thread_id)


def timeout_subject(thread_id: str) -> str:
    """Sent by the timeout service only (no principal: its NATS user alone may publish it)."""
    return f"hitl.cmd.timeout.{check_thread_id(thread_id)}"


def event_subject(service: str, event_type: str, thread_id: str) -> str:
    """``hitl.evt.<service>.<EventName>.<thread_id>``."""
    return f"hitl.evt.{service}.{event_type}.{check_thread_id(thread_id)}"


def thread_events_subject(thread_id: str) -> str:
    """Every event of one thread, from every service."""
    return f"hitl.evt.*.*.{check_thread_id(thread_id)}"


def notify_subject(thread_id: str) -> str:
    return f"hitl.notify.{check_thread_id(thread_id)}"


def events_of(service: str, event_types: Iterable[str]) -> tuple[str, ...]:
    """Subjects of these event types of a service, for every thread (a consumer's filter)."""
    return tuple(f"hitl.evt.{service}.{event_type}.>" for event_type in sorted(event_types))


START_ALL: Final = "hitl.cmd.start.>"
RESUME_ALL: Final = "hitl.cmd.resume.>"
CANCEL_ALL: Final = "hitl.cmd.cancel.>"
TASK_ALL: Final = "hitl.cmd.task.>"
TIMEOUT_ALL: Final = "hitl.cmd.timeout.>"
WORKFLOW_EVENTS: Final = "hitl.evt.workflow.>"
INTERACTION_EVENTS: Final = "hitl.evt.interaction.>"
TIMEOUT_EVENTS: Final = "hitl.evt.timeout.>"

# Queries (request/reply, answered from projections). A query about one thread is sent to a
# subject ending with that thread's id (the subject is the authority, as for commands).
Q_THREAD: Final = "hitl.q.thread"
Q_THREADS: Final = "hitl.q.threads"
Q_PENDING: Final = "hitl.q.pending"
Q_TIMELINE: Final = "hitl.q.timeline"
Q_MINE: Final = "hitl.q.mine"


def thread_query_subject(thread_id: str) -> str:
    """``hitl.q.thread.<thread_id>``: one thread's status."""
    return f"{Q_THREAD}.{check_thread_id(thread_id)}"


def timeline_query_subject(thread_id: str) -> str:
    """``hitl.q.timeline.<thread_id>``: one thread's events."""
    return f"{Q_TIMELINE}.{check_thread_id(thread_id)}"


def mine_query_subject(principal: str) -> str:
    """``hitl.q.mine.<principal>``: the open requests that principal may answer."""
    return f"{Q_MINE}.{principal_token(principal)}"


def pending_query_subject(thread_id: str | None = None) -> str:
    """``hitl.q.pending.<thread_id>`` for one thread's open requests, ``hitl.q.pending`` for
    every thread's."""
    return Q_PENDING if thread_id is None else f"{Q_PENDING}.{check_thread_id(thread_id)}"

# Timers (stream HITL_SCHEDULES, which allows message schedules): one held schedule message per
# request on ``hitl.sched.at.<request_id>.<thread_id>``; at its time the server publishes the
# TimeoutInteraction it carries to ``hitl.sched.fire.<thread_id>`` in the same stream.
SCHEDULE_FIRE_ALL: Final = "hitl.sched.fire.>"


def schedule_subject(request_id: str, thread_id: str) -> str:
    return f"hitl.sched.at.{request_id}.{check_thread_id(thread_id)}"


def schedule_fire_subject(thread_id: str) -> str:
    return f"hitl.sched.fire.{check_thread_id(thread_id)}"


# Control requests answered by a timeout service replica (core NATS request/reply).
TIMEOUTS_CHECK: Final = "hitl.ctl.timeouts.check"
TIMEOUTS_LIST: Final = "hitl.ctl.timeouts.list"


# Quarantine (stream HITL_DLQ): one subject per source, the consumer's durable name or
# ``relay-<service>``; each entry says why and where the message came from in these headers.
DLQ_ERROR_HEADER: Final = "Hitl-Error"
DLQ_SOURCE_HEADER: Final = "Hitl-Source"
DLQ_SUBJECT_HEADER: Final = "Hitl-Subject"
DLQ_THREAD_HEADER: Final = "Hitl-Thread"
#: The original message's sequence in its stream (a consumer's quarantine).
DLQ_STREAM_SEQ_HEADER: Final = "Hitl-Stream-Seq"
#: ``<service>:<position>`` of an event that stays in its service's event store (the relay's).
DLQ_REF_HEADER: Final = "Hitl-Ref"
#: Size in bytes of the original message (the body is left empty when it does not fit).
DLQ_SIZE_HEADER: Final = "Hitl-Size"


def dlq_subject(source: str) -> str:
    """``hitl.dlq.<source>``: where a message that no retry can help is quarantined."""
    return f"hitl.dlq.{source}"


#: Erase one thread's personal data (``hitlflow erase``): request/reply, the body names the
#: thread; every replica of each service takes it (no queue group).
ADMIN_ERASE: Final = "hitl.admin.erase"


def erase_subject(service: str) -> str:
    """``hitl.admin.erase.<service>``: where a service erases a thread's data key."""
    return f"{ADMIN_ERASE}.{service}"
