"""The correlation id: one id from a command through every event it causes, in every service,
and every log line about them.

A command carries it in the ``Hitl-Correlation-Id`` header (the client sets one; a command
without one gets one here). The consumer that handles a message binds it (:func:`correlated`):
log lines get ``correlation_id``, and the events saved meanwhile keep it as an attribute
(stored with the event, so the relay publishes it in the same header even after a restart);
the services that consume those events bind it in turn, and so on down the chain.

This is a plain header, not OpenTelemetry: it costs a dictionary lookup per message and one
attribute per event, and any tracing system can pick it up from the logs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, MutableMapping
from contextvars import ContextVar
from typing import Any

from contracts.subjects import CORRELATION_HEADER

#: The attribute a domain event keeps its correlation id in (stored with it).
ATTRIBUTE = "correlation_id"
#: Longest id taken from a header (a longer one is cut).
MAX_LENGTH = 200

CURRENT: ContextVar[str | None] = ContextVar("hitlflow_correlation_id", default=None)


def new_id() -> str:
    return uuid.uuid4().hex


def of_message(msg: Any) -> str:
    """The message's correlation id, or a new one when it carries none."""
    headers = getattr(msg, "headers", None)
    found = headers.get(CORRELATION_HEADER) if headers else None
    return str(found)[:MAX_LENGTH] if found else new_id()


class correlated:
    """Bind ``correlation_id`` to the log lines and the events saved inside (this task, and
    the worker threads it starts: ``asyncio.to_thread`` copies the context). One context
    variable, set and reset: the log lines get it from :func:`add_correlation_id` when they
    are written, so a message that logs nothing pays nothing more."""

    __slots__ = ("_token", "_value")

    def __init__(self, correlation_id: str | None) -> None:
        self._value = correlation_id

    def __enter__(self) -> None:
        self._token = CURRENT.set(self._value)

    def __exit__(self, *exc: object) -> None:
        CURRENT.reset(self._token)


def add_correlation_id(logger: Any, method: str,
                       event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current correlation id on every log line written."""
    value = CURRENT.get()
    if value is not None:
        event_dict.setdefault("correlation_id", value)
    return event_dict


def stamp(events: Iterable[Any], correlation_id: str | None = None) -> None:
    """Keep the correlation id (given, else the current one) on events about to be saved."""
    value = correlation_id or CURRENT.get()
    if value is None:
        return
    for event in events:
        object.__setattr__(event, ATTRIBUTE, value)


def of_event(event: Any) -> str | None:
    value = getattr(event, ATTRIBUTE, None)
    return value if isinstance(value, str) else None


def headers_of(event: Any) -> dict[str, str]:
    value = of_event(event)
    return {CORRELATION_HEADER: value} if value else {}
