"""Interaction domain: the five interaction types' rules, requests and who answered. No I/O.

``Interaction`` is one request to a person. ``Inbox`` is the per-thread index of requests: which
are open, which idempotency keys were already decided (so a re-sent answer gets the same
outcome) and every refused attempt (so nothing a responder sent is ever dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from contracts.limits import MAX_ANSWER_BYTES, TooLargeError, json_size
from contracts.timeouts import InvalidTimeoutPolicyError, TimeoutPolicy
from services.common.responses import (
    Decision,
    InteractionError,
    InvalidResponseError,
    check_response_schema,
    decide,
)

NAMESPACE = UUID("0b8f3f0e-51b8-4b8a-a1b9-8f3b1f6d2a77")
#: Who an answer taken by a timeout policy is recorded as.
TIMEOUT_RESPONDER = "timeout"
#: A refused attempt keeps at most this many of its data's keys, and this much of the reason.
MAX_KEPT_KEYS = 50
MAX_KEPT_REASON = 1_000



def inbox_uuid(thread_id: str) -> UUID:
    return uuid5(NAMESPACE, f"inbox:{thread_id}")


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


class AnswerTooLargeError(InteractionError):
    """An answer whose data is larger than an answer may be."""

    code = "too_large"


def check_answer_size(data: Any, raw_data: str | None) -> None:
    """An answer's data (or its text as typed) must fit MAX_ANSWER_BYTES: the accepted answer
    and the value it gives the graph travel in events together."""
    size = len(raw_data.encode()) if raw_data is not None else json_size(data)
    if size > MAX_ANSWER_BYTES:
        raise AnswerTooLargeError(str(TooLargeError("the answer's data", size,
                                                    MAX_ANSWER_BYTES)))


class AmbiguousRequestError(InteractionError):
    """The thread waits on several requests and the response names none."""

    code = "ambiguous_request"


class LateResponseError(InteractionError):
    """An answer that came after the request's deadline closed it."""

    code = "late"


class TimeoutNotDueError(InteractionError):
    """A timeout for a request whose deadline has not passed yet."""

    code = "not_due"


class StaleTimeoutError(InteractionError):
    """A timeout for a step already taken, or for a request no longer open."""

    code = "stale"


