"""A thread as it stood at any event of its history, computed from its events alone.

The events are the thread's timeline (every service's events of the thread, in the order they
happened: ``thread_status.timeline``); folding the first N of them gives the thread after
event N: its status, current node, state values (inputs and every output field written), the
requests open then with exactly what they showed (prompt, context, options and their digest),
every answer accepted and every attempt refused so far. No agent runs again.

``at`` is an event number (1 = the first event) or a moment (the last event at or before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import Field as ModelField

from contracts.base import Contract
from contracts.events import shown_digest
from contracts.queries import TimelineEvent

ENDINGS = {"ThreadCompleted": "completed", "ThreadFailed": "failed",
           "ThreadTimedOut": "timed_out", "ThreadCancelled": "cancelled"}


class TimeTravelError(ValueError):
    """An ``at`` that names no event of the thread (before the first, beyond the last, or not a
    number or a moment)."""


class ShownRequest(Contract):
    """A request as the person saw it, and what became of it by then."""

    id: str
    node_name: str
    interaction_type: str
    prompt: Any
    context: Any
    options: Any
    #: sha256 of what was shown (the audit trail's digest).
    digest: str
    created_at: str | None = None
    deadline: str | None = None
    assignees: list[str] = ModelField(default_factory=list)
    #: pending, answered, timed_out or cancelled (as of the event).
    status: str = "pending"


class Answer(Contract):
    request_id: str
    node_name: str | None = None
    action: str
    data: Any = None
    responder: str | None = None
    at: str
    by_timeout: bool = False


class Attempt(Contract):
    request_id: str | None = None
    action: str
    responder: str | None = None
    code: str
    reason: Any = None
    at: str


class ThreadAt(Contract):
    """The thread after event ``event_number`` of ``events_total``."""

    thread_id: str
    event_number: int
    events_total: int
    at: datetime
    event_type: str
    service: str
    graph_name: str | None = None
    status: str = "unknown"
    current_node: str | None = None
    state: dict[str, Any] = ModelField(default_factory=dict)
    output: Any = None
    error: Any = None
    #: Requests open after this event, with exactly what they showed.
    pending: list[ShownRequest] = ModelField(default_factory=list)
    #: Every request raised so far (open or closed).
    requests: list[ShownRequest] = ModelField(default_factory=list)
    answers: list[Answer] = ModelField(default_factory=list)
    rejected: list[Attempt] = ModelField(default_factory=list)


def _moment(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def resolve(events: Sequence[TimelineEvent], at: str | int, thread_id: str) -> int:
    """The event number ``at`` names (1-based), or :class:`TimeTravelError` saying why none."""
    total = len(events)
    if not total:
        raise TimeTravelError(f"thread {thread_id!r} has no events")
    text = str(at).strip()
    if text.lstrip("-").isdigit():
        number = int(text)
        if number < 1:
            raise TimeTravelError(f"--at {number} is before the first event: the events of "
                                  f"thread {thread_id!r} are numbered 1 to {total}")
        if number > total:
            raise TimeTravelError(f"--at {number} is beyond the last event: thread "
                                  f"{thread_id!r} has {total} events (1 to {total})")
        return number
    moment = _moment(text)
    if moment is None:
        raise TimeTravelError(f"--at {text!r} is neither an event number (1 to {total}) nor a "
                              "moment (ISO 8601, e.g. 2026-03-01T12:00:00Z)")
    first = events[0].at if events[0].at.tzinfo else events[0].at.replace(tzinfo=UTC)
    if moment < first:
        raise TimeTravelError(f"--at {moment.isoformat()} is before the first event of thread "
                              f"{thread_id!r} ({first.isoformat()})")
    stamp = moment.timestamp()
    number = sum(1 for event in events if event.at_ts <= stamp)
    return max(number, 1)


def fold(thread_id: str, events: Sequence[TimelineEvent], number: int) -> ThreadAt:
    """The thread after its first ``number`` events (``number`` from :func:`resolve`)."""
    last = events[number - 1]
    view = _Fold()
    requests: dict[str, dict[str, Any]] = {}
    open_ids: list[str] = []
    for event in events[:number]:
        _apply(view, requests, open_ids, event)
    return ThreadAt(
        thread_id=thread_id, event_number=number, events_total=len(events), at=last.at,
        event_type=last.event_type, service=last.service, graph_name=view.graph_name,
        status=view.status, current_node=view.current_node, state=view.state,
        output=view.output, error=view.error,
        pending=[ShownRequest(**requests[i]) for i in open_ids if i in requests],
        requests=[ShownRequest(**r) for r in requests.values()],
        answers=view.answers, rejected=view.rejected)


@dataclass
class _Fold:
    graph_name: str | None = None
    status: str = "unknown"
    current_node: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    error: Any = None
    answers: list[Answer] = field(default_factory=list)
    rejected: list[Attempt] = field(default_factory=list)


def _apply(view: _Fold, requests: dict[str, dict[str, Any]], open_ids: list[str],
           event: TimelineEvent) -> None:
    p = event.payload
    kind = event.event_type
    if kind == "ThreadStarted":
        view.graph_name = p.get("graph_name")
        view.status = "running"
        inputs = p.get("inputs")
        view.state = dict(inputs) if isinstance(inputs, dict) and not _erased(inputs) else {}
    elif kind == "NodeCompleted":
        if p.get("output_field"):
            view.state[str(p["output_field"])] = p.get("output")
        view.output = p.get("output")
        view.current_node = p.get("next_node")
    elif kind == "NodeFailed":
        view.current_node = p.get("next_node")
    elif kind == "ThreadPaused":
        view.status = "paused"
        view.current_node = p.get("node")
        for spec in p.get("interactions") or ():
            if isinstance(spec, dict) and spec.get("id"):
                requests.setdefault(str(spec["id"]), _shown(spec, None))
                if spec["id"] not in open_ids:
                    open_ids.append(str(spec["id"]))
    elif kind in ENDINGS:
        view.status = ENDINGS[kind]
        if kind == "ThreadCompleted":
            view.current_node = None
            view.output = p.get("output", view.output)
        else:
            view.current_node = p.get("node") or view.current_node
        if kind == "ThreadFailed":
            view.error = p.get("error")
        elif kind == "ThreadTimedOut":
            view.error = f"request {p.get('interaction_id')} timed out"
        open_ids.clear()  # what becomes of its open requests follows (InteractionCancelled)
    else:
        _apply_request(view, requests, open_ids, event)


def _apply_request(view: _Fold, requests: dict[str, dict[str, Any]], open_ids: list[str],
                   event: TimelineEvent) -> None:
    """The interaction service's events: requests, answers, refusals, timeouts."""
    p = event.payload
    kind = event.event_type
    at = event.at.isoformat()
    if kind == "InteractionRequested":
        # what the interaction service recorded it showed: the authoritative form
        shown = _shown(p, p.get("created_at"))
        status = requests.get(shown["id"], {}).get("status", "pending")
        requests[shown["id"]] = {**shown, "status": status}
    elif kind == "ResponseAccepted":
        view.answers.append(Answer(
            request_id=p.get("request_id", ""), node_name=p.get("node_name"),
            action=p.get("action", ""), data=p.get("data"), responder=p.get("responder"),
            at=str(p.get("timestamp") or at), by_timeout=bool(p.get("by_timeout"))))
        _close(requests, open_ids, p.get("request_id"), "answered")
    elif kind == "ResponseRejected":
        view.rejected.append(Attempt(
            request_id=p.get("request_id"), action=p.get("action") or "",
            responder=p.get("responder"), code=p.get("code") or "", reason=p.get("reason"),
            at=str(p.get("timestamp") or at)))
    elif kind == "ThreadResumed":
        _close(requests, open_ids, p.get("interaction_id"), "answered")
        if not int(p.get("waiting_on") or 0):
            view.status = "running"
    elif kind == "InteractionTimedOut":
        _close(requests, open_ids, p.get("request_id"), "timed_out")
    elif kind == "InteractionCancelled":
        _close(requests, open_ids, p.get("request_id"), "cancelled")
    elif kind == "InteractionEscalated":
        request = requests.get(str(p.get("request_id")))
        if request is not None:
            request["assignees"] = list(p.get("assignees") or ())
            request["deadline"] = p.get("deadline")
    elif kind == "InteractionReminded":
        request = requests.get(str(p.get("request_id")))
        if request is not None:
            request["deadline"] = p.get("deadline")


