"""Timeouts on the wire: the ``on_timeout`` policy of a node, the TimeoutInteraction command,
the events of timeout steps, and the timeout service's control requests.

A request with ``timeout_seconds`` gets a deadline. When it passes, the request's policy takes
its next step. A policy is one step or a chain of steps (node context ``on_timeout``)::

    "fail"                                                   the thread times out (default)
    {"policy": "fail"}
    {"policy": "default", "action": "reject", "data": {"reason": "no answer"}}
    {"policy": "remind", "after_seconds": 3600, "times": 3}  re-notify, then wait again
    {"policy": "escalate", "to": ["lead@example.com"], "timeout_seconds": 7200}
    [{"policy": "remind", ...}, {"policy": "escalate", ...}, {"policy": "default", ...}]

``fail`` and ``default`` close the request, so they can only come last. A chain that does not
end with one of them ends with ``fail``: when its last wait runs out, the thread times out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from contracts.base import Contract
from contracts.limits import MAX_TIMEOUT_LIST
from contracts.subjects import check_thread_id

Policy = Literal["fail", "default", "remind", "escalate"]
POLICIES: tuple[str, ...] = ("fail", "default", "remind", "escalate")
CLOSING: frozenset[str] = frozenset({"fail", "default"})
#: Upper bound on reminders of one remind step (a chain is expanded step by step).
MAX_REMINDERS = 1000

# ---- the on_timeout policy ------------------------------------------------------------------


class InvalidTimeoutPolicyError(ValueError):
    """A node's ``on_timeout`` that does not follow the policy grammar."""


class TimeoutStep(Contract):
    """One step of a policy chain."""

    policy: Policy
    #: default: the action taken in the person's place, and its data.
    action: str | None = None
    data: dict[str, Any] | None = None
    #: remind: seconds between reminders, and how many.
    after_seconds: float | None = None
    times: int = 1
    #: escalate: the new assignees, and how long they get (default: the request's timeout).
    to: tuple[str, ...] = ()
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class Firing:
    """What the n-th expiry of a request's deadline does."""

    number: int
    step: TimeoutStep
    #: For a reminder: which one (1-based) of how many.
    reminder: int = 0
    of: int = 0
    #: Seconds until the next expiry after this one; None when this step closes the request.
    wait: float | None = None

    @property
    def policy(self) -> str:
        return self.step.policy

    @property
    def closing(self) -> bool:
        return self.step.policy in CLOSING


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidTimeoutPolicyError(
            f"on_timeout {where}: {name!r} must be a positive number of seconds, got {value!r}"
        )
    return float(value)


