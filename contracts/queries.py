"""Queries answered over NATS request/reply (``hitl.q.*``) from the projections.

Send the JSON of a ``…Query`` model to its subject with a NATS request; the reply is the JSON of
the matching ``…Reply`` model. A query that breaks its model is answered with ``error``
(``code="invalid_query"``) naming the field and what was expected; so is a query about one
thread whose body names another thread than its subject. Lists come in pages of at most
``limit`` items and ``MAX_PAGE_BYTES`` (``contracts.limits``): pass the reply's ``next`` cursor
back as ``after`` until it is null.

| subject | request | reply |
|---|---|---|
| ``hitl.q.thread.<thread_id>`` | :class:`ThreadQuery` | :class:`ThreadReply` |
| ``hitl.q.threads`` | :class:`ThreadsQuery` | :class:`ThreadsReply` |
| ``hitl.q.pending[.<thread_id>]`` | :class:`PendingQuery` | :class:`PendingReply` |
| ``hitl.q.timeline.<thread_id>`` | :class:`TimelineQuery` | :class:`TimelineReply` |
| ``hitl.q.audit`` | :class:`AuditQuery` | :class:`AuditReply` |
| ``hitl.q.analytics`` | :class:`AnalyticsQuery` | :class:`AnalyticsReply` |
| ``hitl.admin.projections.rebuild`` | :class:`RebuildRequest` | :class:`RebuildReply` |

A rebuild whose request names a ``progress_subject`` publishes :class:`RebuildProgress`
messages there while it runs (a few per second, the last one with ``done == total``), before
its reply.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import Field, model_validator

from contracts.base import Contract
from contracts.limits import MAX_PAGE_ITEMS

Q_AUDIT: Final = "hitl.q.audit"
Q_ANALYTICS: Final = "hitl.q.analytics"
#: Drop views and replay every service's event store into them (an operator's request).
ADMIN_REBUILD: Final = "hitl.admin.projections.rebuild"

VIEW_NAMES: tuple[str, ...] = ("thread_status", "audit_trail", "analytics")
THREAD_STATUSES: tuple[str, ...] = ("running", "paused", "completed", "failed", "timed_out",
                                    "cancelled")
AUDIT_EVENTS: tuple[str, ...] = ("requested", "accepted", "rejected", "timed_out", "cancelled",
                                 "reminded", "escalated", "decided", "fallback", "refused",
                                 "claimed", "released", "delegated", "reassigned", "voted")


class QueryError(Contract):
    error: str
    code: str = "not_found"


class Cursor(Contract):
    """Where a page ended: pass it back as ``after`` for the next page."""

    at_ts: float
    service: str
    position: int


# ---- thread status ----------------------------------------------------------------------------


class ThreadQuery(Contract):
    #: Optional: the subject names the thread; when given it must be the same one.
    thread_id: str | None = None
    #: Read-your-writes: answer only once the view has applied these positions
    #: (service → position in its notification log), or after a bounded wait.
    after: dict[str, int] = Field(default_factory=dict)


class ThreadsCursor(Contract):
    """Where a page of threads ended (threads come most recently updated first)."""

    updated_at: str
    thread_id: str


class ThreadsQuery(Contract):
    status: Literal["running", "paused", "completed", "failed", "timed_out",
                    "cancelled"] | None = None
    graph_name: str | None = None
    #: Items of this page, at most (a page also ends at MAX_PAGE_BYTES; then ``next`` is set).
    limit: int = Field(default=100, ge=1, le=MAX_PAGE_ITEMS)
    after: ThreadsCursor | None = None


class PendingCursor(Contract):
    """Where a page of pending requests ended (oldest first)."""

    created_at: str
    batch_index: int
    id: str


class PendingQuery(Contract):
    #: Optional on ``hitl.q.pending.<thread_id>`` (the subject names the thread; when given it
    #: must be the same one); on ``hitl.q.pending`` it narrows to one thread.
    thread_id: str | None = None
    limit: int = Field(default=100, ge=1, le=MAX_PAGE_ITEMS)
    after: PendingCursor | None = None


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
    #: What an answer carries back as ``shown`` (this version of the request).
    shown: str = ""
    candidate_groups: list[str] = Field(default_factory=list)
    #: Who claimed it (only they may answer until it is released), if anyone has.
    claimed_by: str | None = None
    quorum: dict[str, Any] | None = None
    #: A quorum's votes so far (``{"voter", "action"}``).
    votes: list[dict[str, Any]] = Field(default_factory=list)
    #: The JSON Schema the answer's data must satisfy (the node's ``response_schema``), if any.
    response_schema: dict[str, Any] | None = None


class MineQuery(Contract):
    """Open requests the asker may answer now (``hitl.q.mine.<principal>``): claimed by them,
    or unclaimed and assigned to them, to one of their groups or to anyone."""

    #: Whom the gateway authenticated, and their groups (from the gateway's user only; others
    #: are who their subject names, with the groups the directory gives them).
    principal: str | None = None
    groups: list[str] | None = None
    limit: int = Field(default=100, ge=1, le=MAX_PAGE_ITEMS)
    after: PendingCursor | None = None


class ThreadView(Contract):
    thread_id: str
    graph_name: str
    workflow_digest: str
    #: running, paused, completed, failed, timed_out or cancelled.
    status: str
    current_node: str | None
    started_by: str
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    error: str | None = None
    output: Any = None
    pending: list[PendingInteraction] = Field(default_factory=list)


class ThreadReply(Contract):
    thread: ThreadView | None = None
    error: QueryError | None = None


class ThreadsReply(Contract):
    threads: list[ThreadView] = Field(default_factory=list)
    #: Set when more threads match: send the query again with ``after`` = this.
    next: ThreadsCursor | None = None
    error: QueryError | None = None


class PendingReply(Contract):
    pending: list[PendingInteraction] = Field(default_factory=list)
    next: PendingCursor | None = None
    error: QueryError | None = None


class TimelineQuery(Contract):
    """Every event of one thread, from every service, in the order they happened."""

    #: Optional: the subject names the thread; when given it must be the same one.
    thread_id: str | None = None
    #: Read-your-writes, as in :class:`ThreadQuery`.
    after_positions: dict[str, int] = Field(default_factory=dict)
    after: Cursor | None = None
    limit: int = Field(default=500, ge=1, le=MAX_PAGE_ITEMS)


class TimelineEvent(Contract):
    at: datetime
    at_ts: float
    service: str
    position: int
    event_type: str
    aggregate_version: int
    payload: dict[str, Any]


class TimelineReply(Contract):
    thread: ThreadView | None = None
    events: list[TimelineEvent] = Field(default_factory=list)
    next: Cursor | None = None
    error: QueryError | None = None


# ---- audit trail ------------------------------------------------------------------------------


class AuditQuery(Contract):
    """Audit entries matching every filter given, oldest first, one page at a time."""

    thread_id: str | None = None
    node_name: str | None = None
    responder: str | None = None
    action: str | None = None
    interaction_type: str | None = None
    request_id: str | None = None
    #: requested, accepted, rejected, timed_out, cancelled, reminded, escalated, decided,
    #: fallback.
    event: Literal["requested", "accepted", "rejected", "timed_out", "cancelled", "reminded",
                   "escalated", "decided", "fallback", "refused", "claimed", "released",
                   "delegated", "reassigned", "voted"] | None = None
    #: Entries at or after ``since`` and before ``until``.
    since: datetime | None = None
    until: datetime | None = None
    after: Cursor | None = None
    limit: int = Field(default=MAX_PAGE_ITEMS, ge=1, le=MAX_PAGE_ITEMS)

    @model_validator(mode="after")
    def _range(self) -> AuditQuery:
        if self.since and self.until and self.since >= self.until:
            raise ValueError(f"since ({self.since.isoformat()}) must be before until "
                             f"({self.until.isoformat()})")
        return self


class AuditEntry(Contract):
    """One thing that happened to an interaction: who, when, what, and what they were shown."""

    at: datetime
    event: str
    event_type: str
    service: str
    position: int
    thread_id: str
    request_id: str | None = None
    node_name: str | None = None
    interaction_type: str | None = None
    action: str | None = None
    #: Whose answer (or act) it was: the person a system acted for, else the principal.
    responder: str | None = None
    #: The authenticated principal that sent it, and the person it acted for (if any).
    principal: str | None = None
    on_behalf_of: str | None = None
    #: The version of the request an answer was given to (ResumeThread.shown).
    shown: str | None = None
    #: Keys of the response data (never the values).
    data_keys: list[str] = Field(default_factory=list)
    by_timeout: bool = False
    code: str | None = None
    reason: str | None = None
    idempotency_key: str | None = None
    #: sha256 (hex) of what the request showed: canonical JSON of prompt, context and options.
    digest: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditReply(Contract):
    entries: list[AuditEntry] = Field(default_factory=list)
    next: Cursor | None = None
    error: QueryError | None = None


# ---- analytics --------------------------------------------------------------------------------


class AnalyticsQuery(Contract):
    """Metrics of the requests created in ``[since, until)``, as they stood at ``until``.

    ``until`` defaults to now; ``since`` to ``days`` (default 30) before ``until``.
    """

    since: datetime | None = None
    until: datetime | None = None
    days: float | None = Field(default=None, gt=0)
    #: A node is a bottleneck when it raised more than this many requests in the window.
    bottleneck_threshold: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _window(self) -> AnalyticsQuery:
        if self.since is not None and self.days is not None:
            raise ValueError("give either since or days, not both")
        if self.since and self.until and self.since >= self.until:
            raise ValueError(f"since ({self.since.isoformat()}) must be before until "
                             f"({self.until.isoformat()})")
        return self


class Metrics(Contract):
    #: Requests created in the window.
    total: int = 0
    #: … answered by a person before ``until``.
    answered: int = 0
    #: … closed by their timeout policy (failed or a default answer) before ``until``.
    timed_out: int = 0
    cancelled: int = 0
    rejected_attempts: int = 0
    reminders: int = 0
    escalations: int = 0
    #: Seconds from request to a person's accepted answer.
    avg_response_time_s: float | None = None
    p50_response_time_s: float | None = None
    p95_response_time_s: float | None = None
    #: timed_out / total.
    timeout_rate: float | None = None
    #: approve / (approve + reject) over approval requests answered by a person.
    approval_rate: float | None = None
    #: Requests open at ``until`` (created any time before it), and the oldest one's age.
    pending: int = 0
    oldest_pending_age_s: float | None = None


class Bottleneck(Contract):
    node: str
    interaction_count: int
    type: Literal["high_interaction_volume"] = "high_interaction_volume"


class AnalyticsReply(Contract):
    since: datetime | None = None
    until: datetime | None = None
    #: The guide's metrics, for the whole window.
    total_interactions: int = 0
    by_type: dict[str, int] = Field(default_factory=dict)
    avg_response_time: float | None = None
    timeout_rate: float | None = None
    approval_rate: float | None = None
    overall: Metrics = Field(default_factory=Metrics)
    per_type: dict[str, Metrics] = Field(default_factory=dict)
    per_node: dict[str, Metrics] = Field(default_factory=dict)
    #: By identity: per responder (people's own answers), per candidate group, and the
    #: requests open at ``until`` per person they wait on (the claimant, else each assignee).
    per_responder: dict[str, Metrics] = Field(default_factory=dict)
    per_group: dict[str, Metrics] = Field(default_factory=dict)
    workload: dict[str, int] = Field(default_factory=dict)
    bottlenecks: list[Bottleneck] = Field(default_factory=list)
    error: QueryError | None = None


# ---- rebuilding -------------------------------------------------------------------------------


class RebuildRequest(Contract):
    #: Views to rebuild (thread_status, audit_trail, analytics); empty: all of them.
    views: list[Literal["thread_status", "audit_trail", "analytics"]] = Field(
        default_factory=list)
    #: A subject (no wildcards) that gets :class:`RebuildProgress` messages while the rebuild
    #: runs; none: no progress messages.
    progress_subject: str | None = Field(default=None, min_length=1, max_length=256,
                                         pattern=r"^[^\s*>]+$")


class RebuildProgress(Contract):
    """How far a rebuild got: published to the request's ``progress_subject``."""

    views: list[str]
    #: Events replayed into the views so far.
    done: int
    #: What there is to replay: the notifications in the stores (internal events included, so
    #: an upper bound); the last message has ``done == total``.
    total: int
    #: Events replayed per second so far, and seconds since the rebuild began.
    rate: float
    elapsed: float


class RebuildReply(Contract):
    ok: bool = False
    views: list[str] = Field(default_factory=list)
    #: Notifications read from each service's store, and events replayed into the views.
    read: dict[str, int] = Field(default_factory=dict)
    events: int = 0
    seconds: float = 0.0
    events_per_second: float = 0.0
    error: QueryError | None = None
