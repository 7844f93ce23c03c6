"""Integration events as published on ``HITL_EVENTS``.

Subject: ``hitl.evt.<service>.<event_type>.<thread_id>``; header ``Nats-Msg-Id`` is
``<service>:<position>`` so a re-sent event is dropped by the stream's de-duplication.
The ``payload`` of each event type is described by the model of the same name below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts.base import Contract
from contracts.jsontext import encoder
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


#: The canonical JSON encoder, made once (the text of ``json.dumps`` with these options).
_canonical = encoder(sort_keys=True, default=None)


def shown_digest(prompt: str, context: dict[str, Any], options: Sequence[str]) -> str:
    """sha256 (hex) of what a request shows: the canonical JSON (keys sorted, no spaces,
    UTF-8) of ``{"context": ..., "options": [...], "prompt": ...}``."""
    canonical = _canonical({"context": context, "options": list(options), "prompt": prompt})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def shown_token(version: int, digest: str) -> str:
    """A request's ``shown``: its version (raised each time it is re-sent: escalated,
    reassigned, delegated) and the digest of what it shows. An answer carries it back."""
    return f"{version}:{digest}"


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
    #: Groups whose members may answer too (``candidate_groups`` in the node's context).
    candidate_groups: tuple[str, ...] = ()
    #: N of M approvals: ``{"approvals": N, "of": [names]}`` or ``{"approvals": N, "group":
    #: name}``, and ``"reject": "veto"`` (default: one reject decides) or ``"majority"``.
    quorum: dict[str, Any] | None = None
    response_schema: dict[str, Any] | None = None
    #: Context fields the node marks sensitive (``"sensitive": [...]``): the audit keeps their
    #: keys and digests, never their values.
    sensitive: tuple[str, ...] = ()
    #: Position of this request within a batch raised by one node (0-based).
    batch_index: int = 0
    batch_size: int = 1


# ---- payloads: workflow service -------------------------------------------------------------


class ThreadStarted(Contract):
    graph_name: str
    workflow_digest: str
    inputs: dict[str, Any]
    #: The principal that started it (and the person it acted for, if any).
    started_by: str
    on_behalf_of: str | None = None


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
    #: Whose answer it was (the person a system acted for, else the principal).
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
    #: The principal that cancelled it (and the person it acted for, if any).
    requested_by: str
    on_behalf_of: str | None = None


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
    #: What an answer carries back (``ResumeThread.shown``): version 1 and the digest of the
    #: prompt, context and options (:func:`shown_token`).
    shown: str = ""


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
    #: Whose answer it is: the person a system acted for, else the principal.
    responder: str
    idempotency_key: str
    #: True when the answer was taken by a timeout policy rather than a person.
    by_timeout: bool = False
    #: The authenticated principal that sent it, and the person it acted for (if any).
    principal: str | None = None
    on_behalf_of: str | None = None
    #: The ``shown`` the answer was given to.
    shown: str | None = None
    #: A quorum's votes, in the order cast (``{"voter", "action"}``), when it decided.
    votes: list[dict[str, Any]] | None = None


class ResponseRejected(Contract):
    request_id: str | None
    action: str
    data_keys: tuple[str, ...] = ()
    responder: str
    idempotency_key: str
    code: str
    reason: str
    timestamp: datetime
    principal: str | None = None
    on_behalf_of: str | None = None


class InteractionClaimed(Contract):
    """The request was claimed: only ``claimed_by`` may answer it until it is released."""

    request_id: str
    node_name: str
    claimed_by: str
    principal: str
    timestamp: datetime


class InteractionReleased(Contract):
    """The claim was given up (by the claimant, or an operator): anyone assigned may answer."""

    request_id: str
    node_name: str
    released_by: str
    principal: str
    timestamp: datetime


class InteractionDelegated(Contract):
    """The request was handed to ``to``, who becomes its claimant; it is shown anew."""

    request_id: str
    node_name: str
    from_person: str
    to: str
    principal: str
    timestamp: datetime
    shown: str


class InteractionReassigned(Contract):
    """An operator changed who the request is assigned to; its claim is dropped and it is
    shown anew."""

    request_id: str
    node_name: str
    from_assignees: tuple[str, ...] = ()
    assignees: tuple[str, ...] = ()
    candidate_groups: tuple[str, ...] = ()
    principal: str
    timestamp: datetime
    shown: str


class VoteCast(Contract):
    """One vote of a quorum request (N of M approvals); ``approvals`` and ``rejections``
    count the votes so far. The vote that decides is followed by ResponseAccepted."""

    request_id: str
    node_name: str
    voter: str
    principal: str
    on_behalf_of: str | None = None
    action: str
    data_keys: tuple[str, ...] = ()
    approvals: int
    rejections: int
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
        InteractionClaimed,
        InteractionReleased,
        InteractionDelegated,
        InteractionReassigned,
        VoteCast,
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
