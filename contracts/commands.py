"""Commands (imperative) and their replies.

Commands are published to the ``HITL_COMMANDS`` stream. A sender that wants the outcome puts
an inbox subject in the ``Hitl-Reply-To`` header; the handling service publishes a
:class:`CommandReply` there once the command has been decided.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from contracts.base import Contract
from contracts.limits import (
    MAX_ACTION,
    MAX_GROUPS,
    MAX_IDEMPOTENCY_KEY,
    MAX_NAME,
    MAX_REASON,
    MAX_REQUEST_ID,
    MAX_SHOWN,
)
from contracts.subjects import check_thread_id
from contracts.workflow import WorkflowSpec

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


class _ThreadCommand(Contract):
    thread_id: str
    #: Who the command is from is the principal its subject names (each NATS user may publish
    #: only under its own name). The HTTP gateway, which authenticated someone itself, names
    #: them here; from anyone else a ``principal`` other than the subject's is refused.
    principal: Name | None = None
    #: A system (or the gateway) acting for a person names the person; refused from others.
    on_behalf_of: Name | None = None

    @field_validator("thread_id")
    @classmethod
    def _valid_thread_id(cls, value: str) -> str:
        return check_thread_id(value)


class StartThread(_ThreadCommand):
    """Start a thread on ``workflow`` (the whole graph, as ``hitlflow run`` builds it from a
    CSV: at most 500 nodes, and the command at most 1 MiB) with ``state`` as its inputs."""

    workflow: WorkflowSpec
    #: At most ``MAX_STATE_BYTES`` as JSON (refused ``too_large`` by the workflow service).
    state: dict[str, Any] = Field(default_factory=dict)


class _Answering(_ThreadCommand):
    #: The groups of the person answering, asserted by a system acting for them or by the
    #: gateway (from the token's claims); refused from others, whose groups the directory says.
    groups: list[Name] | None = Field(default=None, max_length=MAX_GROUPS)
    #: Which pending request; needed only when a thread waits on several.
    request_id: str | None = Field(default=None, max_length=MAX_REQUEST_ID)
    #: The same key sent again gets the same outcome and changes nothing.
    idempotency_key: str = Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)


class ResumeThread(_Answering):
    """A human response. ``data`` must be a JSON object (or absent)."""

    action: str = Field(min_length=1, max_length=MAX_ACTION)
    #: Should be a JSON object; anything else is refused (and audited) by the service. At most
    #: ``MAX_ANSWER_BYTES`` as JSON: more is refused ``too_large`` (and audited).
    data: Any = None
    #: The data exactly as typed when it was not valid JSON (refused and audited, not dropped).
    raw_data: str | None = None
    #: What the answer was given to: the request's ``shown`` (from its InteractionRequested,
    #: notification or pending entry). An answer to an older version of the request (it was
    #: escalated, reassigned, delegated) is refused ``stale_view``.
    shown: str = Field(min_length=1, max_length=MAX_SHOWN)


class TaskCommand(_Answering):
    """Claim, release, delegate or reassign a request (the task operations of a tasklist).

    ``claim``: the request becomes answerable by the claimant alone; ``release``: by anyone
    it is assigned to again; ``delegate``: the claimant (or an assignee) hands it to ``to``
    (one person), who becomes its claimant; ``reassign`` (operators): ``to`` and
    ``candidate_groups`` become who it is assigned to. Each is an event of the request."""

    op: Literal["claim", "release", "delegate", "reassign"]
    to: list[Name] = Field(default_factory=list, max_length=MAX_GROUPS)
    candidate_groups: list[Name] = Field(default_factory=list, max_length=MAX_GROUPS)


class CancelThread(_ThreadCommand):
    """Cancel a thread that has not ended; its open requests are closed."""

    reason: str = Field(default="", max_length=MAX_REASON)


class CommandReply(Contract):
    """Outcome of a command, sent to the ``Hitl-Reply-To`` subject."""

    ok: bool
    command: Literal["start", "resume", "cancel", "timeout", "task"]
    thread_id: str
    #: Stable machine-readable reason when ``ok`` is false, e.g. ``invalid_response``.
    code: str | None = None
    error: str | None = None
    interaction_id: str | None = None
    action: str | None = None
    #: True when this outcome repeats an earlier one (same idempotency key or thread id).
    duplicate: bool = False
    #: False when an accepted answer did not decide its request yet: a vote of a quorum that
    #: is still open (the thread does not move until the quorum decides).
    decided: bool = True