def _step(raw: Any, where: str) -> TimeoutStep:
    if isinstance(raw, str):
        if raw == "fail":
            return TimeoutStep(policy="fail")
        if raw in POLICIES:
            raise InvalidTimeoutPolicyError(
                f"on_timeout {where}: {raw!r} needs parameters, e.g. "
                + {"default": '{"policy": "default", "action": "reject"}',
                   "remind": '{"policy": "remind", "after_seconds": 3600, "times": 3}',
                   "escalate": '{"policy": "escalate", "to": ["lead"], "timeout_seconds": 3600}',
                   }[raw]
            )
        raise InvalidTimeoutPolicyError(
            f"on_timeout {where}: unknown policy {raw!r}; expected one of {', '.join(POLICIES)}"
        )
    if not isinstance(raw, dict):
        raise InvalidTimeoutPolicyError(
            f"on_timeout {where}: expected a policy name or an object with \"policy\", "
            f"got {type(raw).__name__}"
        )
    policy = raw.get("policy")
    if policy not in POLICIES:
        raise InvalidTimeoutPolicyError(
            f"on_timeout {where}: \"policy\" must be one of {', '.join(POLICIES)}, got {policy!r}"
        )
    allowed = {"fail": {"policy"}, "default": {"policy", "action", "data"},
               "remind": {"policy", "after_seconds", "times"},
               "escalate": {"policy", "to", "timeout_seconds"}}[policy]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidTimeoutPolicyError(
            f"on_timeout {where}: unknown key(s) {', '.join(map(repr, unknown))} for policy "
            f"{policy!r}; expected {', '.join(sorted(allowed))}"
        )
    if policy == "fail":
        return TimeoutStep(policy="fail")
    if policy == "default":
        action = raw.get("action")
        if not isinstance(action, str) or not action:
            raise InvalidTimeoutPolicyError(
                f"on_timeout {where}: a default policy needs \"action\": the answer taken in the "
                "person's place, e.g. \"reject\" or \"choose\""
            )
        data = raw.get("data")
        if data is not None and not isinstance(data, dict):
            raise InvalidTimeoutPolicyError(
                f"on_timeout {where}: \"data\" must be a JSON object, got {type(data).__name__}"
            )
        return TimeoutStep(policy="default", action=action, data=data)
    if policy == "remind":
        after = _number(raw.get("after_seconds"), where, "after_seconds")
        times = raw.get("times", 1)
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_REMINDERS:
            raise InvalidTimeoutPolicyError(
                f"on_timeout {where}: \"times\" must be a whole number 1-{MAX_REMINDERS}, "
                f"got {times!r}"
            )
        return TimeoutStep(policy="remind", after_seconds=after, times=times)
    to = raw.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or not all(isinstance(a, str) and a for a in to):
        raise InvalidTimeoutPolicyError(
            f"on_timeout {where}: an escalate policy needs \"to\": a non-empty list of "
            "assignees, e.g. [\"lead@example.com\"]"
        )
    timeout = raw.get("timeout_seconds")
    return TimeoutStep(policy="escalate", to=tuple(to),
                       timeout_seconds=None if timeout is None
                       else _number(timeout, where, "timeout_seconds"))


class TimeoutPolicy(Contract):
    """A node's ``on_timeout``, checked: steps in order, closing with fail or default."""

    steps: tuple[TimeoutStep, ...]

    @classmethod
    def parse(cls, raw: Any) -> TimeoutPolicy:
        """The policy of ``raw`` (None means fail); raises InvalidTimeoutPolicyError."""
        if raw is None:
            return cls(steps=(TimeoutStep(policy="fail"),))
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise InvalidTimeoutPolicyError(
                "on_timeout: an empty chain; expected a policy or a list of policies"
            )
        steps = [_step(item, f"step {i}" if len(items) > 1 else "policy")
                 for i, item in enumerate(items, 1)]
        for i, step in enumerate(steps[:-1], 1):
            if step.policy in CLOSING:
                raise InvalidTimeoutPolicyError(
                    f"on_timeout step {i}: {step.policy!r} closes the request, so it must be "
                    "the last step of the chain"
                )
        if steps[-1].policy not in CLOSING:
            steps.append(TimeoutStep(policy="fail"))
        return cls(steps=tuple(steps))

    def firing(self, number: int, timeout_seconds: float | None) -> Firing:
        """What the ``number``-th (0-based) expiry does; the last step repeats past the end."""
        seen = 0
        for step in self.steps:
            count = step.times if step.policy == "remind" else 1
            if number < seen + count:
                if step.policy == "remind":
                    return Firing(number, step, reminder=number - seen + 1, of=count,
                                  wait=step.after_seconds)
                if step.policy == "escalate":
                    return Firing(number, step, wait=step.timeout_seconds or timeout_seconds
                                  or 0.0)
                return Firing(number, step)
            seen += count
        return Firing(number, self.steps[-1])


def policy_problem(raw: Any) -> str | None:
    """Why ``raw`` is not a valid ``on_timeout`` (None when it is)."""
    try:
        TimeoutPolicy.parse(raw)
    except InvalidTimeoutPolicyError as error:
        return str(error)
    return None


# ---- the command the timer fires ------------------------------------------------------------