@dataclass(frozen=True)
class TimeoutDecision:
    """What a timeout step did to a request."""

    policy: str
    #: True when the request is closed (fail or default), False when it waits on.
    closing: bool
    action: str | None = None


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
        on_timeout: Any,
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
        #: Expiries of the deadline handled so far (reminders, escalations, the closing one).
        self.timeout_step = 0

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

    @event("InteractionReminded")
    def _reminded(self, request_id: str, node_name: str, step: int, reminder: int, of: int,
                  assignees: list[str], timestamp: datetime, deadline: datetime) -> None:
        self.timeout_step = step + 1
        self.deadline = deadline

    @event("InteractionEscalated")
    def _escalated(self, request_id: str, node_name: str, step: int,
                   from_assignees: list[str], assignees: list[str], timestamp: datetime,
                   deadline: datetime) -> None:
        self.timeout_step = step + 1
        self.assignees = list(assignees)
        self.deadline = deadline

    @event("InteractionTimedOut")
    def _timed_out(self, request_id: str, node_name: str, policy: str, timestamp: datetime,
                   step: int, deadline: datetime | None, action: str | None = None,
                   detail: str | None = None) -> None:
        self.timeout_step = step + 1
        self.status = "timed_out"

    def time_out(self, step: int, now: datetime) -> TimeoutDecision:
        """Take expiry ``step`` of the request's timeout policy, once, if it is due."""
        if self.status != "pending":
            raise StaleTimeoutError(f"request {self.request_id} is {self.status}; "
                                    "nothing to time out")
        if step != self.timeout_step or self.deadline is None:
            raise StaleTimeoutError(f"request {self.request_id} is at timeout step "
                                    f"{self.timeout_step}, not {step}")
        if now < self.deadline:
            raise TimeoutNotDueError(f"request {self.request_id} is due at "
                                     f"{self.deadline.isoformat()}, not yet at "
                                     f"{now.isoformat()}")
        deadline = self.deadline
        detail: str | None = None
        try:
            firing = TimeoutPolicy.parse(self.on_timeout).firing(step, self.timeout_seconds)
        except InvalidTimeoutPolicyError as error:
            firing = TimeoutPolicy.parse("fail").firing(0, None)
            detail = f"unreadable on_timeout ({error}): failed instead"
        policy = firing.step
        if policy.policy == "remind" and firing.wait:
            self._reminded(self.request_id, self.node_name, step, firing.reminder, firing.of,
                           list(self.assignees), now, now + timedelta(seconds=firing.wait))
            return TimeoutDecision("remind", closing=False)
        if policy.policy == "escalate" and firing.wait:
            self._escalated(self.request_id, self.node_name, step, list(self.assignees),
                            list(policy.to), now, now + timedelta(seconds=firing.wait))
            return TimeoutDecision("escalate", closing=False)
        if policy.policy == "default" and policy.action:
            try:
                decision = decide(self.interaction_type, self.options, self.context,
                                  policy.action, policy.data)
            except InvalidResponseError as error:
                detail = (f"the default answer {policy.action!r} does not fit this "
                          f"{self.interaction_type} request ({error}): failed instead")
            else:
                self._accepted(self.request_id, self.node_name, self.interaction_type,
                               policy.action, policy.data, decision.value, decision.route, now,
                               TIMEOUT_RESPONDER, f"timeout:{self.request_id}:{step}", True)
                self._timed_out(self.request_id, self.node_name, "default", now, step,
                                deadline, policy.action)
                return TimeoutDecision("default", closing=True, action=policy.action)
        self._timed_out(self.request_id, self.node_name, "fail", now, step, deadline,
                        None, detail)
        return TimeoutDecision("fail", closing=True)

    def _closing_deadline_passed(self, now: datetime) -> datetime | None:
        """The deadline that closes the request (fail or default) if it has passed."""
        if self.deadline is None or now < self.deadline:
            return None
        try:
            closing = TimeoutPolicy.parse(self.on_timeout).firing(
                self.timeout_step, self.timeout_seconds).closing
        except InvalidTimeoutPolicyError:
            closing = True
        return self.deadline if closing else None

    def respond(
        self, action: str, data: Any, responder: str, idempotency_key: str, now: datetime
    ) -> Decision:
        """Accept an answer if the request is open and the answer fits its type."""
        if self.status == "timed_out":
            raise LateResponseError(
                f"request {self.request_id} timed out (deadline "
                f"{self.deadline.isoformat() if self.deadline else 'passed'}); "
                "the answer came too late")
        if self.status != "pending":
            raise AlreadyAnsweredError(self._closed_reason())
        closed_at = self._closing_deadline_passed(now)
        if closed_at is not None:
            raise LateResponseError(
                f"request {self.request_id} closed at its deadline {closed_at.isoformat()}; "
                f"the answer came at {now.isoformat()}, too late")
        decision = decide(self.interaction_type, self.options, self.context, action, data)
        if self.response_schema is not None:
            check_response_schema(self.response_schema, data)
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
        #: Requests closed by their timeout policy (an answer to them is late).
        self.expired: list[str] = []

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

    @event("RequestExpired")
    def _request_expired(self, request_id: str, policy: str) -> None:
        if request_id in self.open:
            self.open.remove(request_id)
        self.closed.append(request_id)
        self.expired.append(request_id)

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

    def expire_request(self, request_id: str, policy: str) -> None:
        """The request's timeout policy closed it (fail or default)."""
        if request_id not in self.expired:
            self._request_expired(request_id, policy)

    def _late(self, request_id: str) -> LateResponseError:
        return LateResponseError(
            f"request {request_id} of thread {self.thread_id!r} timed out before this answer "
            f"came (thread now {self.thread_status}); the answer came too late"
        )

    def target(self, request_id: str | None) -> str:
        """Which open request a response answers; raises with the reason when none."""
        if not self.started:
            raise UnknownThreadError(f"unknown thread {self.thread_id!r}: no such thread started")
        last_expired = bool(self.closed) and self.closed[-1] in self.expired
        if self.thread_status in ("completed", "failed", "timed_out", "cancelled"):
            if request_id in self.expired or (request_id is None and (
                    last_expired or self.thread_status == "timed_out")):
                raise self._late(request_id or (self.expired[-1] if self.expired else "?"))
            raise ThreadEndedError(
                f"thread {self.thread_id!r} is {self.thread_status}; "
                "nothing is waiting for an answer"
            )
        if request_id is not None:
            if request_id in self.open:
                return request_id
            if request_id in self.expired:
                raise self._late(request_id)
            if request_id in self.closed:
                raise AlreadyAnsweredError(f"request {request_id} was already answered")
            raise NotWaitingError(
                f"thread {self.thread_id!r} has no request {request_id!r}; "
                f"open requests: {', '.join(self.open) or 'none'}"
            )
        if not self.open:
            if last_expired:
                raise self._late(self.closed[-1])
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
        keys = sorted(map(str, data))[:MAX_KEPT_KEYS] if isinstance(data, dict) else []
        self._rejected(request_id, action, keys, responder, idempotency_key, error.code,
                       str(error)[:MAX_KEPT_REASON], now)
        return self.outcomes[idempotency_key]
