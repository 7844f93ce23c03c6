"""A consumer's holds: which later messages of a thread wait for one to be delivered again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.common import consumer
from services.common.consumer import Holds


def message(thread: str, seq: int) -> Any:
    """What :class:`Holds` reads of a JetStream message: its subject and stream sequence."""
    return SimpleNamespace(subject=f"hitl.cmd.resume.{thread}",
                           metadata=SimpleNamespace(sequence=SimpleNamespace(stream=seq)))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_held_thread_lets_its_failed_message_through_and_holds_the_later_ones() -> None:
    clock = Clock()
    holds = Holds(3.0, clock)
    failed, later, other = message("t-1", 5), message("t-1", 9), message("t-2", 7)
    assert not holds.holds_back(later)
    holds.hold(failed)
    assert holds.holds_back(later)
    assert not holds.holds_back(failed)  # delivered again: it goes on
    assert not holds.holds_back(other)
    holds.hold(later)  # a later one failing too keeps the earliest held
    assert not holds.holds_back(failed)
    holds.settled(failed)
    assert not holds.holds_back(later)


def test_a_hold_ends_by_itself_when_its_message_does_not_come_back() -> None:
    clock = Clock()
    holds = Holds(3.0, clock)
    holds.hold(message("t-1", 5))
    clock.now += 2.9
    assert holds.holds_back(message("t-1", 6))
    clock.now += 0.2  # the message went to another replica
    assert not holds.holds_back(message("t-1", 6))
    assert not holds.holds_back(message("t-1", 7))


def test_a_message_settled_before_the_held_one_leaves_the_hold() -> None:
    holds = Holds(3.0, Clock())
    holds.hold(message("t-1", 5))
    holds.settled(message("t-1", 4))
    assert holds.holds_back(message("t-1", 6))


def test_deliveries_held_back_are_not_attempts_of_the_message() -> None:
    holds = Holds(3.0, Clock())
    later = message("t-1", 9)
    for _ in range(4):
        holds.held_back(later)
    later.metadata.num_delivered = 6  # four held back, and two to be handled
    assert holds.attempts(later) == 2
    holds.settled(later)
    assert holds.attempts(later) == 6


def test_holds_that_ended_are_forgotten_once_many_threads_were_held(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A held message that went to another replica leaves a hold no later message of its
    thread ends here: such holds are dropped rather than kept for ever."""
    monkeypatch.setattr(consumer, "MAX_WAITING", 3)
    clock = Clock()
    holds = Holds(3.0, clock)
    for n in range(3):
        holds.hold(message(f"t-{n}", n + 1))
    clock.now += 5  # all three have ended
    holds.hold(message("t-9", 9))
    assert set(holds._held) == {"t-9"}
