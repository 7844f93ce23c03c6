"""SQLite writes that arrive together share a transaction, and each keeps its own outcome."""

from __future__ import annotations

import threading
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError, Tracking

from hitlflow.settings import Settings
from services.common.store import GroupCommit, ServiceApplication, _Write


class Counter(Aggregate):
    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


class CounterApp(ServiceApplication):
    name = "counters"


def make_app(tmp_path: Path) -> CounterApp:
    return CounterApp(Settings(home=tmp_path).store_env("counters", tmp_path))


def test_concurrent_writes_are_all_saved_with_their_tracking(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    ids: list[list[object]] = [[] for _ in range(8)]

    def writer(index: int) -> None:
        for n in range(40):
            counter = Counter(f"{index}-{n}")
            app.record([counter], Tracking("upstream", index * 1000 + n + 1))
            ids[index].append(counter.id)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert isinstance(app._group, GroupCommit)
    assert app._group.writes == 320
    assert app._group.commits <= app._group.writes
    for index, saved in enumerate(ids):
        assert [app.repository.get(i).name for i in saved] == [f"{index}-{n}"
                                                                for n in range(40)]
        assert all(app.is_tracked("upstream", index * 1000 + n + 1) for n in range(40))
    assert len(app.recorder.select_notifications(1, 1000)) == 320
    app.close()


def test_a_conflict_fails_its_own_write_only(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    counter = Counter("shared")
    app.record([counter])
    first, second = app.repository.get(counter.id), app.repository.get(counter.id)
    first.increment()
    second.increment()  # the same version again: must conflict with ``first``
    other = Counter("other")
    batch = [
        _Write([app.mapper.to_stored_event(e) for e in first.collect_events()],
               [Tracking("upstream", 1)]),
        _Write([app.mapper.to_stored_event(e) for e in second.collect_events()],
               [Tracking("upstream", 2)]),
        _Write([app.mapper.to_stored_event(e) for e in other.collect_events()],
               [Tracking("upstream", 3)]),
    ]
    assert app._group is not None
    app._group._commit(batch)
    assert batch[0].error is None and batch[2].error is None
    assert isinstance(batch[1].error, IntegrityError)
    assert app.repository.get(counter.id).count == 1
    assert app.repository.get(other.id).name == "other"
    assert app.is_tracked("upstream", 1) and app.is_tracked("upstream", 3)
    assert not app.is_tracked("upstream", 2)  # the refused write left nothing behind
    app.close()


def test_a_conflicting_record_raises_integrity_error(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    counter = Counter(f"c-{uuid4().hex[:6]}")
    app.record([counter])
    stale = app.repository.get(counter.id)
    fresh = app.repository.get(counter.id)
    fresh.increment()
    app.record([fresh], Tracking("upstream", 7))
    stale.increment()
    with pytest.raises(IntegrityError):
        app.record([stale], Tracking("upstream", 8))
    assert not app.is_tracked("upstream", 8)
    # the tracking of a handled message is refused the same way when recorded twice
    with pytest.raises(IntegrityError):
        app.insert_tracking(Tracking("upstream", 7))
    app.close()