class TimeoutInteraction(Contract):
    """A request's deadline has passed: take the next step of its policy.

    Published on ``hitl.cmd.timeout.<thread_id>`` by the timeout service (from the NATS timer or
    the sweep) with ``Nats-Msg-Id = timeout:<request_id>:<step>``; the interaction service
    applies step ``step`` once, and only if the request is still open and due.
    """

    thread_id: str
    request_id: str
    #: How many expiries of this request were handled before this one (0 for the first).
    step: int = Field(ge=0)
    due_at: datetime
    fired_by: Literal["schedule", "sweep"] = "schedule"

    @field_validator("thread_id")
    @classmethod
    def _valid_thread_id(cls, value: str) -> str:
        return check_thread_id(value)

    @property
    def msg_id(self) -> str:
        return f"timeout:{self.request_id}:{self.step}"


# ---- event payloads: interaction service -----------------------------------------------------


class InteractionReminded(Contract):
    """A reminder went out (remind policy); the request stays open until ``deadline``."""

    request_id: str
    node_name: str
    step: int
    reminder: int
    of: int
    assignees: tuple[str, ...] = ()
    timestamp: datetime
    deadline: datetime


class InteractionEscalated(Contract):
    """The request was re-assigned (escalate policy), with a new deadline: its claim is
    dropped and it is shown anew (``shown``: answers to the earlier version are stale)."""

    request_id: str
    node_name: str
    step: int
    from_assignees: tuple[str, ...] = ()
    assignees: tuple[str, ...]
    timestamp: datetime
    deadline: datetime
    shown: str = ""


# ---- event payloads: timeout service ----------------------------------------------------------


class DeadlineScheduled(Contract):
    """The timer of a request's next expiry is set (step 0 = the first deadline)."""

    request_id: str
    node_name: str
    interaction_type: str
    step: int
    #: What the expiry will do: fail, default, remind or escalate.
    policy: str
    due_at: datetime


class DeadlineFired(Contract):
    """A deadline's timer fired (``via`` the NATS schedule or the sweep); once per step."""

    request_id: str
    step: int
    due_at: datetime
    fired_at: datetime
    via: Literal["schedule", "sweep"]


class DeadlineCleared(Contract):
    """No timer is left: the request was answered, timed out or cancelled."""

    request_id: str
    reason: str
    timestamp: datetime


# ---- control requests of the timeout service (core NATS request/reply) ------------------------


class TimeoutCheck(Contract):
    """Run a sweep now (``hitlflow timeouts check``)."""

    #: Most deadlines fired (and listed in the reply) by one check: the reply is one message.
    limit: int = Field(default=1000, ge=1, le=MAX_TIMEOUT_LIST)
    #: Wait for the interaction service's outcome of each fired timeout.
    wait: bool = True


class CheckedDeadline(Contract):
    thread_id: str
    request_id: str
    node_name: str
    interaction_type: str
    step: int
    policy: str
    due_at: datetime
    fired_at: datetime
    #: True when the interaction service applied the step; None when no outcome was awaited.
    applied: bool | None = None
    #: The interaction service's code when it did not apply the step (e.g. ``stale``).
    code: str | None = None
    error: str | None = None


class TimeoutCheckReply(Contract):
    checked_at: datetime
    fired: list[CheckedDeadline] = Field(default_factory=list)
    #: Deadlines still pending after the sweep.
    pending: int = 0
    #: Interaction events the timeout service had still to record when it answered (it waits
    #: a while for them first): deadlines they set or clear are not taken into account.
    unrecorded: int = 0
    #: Why there is no answer: the request was not valid (``code`` ``invalid_request``), or the
    #: timeout service failed to answer it (``failed``; its log says more).
    error: str | None = None
    code: Literal["invalid_request", "failed"] | None = None


class DeadlinesQuery(Contract):
    thread_id: str | None = None
    limit: int = Field(default=100, ge=1, le=MAX_TIMEOUT_LIST)


class DeadlineView(Contract):
    thread_id: str
    request_id: str
    node_name: str
    interaction_type: str
    step: int
    policy: str
    due_at: datetime
    status: Literal["pending", "fired"]


class DeadlinesReply(Contract):
    deadlines: list[DeadlineView]
    #: As in :class:`TimeoutCheckReply`: interaction events not yet recorded when it answered.
    unrecorded: int = 0
    #: As in :class:`TimeoutCheckReply`: why there is no answer (``deadlines`` is then empty).
    error: str | None = None
    code: Literal["failed"] | None = None
