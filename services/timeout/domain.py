"""Timeout domain: one Deadline per request that has a timeout. No I/O.

A deadline follows its request: scheduled for the first expiry when the request opens,
moved on when a reminder or an escalation sets a new one, cleared when the request is
answered, timed out or cancelled. ``fire`` records that the timer of one step went off, once:
two replicas, the NATS timer and the sweep may all try, and only the first one is recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from contracts.timeouts import InvalidTimeoutPolicyError, TimeoutPolicy

NAMESPACE = UUID("5d0b7a3e-2f14-4c8e-9b61-7c2e8a4f1d90")


def deadline_uuid(request_id: str) -> UUID:
    return uuid5(NAMESPACE, f"deadline:{request_id}")


def policy_of(on_timeout: Any, timeout_seconds: float | None, step: int) -> str:
    """What expiry ``step`` does under a request's policy (fail when unreadable)."""
    try:
        policy = TimeoutPolicy.parse(on_timeout)
    except InvalidTimeoutPolicyError:
        return "fail"
    return policy.firing(step, timeout_seconds).policy


class DeadlineError(Exception):
    """Base of the deadline rules' refusals."""


class DeadlineNotDueError(DeadlineError):
    """A timer that went off before its deadline (by this service's clock)."""


class Deadline(Aggregate):
    """The pending expiry of one request."""

    @staticmethod
    def create_id(request_id: str) -> UUID:
        return deadline_uuid(request_id)

    @event("DeadlineScheduled")
    def __init__(self, request_id: str, thread_id: str, node_name: str,
                 interaction_type: str, timeout_seconds: float | None, on_timeout: Any,
                 step: int, policy: str, due_at: datetime) -> None:
        self.request_id = request_id
        self.thread_id = thread_id
        self.node_name = node_name
        self.interaction_type = interaction_type
        self.timeout_seconds = timeout_seconds
        #: The node's on_timeout as it came (names the policy of each expiry).
        self.on_timeout = on_timeout
        self.step = step
        self.policy = policy
        self.due_at: datetime | None = due_at
        self.fired_step = -1
        self.cleared: str | None = None

    @classmethod
    def open(cls, request_id: str, thread_id: str, node_name: str, interaction_type: str,
             timeout_seconds: float | None, on_timeout: Any, due_at: datetime) -> Deadline:
        """The deadline of a new request: its first expiry (step 0) is at ``due_at``."""
        return cls(request_id=request_id, thread_id=thread_id, node_name=node_name,
                   interaction_type=interaction_type, timeout_seconds=timeout_seconds,
                   on_timeout=on_timeout, step=0,
                   policy=policy_of(on_timeout, timeout_seconds, 0), due_at=due_at)

    # -- events (each names its thread, so publishing one needs no lookup) --------------------

    @event("DeadlineRescheduled")
    def _rescheduled(self, request_id: str, thread_id: str, node_name: str,
                     interaction_type: str, step: int, policy: str, due_at: datetime) -> None:
        self.step = step
        self.policy = policy
        self.due_at = due_at

    @event("DeadlineFired")
    def _fired(self, request_id: str, thread_id: str, step: int, due_at: datetime,
               fired_at: datetime, via: str) -> None:
        self.fired_step = step

    @event("DeadlineCleared")
    def _cleared(self, request_id: str, thread_id: str, reason: str,
                 timestamp: datetime) -> None:
        self.cleared = reason

    # -- commands ---------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Is a timer still to go off (scheduled, not cleared)?"""
        return self.cleared is None and self.due_at is not None

    @property
    def fired(self) -> bool:
        return self.fired_step == self.step


    def schedule(self, step: int, due_at: datetime) -> bool:
        """Set the timer of expiry ``step``; an older or repeated step changes nothing."""
        if self.cleared is not None or step < self.step:
            return False
        if step == self.step and due_at == self.due_at:
            return False
        self._rescheduled(self.request_id, self.thread_id, self.node_name,
                          self.interaction_type, step,
                          policy_of(self.on_timeout, self.timeout_seconds, step), due_at)
        return True

    def fire(self, step: int, now: datetime, via: str) -> bool:
        """Record that the timer of ``step`` went off; False when there is nothing to fire."""
        due_at = self.due_at
        if due_at is None or self.cleared is not None or step != self.step or self.fired:
            return False
        if now < due_at:
            raise DeadlineNotDueError(
                f"deadline of request {self.request_id} step {step} is due at "
                f"{due_at.isoformat()}, not yet at {now.isoformat()}"
            )
        self._fired(self.request_id, self.thread_id, step, due_at, now, via)
        return True

    def clear(self, reason: str, now: datetime) -> bool:
        if self.cleared is not None:
            return False
        self._cleared(self.request_id, self.thread_id, reason, now)
        return True
