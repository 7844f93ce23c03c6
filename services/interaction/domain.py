"""Interaction domain: the five interaction types' rules, requests and who answered. No I/O.

``Interaction`` is one request to a person. ``Inbox`` is the per-thread index of requests: which
are open, which idempotency keys were already decided (so a re-sent answer gets the same
outcome) and every refused attempt (so nothing a responder sent is ever dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

NAMESPACE = UUID("0b8f3f0e-51b8-4b8a-a1b9-8f3b1f6d2a77")

ACTIONS: dict[str, tuple[str, ...]] = {
    "approval": ("approve", "reject"),
    "edit": ("edit", "approve", "reject"),
    "choice": ("choose",),
    "text_input": ("respond",),
    "conversation": ("respond", "end"),
}


def inbox_uuid(thread_id: str) -> UUID:
    return uuid5(NAMESPACE, f"inbox:{thread_id}")


class InteractionError(Exception):
    """Base of refused responses; ``code`` is stable for machines, the message for people."""

    code = "invalid_response"


class InvalidResponseError(InteractionError):
    """The action or data does not fit the request's interaction type."""

    code = "invalid_response"


class UnknownThreadError(InteractionError):
    """No thread with that id has started."""

    code = "unknown_thread"


class ThreadEndedError(InteractionError):
    """The thread has ended; nothing is left to answer."""

    code = "thread_ended"


class NotWaitingError(InteractionError):
    """The thread waits on no request (or not on the one named)."""

    code = "not_waiting"


class AlreadyAnsweredError(InteractionError):
    """The request was answered before; the first answer stands."""

    code = "already_answered"


class MalformedCommandError(InteractionError):
    """A resume command that does not follow the ResumeThread contract."""

    code = "invalid_command"


class AmbiguousRequestError(InteractionError):
    """The thread waits on several requests and the response names none."""

    code = "ambiguous_request"


@dataclass(frozen=True)
class Decision:
    """What an accepted response means for the graph."""

    value: Any
    route: str  # "success" | "failure"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _require_object(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidResponseError(
            f"response data must be a JSON object, got {type(data).__name__}"
        )
    return data


def _optional_str(data: dict[str, Any], key: str) -> None:
    if key in data and data[key] is not None and not isinstance(data[key], str):
        raise InvalidResponseError(f"'{key}' must be a string, got {type(data[key]).__name__}")


def decide(
    interaction_type: str,
    options: list[str],
    context: dict[str, Any],
    action: str,
    data: Any,
) -> Decision:
    """Check a response against the type's rules; the value and route it hands to the graph."""
    allowed = ACTIONS[interaction_type]
    if action not in allowed:
        raise InvalidResponseError(
            f"action {action!r} is not valid for {_article(interaction_type)} {interaction_type} "
            "interaction; "
            f"expected one of: {', '.join(allowed)}"
        )
    body = _require_object(data)
    if interaction_type == "approval":
        _optional_str(body, "reason")
        return Decision({"approved": action == "approve", **body},
                        "success" if action == "approve" else "failure")
    if interaction_type == "edit":
        if action == "edit":
            if body.get("edited") is None:
                raise InvalidResponseError(
                    "an edit response needs 'edited': the edited content, "
                    "e.g. --data '{\"edited\": \"...\"}'"
                )
            return Decision(body["edited"], "success")
        if action == "approve":
            return Decision(context.get("original_content"), "success")
        _optional_str(body, "reason")
        return Decision(context.get("original_content"), "failure")
    if interaction_type == "choice":
        return Decision(_choice(options, body), "success")
    if interaction_type == "text_input":
        if isinstance(body.get("text"), str):
            return Decision(body["text"], "success")
        if "text" in body:
            raise InvalidResponseError("'text' must be a string")
        if body.get("response") is not None:
            return Decision(body, "success")
        raise InvalidResponseError(
            "a text_input response needs 'text' (a string) or 'response', "
            "e.g. --data '{\"text\": \"...\"}'"
        )
    # conversation
    message = body.get("message")
    if action == "respond" and not isinstance(message, str):
        raise InvalidResponseError(
            "a conversation response needs 'message' (a string), "
            "e.g. --data '{\"message\": \"...\"}'; send action 'end' to finish"
        )
    if message is not None and not isinstance(message, str):
        raise InvalidResponseError("'message' must be a string")
    return Decision({**body, "message": message}, "success" if action == "respond" else "failure")


