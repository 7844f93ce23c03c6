"""Integration events as published on ``HITL_EVENTS``.

Subject: ``hitl.evt.<service>.<event_type>.<thread_id>``; header ``Nats-Msg-Id`` is
``<service>:<position>`` so a re-sent event is dropped by the stream's de-duplication.
The ``payload`` of each event type is described by the model of the same name below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts.base import Contract
from contracts.subjects import event_subject
from contracts.timeouts import (
    DeadlineCleared,
    DeadlineFired,
    DeadlineScheduled,
    InteractionEscalated,
    InteractionReminded,
)

Service = Literal["workflow", "interaction", "timeout"]
InteractionType = Literal["approval", "edit", "choice", "text_input", "conversation"]
INTERACTION_TYPES: tuple[str, ...] = ("approval", "edit", "choice", "text_input", "conversation")


class EventEnvelope(Contract):
    event_type: str
    service: Service
    thread_id: str
    event_id: str
    aggregate_id: str
    aggregate_version: int
    #: Position in the producing service's notification log (strictly increasing).
    position: int
    occurred_at: datetime
    payload: dict[str, Any]

    @property
    def msg_id(self) -> str:
        return f"{self.service}:{self.position}"

    @property
    def subject(self) -> str:
        return event_subject(self.service, self.event_type, self.thread_id)


class InteractionSpec(Contract):
    """What a paused node asks of a person (the guide's HumanInteractionRequest)."""

    id: str
    thread_id: str
    node_name: str
    interaction_type: InteractionType
    prompt: str
    context: dict[str, Any] = Field(default_factory=dict)
    options: tuple[str, ...] = ()
    timeout_seconds: float | None = None
    #: A policy object, a chain (list) of them, or a policy name (see contracts.timeouts).
    on_timeout: dict[str, Any] | list[Any] | str | None = None
    assignees: tuple[str, ...] = ()
    response_schema: dict[str, Any] | None = None
    #: Position of this request within a batch raised by one node (0-based).
    batch_index: int = 0
    batch_size: int = 1


# ---- payloads: workflow service -------------------------------------------------------------


class ThreadStarted(Contract):
    graph_name: str
    workflow_digest: str
    inputs: dict[str, Any]
    started_by: str


class NodeCompleted(Contract):
    node: str
    output: Any = None
    #: The state field the output was written to (none: the node writes no field).
    output_field: str | None = None
    route: Literal["success", "failure"] | None = None
    next_node: str | None = None
    duration_ms: float = 0.0
    details: dict[str, Any] | None = None


class NodeFailed(Contract):
    node: str
    error: str
    next_node: str | None = None


class ThreadPaused(Contract):
    node: str
    interactions: tuple[InteractionSpec, ...]


class ThreadResumed(Contract):
    node: str
    interaction_id: str
    action: str
    data: dict[str, Any] | None = None
    responder: str = "anonymous"
    by_timeout: bool = False
    #: Requests of the same node still unanswered (a batch resumes when this reaches 0).
    waiting_on: int = 0


class ThreadCompleted(Contract):
    node: str
    output: Any = None


class ThreadFailed(Contract):
    node: str | None
    error: str


class ThreadTimedOut(Contract):
    node: str
    interaction_id: str


class ThreadCancelled(Contract):
    reason: str
    requested_by: str


class CommandRefused(Contract):
    """A command for this thread that was refused before it could act: ``invalid_command`` (not
    of its contract, or a body naming another thread than its subject) or ``too_large``. The
    thread is unchanged; the event keeps the attempt in its history and audit."""

    command: Literal["start", "resume", "cancel", "timeout"]
    code: str
    reason: str


class NodeDecided(Contract):
    """An interaction node that decided without a person: its ``condition`` was false.

    ``expression``, ``inputs`` (the state values it named) and ``result`` say why; ``action``
    and ``data`` are the response taken in the person's place, ``value`` and ``route`` what it
    handed to the graph (the same rules as a person's answer).
    """

    node: str
    interaction_type: InteractionType
    expression: str
    inputs: dict[str, Any]
    result: bool
    action: str
    data: dict[str, Any] | None = None
    value: Any = None
    route: Literal["success", "failure"]


class FallbackTaken(Contract):
    """An interaction node that went to its automated fallback instead of asking a person.

    ``reason`` is ``policy`` (the node's fallback says ``"when": "always"``) or
    ``request_failed`` (its request could not be built; ``error`` says why). The fallback
    either routes to ``next_node`` or decides with ``action``/``data`` (``value``, ``route``).
    """

    node: str
    interaction_type: InteractionType
    reason: Literal["policy", "request_failed"]
    error: str | None = None
    next_node: str | None = None
    action: str | None = None
    data: dict[str, Any] | None = None
    value: Any = None
    route: Literal["success", "failure"] | None = None


# ---- payloads: interaction service ----------------------------------------------------------


class InteractionRequested(InteractionSpec):
    created_at: datetime
    deadline: datetime | None = None


class ResponseAccepted(Contract):
    """The guide's HumanInteractionResponse, plus who answered and with which key."""

    request_id: str
    node_name: str
    interaction_type: InteractionType
    action: str
    data: dict[str, Any] | None = None
    value: Any = None
    route: Literal["success", "failure"]
    timestamp: datetime
    responder: str
    idempotency_key: str
    #: True when the answer was taken by a timeout policy rather than a person.
    by_timeout: bool = False


class ResponseRejected(Contract):
    request_id: str | None
    action: str
    data_keys: tuple[str, ...] = ()
    responder: str
    idempotency_key: str
    code: str
    reason: str
    timestamp: datetime


class InteractionTimedOut(Contract):
    """The request's deadline passed and its policy closed it: ``fail`` (the thread times out)
    or ``default`` (``action`` was taken in the person's place: see ResponseAccepted)."""

    request_id: str
    node_name: str
    policy: str
    timestamp: datetime
    #: Which expiry of the request this was (0 = the first deadline).
    step: int = 0
    deadline: datetime | None = None
    action: str | None = None
    #: Why a default policy could not answer (the request then failed instead).
    detail: str | None = None


class InteractionCancelled(Contract):
    request_id: str
    reason: str


PAYLOADS: dict[str, type[BaseModel]] = {
    model.__name__: model
    for model in (
        ThreadStarted,
        NodeCompleted,
        NodeFailed,
        ThreadPaused,
        ThreadResumed,
        ThreadCompleted,
        ThreadFailed,
        ThreadTimedOut,
        ThreadCancelled,
        CommandRefused,
        NodeDecided,
        FallbackTaken,
        InteractionRequested,
        ResponseAccepted,
        ResponseRejected,
        InteractionTimedOut,
        InteractionCancelled,
        InteractionReminded,
        InteractionEscalated,
        DeadlineScheduled,
        DeadlineFired,
        DeadlineCleared,
    )
}


def parse_payload(envelope: EventEnvelope) -> BaseModel:
    """The typed payload of an envelope; raises KeyError for an unknown event type."""
    return PAYLOADS[envelope.event_type].model_validate(envelope.payload)
