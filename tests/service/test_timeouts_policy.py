"""The on_timeout grammar and what each expiry of a deadline does (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.timeouts import InvalidTimeoutPolicyError, TimeoutPolicy, policy_problem
from services.common.identity import Identity
from services.interaction.domain import (
    AlreadyAnsweredError,
    Interaction,
    LateResponseError,
    StaleTimeoutError,
    TimeoutNotDueError,
)
from services.timeout.domain import Deadline, DeadlineNotDueError

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CHAIN = [
    {"policy": "remind", "after_seconds": 60, "times": 2},
    {"policy": "escalate", "to": ["lead"], "timeout_seconds": 600},
    {"policy": "default", "action": "reject", "data": {"reason": "no answer"}},
]


def test_no_policy_means_fail() -> None:
    policy = TimeoutPolicy.parse(None)
    assert [s.policy for s in policy.steps] == ["fail"]
    assert TimeoutPolicy.parse("fail") == policy


def test_a_chain_expands_reminders_and_waits() -> None:
    policy = TimeoutPolicy.parse(CHAIN)
    firings = [policy.firing(n, 3600) for n in range(4)]
    assert [(f.policy, f.reminder, f.of, f.wait) for f in firings] == [
        ("remind", 1, 2, 60), ("remind", 2, 2, 60), ("escalate", 0, 0, 600),
        ("default", 0, 0, None),
    ]
    assert firings[3].closing and not firings[2].closing


def test_a_chain_without_a_closing_step_ends_with_fail() -> None:
    policy = TimeoutPolicy.parse({"policy": "escalate", "to": "boss"})
    assert [s.policy for s in policy.steps] == ["escalate", "fail"]
    assert policy.firing(0, 120).wait == 120  # the request's own timeout, again
    assert policy.firing(1, 120).policy == "fail"


@pytest.mark.parametrize(("raw", "expected"), [
    ("later", "unknown policy 'later'"),
    ("remind", '"after_seconds": 3600'),
    ({"policy": "default"}, 'needs "action"'),
    ({"policy": "remind", "after_seconds": 0}, "'after_seconds' must be a positive number"),
    ({"policy": "remind", "after_seconds": 5, "times": 0}, '"times" must be a whole number'),
    ({"policy": "escalate", "to": []}, "non-empty list of assignees"),
    ({"policy": "fail", "action": "x"}, "unknown key(s) 'action'"),
    ([{"policy": "fail"}, {"policy": "remind", "after_seconds": 5}],
     "step 1: 'fail' closes the request"),
    ([], "empty chain"),
    (42, "got int"),
])
def test_bad_policies_say_what_is_wrong(raw: object, expected: str) -> None:
    with pytest.raises(InvalidTimeoutPolicyError) as error:
        TimeoutPolicy.parse(raw)
    assert expected in str(error.value)
    assert policy_problem(raw) == str(error.value)


def interaction(on_timeout: object = None, timeout: float = 60) -> Interaction:
    return Interaction(
        request_id="00000000-0000-0000-0000-0000000000a1", thread_id="t", node_name="gate",
        interaction_type="approval", prompt="ok?", context={}, options=[],
        timeout_seconds=timeout, on_timeout=on_timeout, assignees=["ann"],
        response_schema=None, batch_index=0, batch_size=1, created_at=T0,
        deadline=T0 + timedelta(seconds=timeout),
    )


def test_an_answer_at_the_deadline_is_late_and_before_it_is_not() -> None:
    early = interaction()
    early.respond("approve", None, Identity("ann"), "k1", T0 + timedelta(seconds=59.999),
                  early.shown)
    assert early.status == "answered"
    late = interaction()
    with pytest.raises(LateResponseError, match="closed at its deadline"):
        late.respond("approve", None, Identity("ann"), "k1", T0 + timedelta(seconds=60),
                     late.shown)
    assert late.status == "pending"


def test_a_timeout_step_is_taken_once_and_only_when_due() -> None:
    request = interaction(CHAIN)
    with pytest.raises(TimeoutNotDueError):
        request.time_out(0, T0 + timedelta(seconds=59))
    first = request.time_out(0, T0 + timedelta(seconds=61))
    assert (first.policy, first.closing) == ("remind", False)
    assert request.deadline == T0 + timedelta(seconds=121)
    with pytest.raises(StaleTimeoutError):
        request.time_out(0, T0 + timedelta(seconds=200))
    # after a reminder the request is still open: an answer past the old deadline counts
    request.respond("approve", None, Identity("ann"), "k1", T0 + timedelta(seconds=90),
                    request.shown)
    with pytest.raises(StaleTimeoutError):
        request.time_out(1, T0 + timedelta(seconds=200))


def test_the_chain_runs_to_a_default_answer_recorded_as_a_timeout() -> None:
    request = interaction(CHAIN)
    now = T0 + timedelta(seconds=60)
    for step in range(3):
        request.time_out(step, now)
        assert request.deadline is not None
        now = request.deadline
    assert request.assignees == ["lead"]
    decision = request.time_out(3, now)
    assert (decision.policy, decision.action) == ("default", "reject")
    names = [type(e).__name__ for e in request.collect_events()]
    assert names == ["InteractionRequested", "InteractionReminded", "InteractionReminded",
                     "InteractionEscalated", "ResponseAccepted", "InteractionTimedOut"]
    with pytest.raises(LateResponseError):
        request.respond("approve", None, Identity("ann"), "k2", now,
                        request.shown)


def test_a_default_answer_that_does_not_fit_fails_the_request_and_says_why() -> None:
    request = interaction({"policy": "default", "action": "choose", "data": {"choice": 1}})
    decision = request.time_out(0, T0 + timedelta(seconds=60))
    assert decision.policy == "fail"
    timed_out = request.collect_events()[-1]
    assert type(timed_out).__name__ == "InteractionTimedOut"
    assert "does not fit" in timed_out.detail  # type: ignore[attr-defined]


def test_an_answered_request_refuses_its_timeout() -> None:
    request = interaction()
    request.respond("reject", {"reason": "no"}, Identity("ann"), "k1", T0,
                    request.shown)
    with pytest.raises(StaleTimeoutError):
        request.time_out(0, T0 + timedelta(seconds=60))
    with pytest.raises(AlreadyAnsweredError):
        request.respond("approve", None, Identity("bob"), "k2", T0 + timedelta(seconds=1),
                        request.shown)


def test_a_deadline_fires_once_per_step() -> None:
    deadline = Deadline.open("r1", "t", "gate", "approval", 60, CHAIN, T0)
    assert (deadline.step, deadline.policy) == (0, "remind")
    assert not deadline.schedule(0, T0)  # the same again changes nothing
    with pytest.raises(DeadlineNotDueError):
        deadline.fire(0, T0 - timedelta(seconds=1), "schedule")
    assert deadline.fire(0, T0, "schedule")
    assert not deadline.fire(0, T0, "sweep")
    assert deadline.policy == "remind"
    assert deadline.schedule(1, T0 + timedelta(seconds=60))
    assert not deadline.schedule(0, T0)  # an older step never comes back
    assert deadline.clear("answered", T0)
    assert not deadline.fire(1, T0 + timedelta(seconds=61), "sweep")