def _choice(options: list[str], body: dict[str, Any]) -> dict[str, Any]:
    listing = "; ".join(f"{i}. {o}" for i, o in enumerate(options, 1))
    if "choice" not in body:
        raise InvalidResponseError(
            f"a choice response needs 'choice': an option number 1-{len(options)} "
            f"or the exact option text ({listing})"
        )
    choice = body["choice"]
    _optional_str(body, "justification")
    if isinstance(choice, bool) or not isinstance(choice, int | str):
        raise InvalidResponseError(
            f"'choice' must be an option number 1-{len(options)} or the exact option text, "
            f"got {type(choice).__name__}"
        )
    if isinstance(choice, int):
        if not 1 <= choice <= len(options):
            raise InvalidResponseError(
                f"choice {choice} is out of range: expected 1-{len(options)} ({listing})"
            )
        index = choice
    elif choice in options:
        index = options.index(choice) + 1
    else:
        raise InvalidResponseError(
            f"choice {choice!r} is not one of the options; expected a number "
            f"1-{len(options)} or the exact text ({listing})"
        )
    chosen = {"choice": index, "option": options[index - 1]}
    if body.get("justification"):
        chosen["justification"] = body["justification"]
    return chosen


class Interaction(Aggregate):
    """One request to a person, and the answer that settled it."""

    @staticmethod
    def create_id(request_id: str) -> UUID:
        return UUID(request_id)

    @event("InteractionRequested")
    def __init__(
        self,
        request_id: str,
        thread_id: str,
        node_name: str,
        interaction_type: str,
        prompt: str,
        context: dict[str, Any],
        options: list[str],
        timeout_seconds: float | None,
        on_timeout: dict[str, Any] | None,
        assignees: list[str],
        response_schema: dict[str, Any] | None,
        batch_index: int,
        batch_size: int,
        created_at: datetime,
        deadline: datetime | None,
    ) -> None:
        self.request_id = request_id
        self.thread_id = thread_id
        self.node_name = node_name
        self.interaction_type = interaction_type
        self.prompt = prompt
        self.context = context
        self.options = options
        self.timeout_seconds = timeout_seconds
        self.on_timeout = on_timeout
        self.assignees = assignees
        self.response_schema = response_schema
        self.batch_index = batch_index
        self.batch_size = batch_size
        self.created_at = created_at
        self.deadline = deadline
        self.status = "pending"
        self.answer: dict[str, Any] | None = None

    @event("ResponseAccepted")
    def _accepted(
        self,
        request_id: str,
        node_name: str,
        interaction_type: str,
        action: str,
        data: dict[str, Any] | None,
        value: Any,
        route: str,
        timestamp: datetime,
        responder: str,
        idempotency_key: str,
        by_timeout: bool = False,
    ) -> None:
        self.status = "answered"
        self.answer = {"action": action, "responder": responder, "timestamp": timestamp,
                       "idempotency_key": idempotency_key}

    @event("InteractionCancelled")
    def _cancelled(self, request_id: str, reason: str) -> None:
        self.status = "cancelled"

    def respond(
        self, action: str, data: Any, responder: str, idempotency_key: str, now: datetime
    ) -> Decision:
        """Accept an answer if the request is open and the answer fits its type."""
        if self.status != "pending":
            raise AlreadyAnsweredError(self._closed_reason())
        decision = decide(self.interaction_type, self.options, self.context, action, data)
        self._accepted(self.request_id, self.node_name, self.interaction_type, action, data,
                       decision.value, decision.route, now, responder, idempotency_key)
        return decision

    def cancel(self, reason: str) -> None:
        if self.status == "pending":
            self._cancelled(self.request_id, reason)

    def _closed_reason(self) -> str:
        if self.answer:
            return (f"request {self.request_id} was already answered ({self.answer['action']} by "
                    f"{self.answer['responder']} at {self.answer['timestamp']:%Y-%m-%d %H:%M:%S}); "
                    "the first answer stands")
        return f"request {self.request_id} is {self.status}"


