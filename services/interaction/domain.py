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

from contracts.events import shown_digest, shown_token
from contracts.limits import MAX_ANSWER_BYTES, TooLargeError, json_size
from contracts.timeouts import InvalidTimeoutPolicyError, TimeoutPolicy
from services.common.identity import Identity
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


class ForbiddenError(InteractionError):
    """The person may not do this to the request: not assigned, not its claimant, not an
    operator, or a principal asserting what only a system or the gateway may."""

    code = "forbidden"


class StaleViewError(InteractionError):
    """An answer given to an earlier version of the request than the one now open."""

    code = "stale_view"


class ClaimedError(InteractionError):
    """A claim on a request someone else has claimed."""

    code = "claimed"


class NotClaimedError(InteractionError):
    """A release of a request nobody has claimed."""

    code = "not_claimed"


class NotClaimableError(InteractionError):
    """A claim or delegation of a quorum request (every voter answers it)."""

    code = "not_claimable"


class AlreadyVotedError(InteractionError):
    """A second vote by the same person on a quorum request."""

    code = "already_voted"


@dataclass(frozen=True)
class Quorum:
    """N of M approvals: ``approvals`` needed, from the people ``of`` or the members of
    ``group``; one reject decides (``veto``) unless ``reject`` is ``majority``."""

    approvals: int
    of: tuple[str, ...] = ()
    group: str | None = None
    reject: str = "veto"

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Quorum:
        return cls(approvals=int(raw["approvals"]), of=tuple(raw.get("of") or ()),
                   group=raw.get("group"), reject=str(raw.get("reject", "veto")))

    def may_vote(self, identity: Identity) -> bool:
        return identity.person in self.of or (self.group is not None
                                              and self.group in identity.groups)

    def outcome(self, approvals: int, rejections: int) -> str | None:
        """``approve``, ``reject``, or None while the votes cast decide nothing yet."""
        if approvals >= self.approvals:
            return "approve"
        if self.reject != "majority":
            return "reject" if rejections else None
        if self.of:  # a known electorate: reject once the approvals cannot be reached
            if len(self.of) - rejections < self.approvals:
                return "reject"
            return None
        return "reject" if rejections >= self.approvals else None


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
        candidate_groups: list[str] | None = None,
        quorum: dict[str, Any] | None = None,
        shown: str = "",
        sensitive: list[str] | None = None,
    ) -> None:
        self.sensitive = list(sensitive or ())
        self.candidate_groups = list(candidate_groups or ())
        self.quorum = quorum
        #: The person who claimed it (only they may answer), if anyone has.
        self.claimed_by: str | None = None
        #: Raised each time the request is re-sent (escalated, reassigned, delegated).
        self.view_version = 1
        self.digest = shown_digest(prompt, context, options)
        #: A quorum's votes so far: ``{"voter", "action"}`` in the order cast.
        self.votes: list[dict[str, Any]] = []
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
        principal: str | None = None,
        on_behalf_of: str | None = None,
        shown: str | None = None,
        votes: list[dict[str, Any]] | None = None,
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
                   deadline: datetime, shown: str = "") -> None:
        self.timeout_step = step + 1
        self.deadline = deadline
        self._assign(assignees, [])

    @event("InteractionClaimed")
    def _claimed(self, request_id: str, node_name: str, claimed_by: str, principal: str,
                 timestamp: datetime) -> None:
        self.claimed_by = claimed_by

    @event("InteractionReleased")
    def _released(self, request_id: str, node_name: str, released_by: str, principal: str,
                  timestamp: datetime) -> None:
        self.claimed_by = None

    @event("InteractionDelegated")
    def _delegated(self, request_id: str, node_name: str, from_person: str, to: str,
                   principal: str, timestamp: datetime, shown: str) -> None:
        self.claimed_by = to
        self.view_version += 1

    @event("InteractionReassigned")
    def _reassigned(self, request_id: str, node_name: str, from_assignees: list[str],
                    assignees: list[str], candidate_groups: list[str], principal: str,
                    timestamp: datetime, shown: str) -> None:
        self._assign(assignees, candidate_groups)

    @event("VoteCast")
    def _voted(self, request_id: str, node_name: str, voter: str, principal: str,
               on_behalf_of: str | None, action: str, data_keys: list[str], approvals: int,
               rejections: int, timestamp: datetime) -> None:
        self.votes.append({"voter": voter, "action": action, "principal": principal,
                           "on_behalf_of": on_behalf_of})

    def _assign(self, assignees: list[str], candidate_groups: list[str]) -> None:
        """Who it is assigned to changes: the claim is dropped, and it is shown anew."""
        self.assignees = list(assignees)
        self.candidate_groups = list(candidate_groups)
        self.claimed_by = None
        self.view_version += 1

    @property
    def is_open(self) -> bool:
        """Waiting for an answer: not answered, timed out or cancelled."""
        return self.status == "pending"

    @property
    def shown(self) -> str:
        """What an answer must carry back: this version of the request."""
        return shown_token(self.view_version, self.digest)

    @event("InteractionTimedOut")
    def _timed_out(self, request_id: str, node_name: str, policy: str, timestamp: datetime,
                   step: int, deadline: datetime | None, action: str | None = None,
                   detail: str | None = None) -> None:
        self.timeout_step = step + 1
        self.status = "timed_out"

    def time_out(self, step: int, now: datetime) -> TimeoutDecision:
        """Take expiry ``step`` of the request's timeout policy, once, if it is due."""
        if not self.is_open:
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
                            list(policy.to), now, now + timedelta(seconds=firing.wait),
                            shown_token(self.view_version + 1, self.digest))
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
                               TIMEOUT_RESPONDER, f"timeout:{self.request_id}:{step}", True,
                               TIMEOUT_RESPONDER, None, self.shown, None)
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
        self, action: str, data: Any, identity: Identity, idempotency_key: str,
        now: datetime, shown: str,
    ) -> Decision | None:
        """Accept an answer if the request is open, was shown as ``shown``, the person may
        answer it, and the answer fits its type. A quorum's vote that decides nothing yet
        returns None (the vote is recorded)."""
        self._check_open(now)
        if shown != self.shown:
            raise StaleViewError(
                f"the answer was given to version {shown.split(':', maxsplit=1)[0]!r} of request "
                f"{self.request_id}, but it was re-sent since (now version {self.view_version}: "
                f"escalated, reassigned or delegated); look at it again and answer with "
                f"shown={self.shown!r}")
        self._authorize(identity)
        decision = decide(self.interaction_type, self.options, self.context, action, data)
        if self.response_schema is not None:
            check_response_schema(self.response_schema, data)
        if self.quorum is not None:
            return self._vote(action, data, identity, idempotency_key, now)
        self._accepted(self.request_id, self.node_name, self.interaction_type, action, data,
                       decision.value, decision.route, now, identity.person, idempotency_key,
                       False, identity.principal, identity.on_behalf_of, shown, None)
        return decision

    def _check_open(self, now: datetime) -> None:
        if self.status == "timed_out":
            raise LateResponseError(
                f"request {self.request_id} timed out (deadline "
                f"{self.deadline.isoformat() if self.deadline else 'passed'}); "
                "the answer came too late")
        if not self.is_open:
            raise AlreadyAnsweredError(self._closed_reason())
        closed_at = self._closing_deadline_passed(now)
        if closed_at is not None:
            raise LateResponseError(
                f"request {self.request_id} closed at its deadline {closed_at.isoformat()}; "
                f"the answer came at {now.isoformat()}, too late")

    def may_answer(self, identity: Identity) -> bool:
        """Is the person one this request waits on (ignoring a claim)?"""
        if self.quorum is not None:
            return Quorum.parse(self.quorum).may_vote(identity)
        if not self.assignees and not self.candidate_groups:
            return True
        return identity.person in self.assignees or bool(
            set(identity.groups) & set(self.candidate_groups))

    def _authorize(self, identity: Identity) -> None:
        person = identity.person
        if self.claimed_by is not None and person != self.claimed_by:
            raise ForbiddenError(f"request {self.request_id} is claimed by "
                                 f"{self.claimed_by!r}: only they may answer it until it is "
                                 "released")
        if self.claimed_by is None and not self.may_answer(identity):
            raise ForbiddenError(f"{person!r} may not answer request {self.request_id}: it is "
                                 f"for {self._audience()}")

    def _audience(self) -> str:
        if self.quorum is not None:
            quorum = Quorum.parse(self.quorum)
            return (f"a quorum of {quorum.approvals} of "
                    + (", ".join(map(repr, quorum.of)) if quorum.of else
                       f"group {quorum.group!r}"))
        parts = []
        if self.assignees:
            parts.append("assignees " + ", ".join(map(repr, self.assignees)))
        if self.candidate_groups:
            parts.append("groups " + ", ".join(map(repr, self.candidate_groups)))
        return " and ".join(parts) or "anyone"

    def _vote(self, action: str, data: Any, identity: Identity, idempotency_key: str,
              now: datetime) -> Decision | None:
        person = identity.person
        if any(vote["voter"] == person for vote in self.votes):
            raise AlreadyVotedError(f"{person!r} has voted on request {self.request_id} "
                                    "already; one vote each")
        quorum = Quorum.parse(self.quorum or {})
        approvals = sum(v["action"] == "approve" for v in self.votes) + (action == "approve")
        rejections = len(self.votes) + 1 - approvals
        keys = sorted(map(str, data))[:MAX_KEPT_KEYS] if isinstance(data, dict) else []
        self._voted(self.request_id, self.node_name, person, identity.principal,
                    identity.on_behalf_of, action, keys, approvals, rejections, now)
        outcome = quorum.outcome(approvals, rejections)
        if outcome is None:
            return None
        votes = [{"voter": v["voter"], "action": v["action"]} for v in self.votes]
        decision = decide(self.interaction_type, self.options, self.context, outcome,
                          {"votes": votes})
        self._accepted(self.request_id, self.node_name, self.interaction_type, outcome,
                       {"votes": votes}, decision.value, decision.route, now, person,
                       idempotency_key, False, identity.principal, identity.on_behalf_of,
                       self.shown, votes)
        return decision

    # -- task operations ----------------------------------------------------------------------

    def claim(self, identity: Identity, now: datetime) -> None:
        """Only the claimant may answer until it is released (claiming it again: nothing)."""
        self._check_open(now)
        if self.quorum is not None:
            raise NotClaimableError(f"request {self.request_id} is decided by a quorum: "
                                    "every voter answers it, nobody claims it")
        if self.claimed_by == identity.person:
            return
        if self.claimed_by is not None:
            raise ClaimedError(f"request {self.request_id} is claimed by "
                               f"{self.claimed_by!r} already")
        self._authorize(identity)
        self._claimed(self.request_id, self.node_name, identity.person, identity.principal,
                      now)

    def release(self, identity: Identity, now: datetime) -> None:
        self._check_open(now)
        if self.claimed_by is None:
            raise NotClaimedError(f"request {self.request_id} is not claimed")
        if identity.person != self.claimed_by and not identity.operator:
            raise ForbiddenError(f"request {self.request_id} is claimed by "
                                 f"{self.claimed_by!r}: only they or an operator may release it")
        self._released(self.request_id, self.node_name, self.claimed_by, identity.principal,
                       now)

    def delegate(self, identity: Identity, to: list[str], now: datetime) -> None:
        """Hand the request to one person, who becomes its claimant (it is shown anew)."""
        self._check_open(now)
        if self.quorum is not None:
            raise NotClaimableError(f"request {self.request_id} is decided by a quorum: "
                                    "a vote cannot be handed on")
        if len(to) != 1:
            raise InvalidResponseError("delegate needs exactly one person in 'to'")
        self._authorize(identity)
        self._delegated(self.request_id, self.node_name, identity.person, to[0],
                        identity.principal, now, shown_token(self.view_version + 1, self.digest))

    def reassign(self, identity: Identity, assignees: list[str], candidate_groups: list[str],
                 now: datetime) -> None:
        """An operator changes who the request is for (as an escalation does)."""
        self._check_open(now)
        if not identity.operator:
            raise ForbiddenError(f"{identity.principal!r} may not reassign requests: operators "
                                 "may")
        if not assignees and not candidate_groups:
            raise InvalidResponseError("reassign needs 'to' (people) or 'candidate_groups'")
        self._reassigned(self.request_id, self.node_name, list(self.assignees), assignees,
                         candidate_groups, identity.principal, now,
                         shown_token(self.view_version + 1, self.digest))

    def cancel(self, reason: str) -> None:
        if self.is_open:
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

    @event("OutcomeRecorded")
    def _outcome_recorded(self, idempotency_key: str, outcome: dict[str, Any]) -> None:
        """An accepted command that closed no request (a vote, a claim): its key's outcome."""
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
        principal: str | None = None,
        on_behalf_of: str | None = None,
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

    def record_outcome(self, idempotency_key: str, outcome: dict[str, Any]) -> None:
        self._outcome_recorded(idempotency_key, outcome)

    def reject(
        self, request_id: str | None, action: str, data: Any, identity: Identity | None,
        idempotency_key: str, error: InteractionError, now: datetime,
    ) -> dict[str, Any]:
        """Keep a refused attempt (who sent it, what, why); its key's outcome is the refusal.
        ``identity`` is None when the sender could not be established (an unknown principal,
        a message that broke its contract)."""
        keys = sorted(map(str, data))[:MAX_KEPT_KEYS] if isinstance(data, dict) else []
        person = identity.person if identity is not None else "unknown"
        self._rejected(request_id, action, keys, person, idempotency_key, error.code,
                       str(error)[:MAX_KEPT_REASON], now,
                       identity.principal if identity is not None else None,
                       identity.on_behalf_of if identity is not None else None)
        return self.outcomes[idempotency_key]
