"""The relay's (and a rebuild's) thread of an event: taken from the event, else from its
aggregate's first event, the most recent aggregates remembered, the oldest forgotten first."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from services.common.integration import ThreadIdResolver


class FirstEvents:
    """The part of a store the resolver reads: each aggregate's first event (counted)."""

    def __init__(self, threads: dict[uuid.UUID, str]) -> None:
        self.threads = threads
        self.reads: list[uuid.UUID] = []

    def get(self, originator_id: uuid.UUID, lte: int) -> list[Any]:
        assert lte == 1
        self.reads.append(originator_id)
        return [SimpleNamespace(thread_id=self.threads[originator_id])]


def test_the_oldest_aggregates_are_forgotten_first_and_read_again() -> None:
    aggregates = [uuid.uuid4() for _ in range(5)]
    store = FirstEvents({a: f"t-{n}" for n, a in enumerate(aggregates)})
    resolve = ThreadIdResolver(SimpleNamespace(events=store), max_cached=3)  # type: ignore[arg-type]
    for n, aggregate in enumerate(aggregates):  # events that carry their thread
        assert resolve(SimpleNamespace(originator_id=aggregate, thread_id=f"t-{n}")) == f"t-{n}"
    for n in (2, 3, 4):  # the three most recent: remembered
        assert resolve(SimpleNamespace(originator_id=aggregates[n])) == f"t-{n}"
    assert store.reads == []
    assert resolve(SimpleNamespace(originator_id=aggregates[0])) == "t-0"  # forgotten: read
    assert store.reads == [aggregates[0]]
    # remembered again, in place of the oldest (2): the next forgotten is 3, the oldest left
    assert resolve(SimpleNamespace(originator_id=aggregates[2])) == "t-2"
    assert resolve(SimpleNamespace(originator_id=aggregates[4])) == "t-4"
    assert resolve(SimpleNamespace(originator_id=aggregates[3])) == "t-3"
    assert store.reads == [aggregates[0], aggregates[2], aggregates[3]]
    assert len(resolve._cache) == 3
