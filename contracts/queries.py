"""Queries answered over NATS request/reply (``hitl.q.*``) from the projections."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from contracts.base import Contract


class ThreadQuery(Contract):
    thread_id: str
    #: Read-your-writes: answer only once the view has applied these positions
    #: (service → position in its notification log), or after a bounded wait.
    after: dict[str, int] = Field(default_factory=dict)


class ThreadsQuery(Contract):
    status: str | None = None
    graph_name: str | None = None
    limit: int = Field(default=100, ge=1, le=10_000)


class PendingQuery(Contract):
    thread_id: str | None = None
    limit: int = Field(default=100, ge=1, le=10_000)


class PendingInteraction(Contract):
    id: str
    thread_id: str
    node_name: str
    interaction_type: str
    prompt: str
    context: dict[str, Any]
    options: list[str]
    assignees: list[str]
    timeout_seconds: float | None
    deadline: datetime | None
    created_at: datetime
    batch_index: int = 0
    batch_size: int = 1


class ThreadView(Contract):
    thread_id: str
    graph_name: str
    workflow_digest: str
    status: str
    current_node: str | None
    started_by: str
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    error: str | None = None
    output: Any = None
    pending: list[PendingInteraction] = Field(default_factory=list)


class QueryError(Contract):
    error: str
    code: str = "not_found"


class ThreadReply(Contract):
    thread: ThreadView | None = None
    error: QueryError | None = None


class ThreadsReply(Contract):
    threads: list[ThreadView]


class PendingReply(Contract):
    pending: list[PendingInteraction]
