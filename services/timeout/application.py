"""Timeout service: keeps one Deadline per request with a timeout, and fires it once.

It follows the interaction service's events (a request opened, reminded, escalated, answered,
timed out or cancelled) and records each deadline change with the upstream position, so a
redelivered event changes nothing. Firing is recorded once per expiry; the TimeoutInteraction
command it leads to is applied once by the interaction service (which decides first answer vs
timeout on the request itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Tracking

from services.common import metrics
from services.common.clock import Clock, SystemClock
from services.common.logging import get_logger
from services.common.store import Job, ServiceApplication
from services.timeout.domain import Deadline, deadline_uuid

log = get_logger(__name__)

#: Interaction events that open, move or close a deadline.
DEADLINE_EVENTS = frozenset({
    "InteractionRequested", "InteractionReminded", "InteractionEscalated", "ResponseAccepted",
    "InteractionTimedOut", "InteractionCancelled",
})
_CLEARING = {"ResponseAccepted": "answered", "InteractionTimedOut": "timed_out",
             "InteractionCancelled": "cancelled"}


@dataclass(frozen=True)
class Timer:
    """What the NATS timer of one request should be right now."""

    request_id: str
    thread_id: str
    step: int
    due_at: datetime | None
    #: False when no timer should be held (cleared, or this step already fired).
    armed: bool
    node_name: str = ""
    interaction_type: str = ""
    policy: str = ""
    #: True when this very call recorded the firing (not an earlier one).
    fired_now: bool = False

    @classmethod
    def of(cls, deadline: Deadline, *, fired_now: bool = False) -> Timer:
        return cls(deadline.request_id, deadline.thread_id, deadline.step, deadline.due_at,
                   deadline.pending and not deadline.fired, deadline.node_name,
                   deadline.interaction_type, deadline.policy, fired_now)


class TimeoutService(ServiceApplication):
    name = "timeout"

    def __init__(self, env: dict[str, str] | None = None, *, clock: Clock | None = None) -> None:
        super().__init__(env)
        self.clock = clock or SystemClock()

    # -- interaction events -----------------------------------------------------------------

    def deadline_job(self, thread_id: str, event_type: str, payload: dict[str, Any],
                     upstream: str, position: int) -> Job | None:
        """The deadline change an interaction event makes; its result is the request's timer
        as it then stands. None when the event concerns no deadline."""
        if event_type not in DEADLINE_EVENTS:
            return None
        request_id = str(payload["id"] if event_type == "InteractionRequested"
                         else payload["request_id"])
        if event_type == "InteractionRequested" and payload.get("deadline") is None:
            return None

        def decide() -> tuple[list[Any], Timer | None]:
            deadline: Deadline | None = self.get_or_none(deadline_uuid(request_id))
            if event_type == "InteractionRequested":
                if deadline is None:
                    deadline = Deadline.open(
                        request_id, payload["thread_id"], payload["node_name"],
                        payload["interaction_type"], payload.get("timeout_seconds"),
                        payload.get("on_timeout"), _datetime(payload["deadline"]),
                    )
            elif deadline is None:
                return [], None
            elif event_type in ("InteractionReminded", "InteractionEscalated"):
                deadline.schedule(int(payload["step"]) + 1, _datetime(payload["deadline"]))
            else:
                deadline.clear(_CLEARING[event_type], self.clock.now())
            return [deadline], Timer.of(deadline)

        def as_it_stands() -> Timer | None:  # handled before
            deadline: Deadline | None = self.get_or_none(deadline_uuid(request_id))
            return None if deadline is None else Timer.of(deadline)

        return Job(thread_id, decide, Tracking(upstream, position),
                   on_duplicate=as_it_stands)

    # -- firing -----------------------------------------------------------------------------

    def fire(self, request_id: str, step: int, via: str) -> Timer | None:
        """Record that expiry ``step`` of a request went off (once, whoever gets there first).

        Returns the timer when the step is still the request's pending one, fired by this call
        (``fired_now``) or an earlier one: its TimeoutInteraction should be sent. None when there
        is nothing to fire (answered, cleared, or moved on). Raises DeadlineNotDueError when
        early.
        """

        def attempt() -> Timer | None:
            deadline: Deadline | None = self.get_or_none(deadline_uuid(request_id))
            if deadline is None or deadline.cleared is not None or deadline.step != step:
                return None
            fired_now = deadline.fire(step, self.clock.now(), via)
            if fired_now:
                self.record([deadline])
                metrics.DEADLINES_FIRED.labels(via).inc()
                log.info("deadline_fired", thread_id=deadline.thread_id,
                         interaction_id=request_id, step=step, via=via,
                         policy=deadline.policy)
            return Timer.of(deadline, fired_now=fired_now)

        return self.retry_on_conflict(attempt)

    def deadline(self, request_id: str) -> Deadline | None:
        found: Deadline | None = self.get_or_none(deadline_uuid(request_id))
        return found


def _datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
