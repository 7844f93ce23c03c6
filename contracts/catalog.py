"""Every NATS subject of the contract, in one table: what is sent there, how, who handles it,
which token names the thread, and the models of the message and its reply.

``docs/contract.md`` is generated from this table, the models and :mod:`contracts.limits`
(``hitlflow contract``); a test keeps the file equal to what the code generates and sends every
example in it to a real stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from contracts import subjects
from contracts.commands import (
    CancelThread,
    CommandReply,
    ResumeThread,
    StartThread,
    TaskCommand,
)
from contracts.events import PAYLOADS, EventEnvelope
from contracts.notifications import Notification
from contracts.queries import (
    ADMIN_REBUILD,
    Q_ANALYTICS,
    Q_AUDIT,
    AnalyticsQuery,
    AnalyticsReply,
    AuditQuery,
    AuditReply,
    MineQuery,
    PendingQuery,
    PendingReply,
    RebuildReply,
    RebuildRequest,
    ThreadQuery,
    ThreadReply,
    ThreadsQuery,
    ThreadsReply,
    TimelineQuery,
    TimelineReply,
)
from contracts.timeouts import (
    DeadlinesQuery,
    DeadlinesReply,
    TimeoutCheck,
    TimeoutCheckReply,
    TimeoutInteraction,
)

Kind = Literal["command", "query", "event", "notification", "control", "internal",
               "quarantine"]
#: ``jetstream``: publish to the stream and wait for its acknowledgement (stored, durable; the
#: reply, if any, comes to the ``Hitl-Reply-To`` inbox). ``request``: a core NATS request; the
#: reply comes to the request's own reply subject. ``core``: core NATS, at most once.
Transport = Literal["jetstream", "request", "core"]


@dataclass(frozen=True)
class Channel:
    subject: str
    kind: Kind
    transport: Transport
    summary: str
    #: Which part of the subject names the thread (the authority: a body naming another
    #: thread is refused), or "" when the subject names none.
    thread: str
    message: type[BaseModel] | None
    reply: type[BaseModel] | None = None
    stream: str | None = None
    #: Who publishes (for events) or who handles (for commands and queries).
    service: str = ""


BY_LAST_PART = "its last part"

CHANNELS: tuple[Channel, ...] = (
    Channel("hitl.cmd.start.{principal}.{thread_id}", "command", "jetstream",
            "Start a thread on the workflow it carries (the whole graph: a thread runs on "
            "exactly that version).", BY_LAST_PART, StartThread, CommandReply,
            subjects.COMMANDS_STREAM, "workflow"),
    Channel("hitl.cmd.resume.{principal}.{thread_id}", "command", "jetstream",
            "Answer a request of a paused thread (the guide's resume command).", BY_LAST_PART,
            ResumeThread, CommandReply, subjects.COMMANDS_STREAM, "interaction"),
    Channel("hitl.cmd.task.{principal}.{thread_id}", "command", "jetstream",
            "Claim, release, delegate or reassign a request of the thread.", BY_LAST_PART,
            TaskCommand, CommandReply, subjects.COMMANDS_STREAM, "interaction"),
    Channel("hitl.cmd.cancel.{principal}.{thread_id}", "command", "jetstream",
            "Cancel a thread that has not ended.", BY_LAST_PART, CancelThread, CommandReply,
            subjects.COMMANDS_STREAM, "workflow"),
    Channel("hitl.cmd.timeout.{thread_id}", "command", "jetstream",
            "A request's deadline passed: take the next step of its policy (sent by the "
            "timeout service).", BY_LAST_PART, TimeoutInteraction, CommandReply,
            subjects.COMMANDS_STREAM, "interaction"),
    Channel("hitl.evt.{service}.{event_type}.{thread_id}", "event", "jetstream",
            "Every event of every service, after it is saved (outbox relay). Header "
            "Nats-Msg-Id = <service>:<position>.", BY_LAST_PART, EventEnvelope, None,
            subjects.EVENTS_STREAM, "workflow, interaction, timeout"),
    Channel("hitl.notify.{thread_id}", "notification", "core",
            "A person is needed: one message per new request (also sent to webhooks).",
            BY_LAST_PART, Notification, None, None, "interaction"),
    Channel(f"{subjects.Q_THREAD}.{{thread_id}}", "query", "request",
            "One thread's status, current node and open requests.", BY_LAST_PART,
            ThreadQuery, ThreadReply, None, "projections"),
    Channel(f"{subjects.Q_TIMELINE}.{{thread_id}}", "query", "request",
            "One thread's events, oldest first, a page at a time.", BY_LAST_PART,
            TimelineQuery, TimelineReply, None, "projections"),
    Channel(f"{subjects.Q_PENDING}.{{thread_id}}", "query", "request",
            "One thread's open requests.", BY_LAST_PART, PendingQuery, PendingReply, None,
            "projections"),
    Channel(f"{subjects.Q_MINE}.{{principal}}", "query", "request",
            "Open requests the principal may answer now (claimed by them, or assigned to "
            "them, to one of their groups, or to anyone).", "", MineQuery, PendingReply, None,
            "projections"),
    Channel(subjects.Q_PENDING, "query", "request",
            "Open requests of every thread, oldest first, a page at a time.", "",
            PendingQuery, PendingReply, None, "projections"),
    Channel(subjects.Q_THREADS, "query", "request",
            "Threads, most recently updated first, a page at a time.", "", ThreadsQuery,
            ThreadsReply, None, "projections"),
    Channel(Q_AUDIT, "query", "request",
            "The audit trail: who answered what, when, and a digest of what they were shown.",
            "", AuditQuery, AuditReply, None, "projections"),
    Channel(Q_ANALYTICS, "query", "request",
            "Volume, response times, timeout and approval rates, bottlenecks, backlog.", "",
            AnalyticsQuery, AnalyticsReply, None, "projections"),
    Channel(ADMIN_REBUILD, "control", "request",
            "Drop views and replay every event store into them (an operator's request); "
            "RebuildProgress messages go to the request's progress_subject while it runs.", "",
            RebuildRequest, RebuildReply, None, "projections"),
    Channel(subjects.TIMEOUTS_CHECK, "control", "request",
            "Sweep for due deadlines now and fire them.", "", TimeoutCheck, TimeoutCheckReply,
            None, "timeout"),
    Channel(subjects.TIMEOUTS_LIST, "control", "request",
            "Pending deadlines and what each will do.", "", DeadlinesQuery, DeadlinesReply,
            None, "timeout"),
    Channel(f"{subjects.ADMIN_ERASE}.{{store}}", "control", "request",
            "Erase a thread's personal data in one service's store (`hitlflow erase`): "
            '`{"thread_id": ...}`; every replica answers `{"ok", "service", "erased_now"}`.',
            "", None, None, None, "workflow, interaction, timeout, projections"),
    Channel("hitl.sched.at.{request_id}.{thread_id}", "internal", "jetstream",
            "A held timer (NATS message schedule) of one request's deadline.", BY_LAST_PART,
            TimeoutInteraction, None, subjects.SCHEDULES_STREAM, "timeout"),
    Channel("hitl.sched.fire.{thread_id}", "internal", "jetstream",
            "What a timer publishes when it goes off.", BY_LAST_PART, TimeoutInteraction, None,
            subjects.SCHEDULES_STREAM, "timeout"),
    Channel("hitl.dlq.{source}", "quarantine", "jetstream",
            "A message no retry could handle, set aside so it holds back nothing: the original "
            "body, with headers Hitl-Error (why), Hitl-Source (the consumer, or relay-<service>),"
            " Hitl-Subject, Hitl-Thread, Hitl-Size, and Hitl-Stream-Seq or Hitl-Ref "
            "(<service>:<position>). Kept 30 days.", "", None, None, subjects.DLQ_STREAM,
            "every consumer and relay"),
)


@dataclass(frozen=True)
class Example:
    """A message exactly as an integrator would send it, and (part of) the reply it gets."""

    title: str
    subject: str
    transport: Transport
    body: dict[str, Any]
    #: Every key given here is in the reply with this value (recursively: a list's items are
    #: compared the same way, in order).
    reply: dict[str, Any]
    note: str = ""
    headers: dict[str, str] = field(default_factory=dict)


#: A workflow as StartThread carries it: what ``hitlflow run`` builds from a CSV.
EXAMPLE_WORKFLOW: dict[str, Any] = {
    "graph_name": "PurchaseApproval",
    "nodes": [
        {"name": "start", "agent_type": "input", "next_on_success": "approve",
         "input_fields": ["request"], "output_field": "request"},
        {"name": "approve", "agent_type": "approval_interaction", "next_on_success": "done",
         "next_on_failure": "refused", "prompt": "Please approve: {request}",
         "input_fields": ["request"], "output_field": "decision",
         "context": {"department": "Engineering"}},
        {"name": "done", "agent_type": "output", "prompt": "Approved: {request}",
         "input_fields": ["decision"], "output_field": "result"},
        {"name": "refused", "agent_type": "output", "prompt": "Refused: {request}",
         "input_fields": ["decision"], "output_field": "result"},
    ],
}

#: The id of the first request of a thread is derived from the thread id (uuid5): stable.
EXAMPLE_THREAD = "order-1042"
#: The system user the examples are sent as (a NATS user may publish only under its own name).
EXAMPLE_PRINCIPAL = "erp"
EXAMPLE_REQUEST = "91d6c7dc-fc01-55f1-922d-a4f06e2aa08e"
#: What its answer carries back: version 1, and the digest of its prompt, context and options.
EXAMPLE_SHOWN = "1:51576608a8359e5374a134d9be0bc4dc2aaa0072bdd5037a9c51f381f35ab0da"

EXAMPLES: tuple[Example, ...] = (
    Example(
        "Start a thread", f"hitl.cmd.start.erp.{EXAMPLE_THREAD}", "jetstream",
        {"thread_id": EXAMPLE_THREAD, "workflow": EXAMPLE_WORKFLOW,
         "state": {"request": "3 laptops for the new team"}},
        {"ok": True, "command": "start", "thread_id": EXAMPLE_THREAD, "duplicate": False},
        "The reply says the thread was started; it then runs until it pauses at `approve`."),
    Example(
        "See what it waits for", f"hitl.q.thread.{EXAMPLE_THREAD}", "request", {},
        {"thread": {"thread_id": EXAMPLE_THREAD, "status": "paused", "current_node": "approve",
                    "pending": [{"id": EXAMPLE_REQUEST, "node_name": "approve",
                                 "interaction_type": "approval", "shown": EXAMPLE_SHOWN,
                                 "prompt": "Please approve: 3 laptops for the new team",
                                 "context": {"department": "Engineering",
                                             "request": "3 laptops for the new team"}}]}},
        "Views follow the events within milliseconds; pass `after` (service → position, "
        "from the events you saw) to wait for a given change. `shown` is what an answer "
        "carries back: this version of the request."),
    Example(
        "Answer it", f"hitl.cmd.resume.erp.{EXAMPLE_THREAD}", "jetstream",
        {"thread_id": EXAMPLE_THREAD, "action": "reject",
         "data": {"reason": "Budget exceeds allocated amount"},
         "idempotency_key": "erp-7731", "shown": EXAMPLE_SHOWN},
        {"ok": True, "command": "resume", "thread_id": EXAMPLE_THREAD, "action": "reject",
         "interaction_id": EXAMPLE_REQUEST, "duplicate": False}),
    Example(
        "The same answer again (same idempotency key)",
        f"hitl.cmd.resume.erp.{EXAMPLE_THREAD}", "jetstream",
        {"thread_id": EXAMPLE_THREAD, "action": "reject",
         "data": {"reason": "Budget exceeds allocated amount"},
         "idempotency_key": "erp-7731", "shown": EXAMPLE_SHOWN},
        {"ok": True, "command": "resume", "interaction_id": EXAMPLE_REQUEST,
         "duplicate": True},
        "The first outcome, repeated; nothing changes."),
    Example(
        "Another answer: refused, and kept in the audit",
        f"hitl.cmd.resume.erp.{EXAMPLE_THREAD}", "jetstream",
        {"thread_id": EXAMPLE_THREAD, "action": "approve", "idempotency_key": "erp-7732",
         "shown": EXAMPLE_SHOWN},
        {"ok": False, "command": "resume", "code": "thread_ended"}),
    Example(
        "A body naming another thread than its subject: refused",
        "hitl.cmd.cancel.erp.order-1043", "jetstream",
        {"thread_id": EXAMPLE_THREAD, "reason": "wrong subject"},
        {"ok": False, "command": "cancel", "code": "invalid_command"}),
    Example(
        "Its outcome and history", f"hitl.q.timeline.{EXAMPLE_THREAD}", "request",
        {"limit": 3},
        {"thread": {"status": "completed", "output": "Refused: 3 laptops for the new team"},
         "events": [{"event_type": "ThreadStarted"}, {"event_type": "NodeCompleted"},
                    {"event_type": "ThreadPaused"}]},
        "Three events a page: pass `next` back as `after` for the next page."),
    Example(
        "Who answered", "hitl.q.audit", "request",
        {"thread_id": EXAMPLE_THREAD, "event": "accepted"},
        {"entries": [{"thread_id": EXAMPLE_THREAD, "event": "accepted", "action": "reject",
                      "responder": "erp", "principal": "erp", "data_keys": ["reason"]}],
         "next": None}),
)

#: Which event types end a thread, and the status each gives it.
ENDING_EVENTS = {"ThreadCompleted": "completed", "ThreadFailed": "failed",
                 "ThreadTimedOut": "timed_out", "ThreadCancelled": "cancelled"}

#: Which service publishes each event type.
EVENT_SERVICES: dict[str, str] = {
    **dict.fromkeys(("ThreadStarted", "NodeCompleted", "NodeFailed", "ThreadPaused",
                     "ThreadResumed", "ThreadCompleted", "ThreadFailed", "ThreadTimedOut",
                     "ThreadCancelled", "CommandRefused", "NodeDecided", "FallbackTaken"),
                    "workflow"),
    **dict.fromkeys(("InteractionRequested", "ResponseAccepted", "ResponseRejected",
                     "InteractionClaimed", "InteractionReleased", "InteractionDelegated",
                     "InteractionReassigned", "VoteCast", "InteractionTimedOut",
                     "InteractionCancelled", "InteractionReminded", "InteractionEscalated"),
                    "interaction"),
    **dict.fromkeys(("DeadlineScheduled", "DeadlineFired", "DeadlineCleared"), "timeout"),
}

#: A reply's fields that name a limit (contracts.limits LIMITS key), for the field tables.
FIELD_LIMITS = {
    ("StartThread", "state"): "state",
    ("ResumeThread", "data"): "answer",
    ("ResumeThread", "raw_data"): "answer",
    ("ResumeThread", "groups"): "groups",
    ("TaskCommand", "groups"): "groups",
    ("TaskCommand", "to"): "groups",
}


def event_types() -> list[str]:
    return sorted(PAYLOADS, key=lambda name: (list(EVENT_SERVICES).index(name)
                                              if name in EVENT_SERVICES else 99, name))

#: Every code a refusal may carry: the HTTP status the gateway gives it, and what it means.
REFUSAL_CODES: dict[str, tuple[int, str]] = {
    "invalid_command": (422, "the message is not of its contract (a field, a type, a length), "
                             "or its body names another thread than its subject"),
    "too_large": (413, "an input over its limit (contracts/limits.py; the error names it)"),
    "invalid_response": (422, "the answer does not fit the request: action, data or schema"),
    "unknown_thread": (404, "no thread with that id has started"),
    "thread_ended": (409, "the thread has ended; nothing waits for an answer"),
    "not_waiting": (409, "the thread waits on no request, or not on the one named"),
    "already_answered": (409, "the request was answered before; the first answer stands"),
    "ambiguous_request": (409, "the thread waits on several requests: name one (request_id)"),
    "late": (409, "the request timed out before the answer came"),
    "thread_exists": (409, "start: the thread id is in use"),
    "unknown_agent": (422, "start: the workflow names agent types this stack does not know"),
    "missing_input": (422, "start: the state lacks a field the start node needs"),
    "invalid_workflow": (422, "start: the workflow has errors (the error names each)"),
    "stale": (409, "timeout: the step was taken before, or the request is closed"),
    "not_due": (409, "timeout: the deadline has not passed yet"),
    "unknown_request": (404, "timeout: no such request"),
    "invalid_query": (400, "a query that breaks its model, or names another thread than its "
                           "subject"),
    "not_found": (404, "a query about a thread that does not exist"),
    "query_failed": (500, "the projections failed while answering (the error says why)"),
    "forbidden": (403, "the principal may not do this: the request is for others (assignees, "
                       "groups, a quorum's voters), claimed by someone else, or the principal "
                       "asserted what only a system or the gateway may (acting for someone)"),
    "stale_view": (409, "the answer was given to an earlier version of the request (it was "
                        "escalated, reassigned or delegated since): look again, answer again"),
    "claimed": (409, "task: the request is claimed by someone else"),
    "not_claimed": (409, "task: the request is not claimed"),
    "not_claimable": (409, "task: a quorum request is answered by every voter, not claimed"),
    "already_voted": (409, "quorum: this person has voted on the request already"),
    "quarantined": (500, "the command could not be handled (a fault, not its contract) and was "
                         "quarantined after repeated attempts; `hitlflow doctor` shows it"),
}