class Inbox(Aggregate):
    """Per-thread index: open requests, decided idempotency keys, refused attempts."""

    @staticmethod
    def create_id(thread_id: str) -> UUID:
        return inbox_uuid(thread_id)

    @event("InboxOpened")
    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self.started = False
        self.thread_status = "unknown"
        self.open: list[str] = []
        self.closed: list[str] = []
        self.outcomes: dict[str, dict[str, Any]] = {}

    @event("ThreadKnown")
    def _thread_known(self, status: str) -> None:
        self.started = True
        self.thread_status = status

    @event("RequestOpened")
    def _request_opened(self, request_id: str) -> None:
        if request_id not in self.open:
            self.open.append(request_id)

    @event("RequestClosed")
    def _request_closed(self, request_id: str, idempotency_key: str | None,
                        outcome: dict[str, Any]) -> None:
        if request_id in self.open:
            self.open.remove(request_id)
        self.closed.append(request_id)
        if idempotency_key:
            self.outcomes[idempotency_key] = outcome

    @event("ResponseRejected")
    def _rejected(
        self,
        request_id: str | None,
        action: str,
        data_keys: list[str],
        responder: str,
        idempotency_key: str,
        code: str,
        reason: str,
        timestamp: datetime,
    ) -> None:
        self.outcomes[idempotency_key] = {
            "ok": False, "code": code, "error": reason, "interaction_id": request_id,
            "action": action,
        }

    # -- commands ---------------------------------------------------------------------------

    def thread_started(self) -> None:
        if not self.started:
            self._thread_known("running")

    def thread_ended(self, status: str) -> None:
        if self.thread_status != status:
            self._thread_known(status)

    def open_request(self, request_id: str) -> None:
        if request_id not in self.open and request_id not in self.closed:
            self._request_opened(request_id)

    def close_request(self, request_id: str, idempotency_key: str | None,
                      outcome: dict[str, Any]) -> None:
        self._request_closed(request_id, idempotency_key, outcome)

    def target(self, request_id: str | None) -> str:
        """Which open request a response answers; raises with the reason when none."""
        if not self.started:
            raise UnknownThreadError(f"unknown thread {self.thread_id!r}: no such thread started")
        if self.thread_status in ("completed", "failed", "timed_out", "cancelled"):
            raise ThreadEndedError(
                f"thread {self.thread_id!r} is {self.thread_status}; "
                "nothing is waiting for an answer"
            )
        if request_id is not None:
            if request_id in self.open:
                return request_id
            if request_id in self.closed:
                raise AlreadyAnsweredError(f"request {request_id} was already answered")
            raise NotWaitingError(
                f"thread {self.thread_id!r} has no request {request_id!r}; "
                f"open requests: {', '.join(self.open) or 'none'}"
            )
        if not self.open:
            raise NotWaitingError(
                f"thread {self.thread_id!r} is not paused: it waits on no request right now"
            )
        if len(self.open) > 1:
            raise AmbiguousRequestError(
                f"thread {self.thread_id!r} waits on {len(self.open)} requests; name one with "
                f"--request-id (one of: {', '.join(self.open)})"
            )
        return self.open[0]

    def reject(
        self, request_id: str | None, action: str, data: Any, responder: str,
        idempotency_key: str, error: InteractionError, now: datetime,
    ) -> dict[str, Any]:
        keys = sorted(data) if isinstance(data, dict) else []
        self._rejected(request_id, action, keys, responder, idempotency_key, error.code,
                       str(error), now)
        return self.outcomes[idempotency_key]
