"""Commands (imperative) and their replies.

Commands are published to the ``HITL_COMMANDS`` stream. A sender that wants the outcome puts
an inbox subject in the ``Hitl-Reply-To`` header; the handling service publishes a
:class:`CommandReply` there once the command has been decided.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from contracts.base import Contract
from contracts.limits import MAX_ACTION, MAX_IDEMPOTENCY_KEY, MAX_NAME, MAX_REASON, MAX_REQUEST_ID
from contracts.subjects import check_thread_id
from contracts.workflow import WorkflowSpec


class _ThreadCommand(Contract):
    thread_id: str

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
    started_by: str = Field(default="anonymous", max_length=MAX_NAME)


class ResumeThread(_ThreadCommand):
    """A human response. ``data`` must be a JSON object (or absent)."""

    action: str = Field(min_length=1, max_length=MAX_ACTION)
    #: Should be a JSON object; anything else is refused (and audited) by the service. At most
    #: ``MAX_ANSWER_BYTES`` as JSON: more is refused ``too_large`` (and audited).
    data: Any = None
    #: The data exactly as typed when it was not valid JSON (refused and audited, not dropped).
    raw_data: str | None = None
    #: Which pending request is answered; needed only when a thread waits on several.
    request_id: str | None = Field(default=None, max_length=MAX_REQUEST_ID)
    #: The same key sent again gets the same outcome and changes nothing.
    idempotency_key: str = Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)
    responder: str = Field(default="anonymous", max_length=MAX_NAME)


class CancelThread(_ThreadCommand):
    """Cancel a thread that has not ended; its open requests are closed."""

    reason: str = Field(default="", max_length=MAX_REASON)
    requested_by: str = Field(default="anonymous", max_length=MAX_NAME)


class CommandReply(Contract):
    """Outcome of a command, sent to the ``Hitl-Reply-To`` subject."""

    ok: bool
    command: Literal["start", "resume", "cancel", "timeout"]
    thread_id: str
    #: Stable machine-readable reason when ``ok`` is false, e.g. ``invalid_response``.
    code: str | None = None
    error: str | None = None
    interaction_id: str | None = None
    action: str | None = None
    #: True when this outcome repeats an earlier one (same idempotency key or thread id).
    duplicate: bool = False