def _erased(value: Any) -> bool:
    return isinstance(value, dict) and value.get("erased") is True


def _shown(p: dict[str, Any], created_at: Any) -> dict[str, Any]:
    prompt, context, options = p.get("prompt", ""), p.get("context") or {}, p.get("options")
    options = list(options) if isinstance(options, list | tuple) else options
    digest = shown_digest(prompt, context, options or ()) if not any(
        _erased(v) for v in (prompt, context, options)) else "(erased)"
    return {"id": str(p.get("id")), "node_name": str(p.get("node_name") or ""),
            "interaction_type": str(p.get("interaction_type") or ""), "prompt": prompt,
            "context": context, "options": options if options is not None else [],
            "digest": digest, "created_at": str(created_at) if created_at else None,
            "deadline": str(p["deadline"]) if p.get("deadline") else None,
            "assignees": list(p.get("assignees") or ()), "status": "pending"}


def _close(requests: dict[str, dict[str, Any]], open_ids: list[str], request_id: Any,
           status: str) -> None:
    if request_id is None:
        return
    request_id = str(request_id)
    if request_id in requests and requests[request_id]["status"] == "pending":
        requests[request_id]["status"] = status
    if request_id in open_ids:
        open_ids.remove(request_id)


def diff(before: ThreadAt, after: ThreadAt) -> dict[str, Any]:
    """What changed from ``before`` to ``after``: fields that differ, state values added,
    changed or removed, requests opened and closed, answers and refusals in between."""
    changes: dict[str, Any] = {"from": before.event_number, "to": after.event_number}
    for name in ("status", "current_node", "output", "error"):
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            changes[name] = {"from": old, "to": new}
    state: dict[str, Any] = {}
    for key in sorted(set(before.state) | set(after.state)):
        if key not in before.state:
            state[key] = {"added": after.state[key]}
        elif key not in after.state:
            state[key] = {"removed": before.state[key]}
        elif before.state[key] != after.state[key]:
            state[key] = {"from": before.state[key], "to": after.state[key]}
    if state:
        changes["state"] = state
    was = {r.id for r in before.pending}
    now = {r.id for r in after.pending}
    if now - was:
        changes["opened"] = [r.model_dump(mode="json", exclude={"schema_version"})
                             for r in after.pending if r.id not in was]
    if was - now:
        closed = {r.id: r.status for r in after.requests}
        changes["closed"] = [{"id": i, "status": closed.get(i, "unknown")}
                             for i in sorted(was - now)]
    if len(after.answers) > len(before.answers):
        changes["answers"] = [a.model_dump(mode="json", exclude={"schema_version"})
                              for a in after.answers[len(before.answers):]]
    if len(after.rejected) > len(before.rejected):
        changes["rejected"] = [a.model_dump(mode="json", exclude={"schema_version"})
                               for a in after.rejected[len(before.rejected):]]
    return changes
