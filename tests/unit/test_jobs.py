"""A batch of jobs is decided in order and saved in one transaction; when it cannot be, the
jobs are decided again one by one and each keeps its own outcome. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Tracking

from hitlflow.settings import Settings
from services.common.store import Job
from tests.conftest import BACKENDS, make_settings
from tests.unit.test_group_commit import Counter, CounterApp


class Refused(Exception):
    pass


def increment(app: CounterApp, counter_id: Any, key: str, position: int, *,
              refuse: bool = False, fail: bool = False, then: Any = None) -> Job:
    """A job that adds one to a counter and returns the count it reached."""

    def decide() -> tuple[Sequence[Aggregate], int]:
        counter: Counter = app.load(counter_id)
        counter.increment()
        if then is not None:
            then()
        if refuse:
            raise Refused("no")
        if fail:
            raise RuntimeError("agent crashed")
        return [counter], counter.count

    return Job(key, decide, Tracking("upstream", position), refusals=(Refused,),
               on_duplicate=lambda: "seen")


def saved_count(app: CounterApp, counter_id: Any) -> int:
    count: int = app.repository.get(counter_id).count
    return count


def saved(app: CounterApp, *names: str) -> list[Counter]:
    counters = [Counter(name) for name in names]
    app.record(counters)
    return counters


def bump_elsewhere(replica: CounterApp, counter_id: Any) -> None:
    """Another replica, writing to the same store, adds one to the counter."""
    counter = replica.repository.get(counter_id)
    counter.increment()
    replica.record([counter])


@pytest.fixture(params=BACKENDS)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CounterApp]:
    settings: Settings = make_settings(str(request.param), tmp_path)
    counters = CounterApp(settings.store_env("counters", tmp_path))
    yield counters
    counters.close()
    if settings.persistence == "postgres":
        import psycopg

        assert settings.postgres_dsn
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {settings.postgres_schema} CASCADE")


@pytest.fixture
def replica(app: CounterApp) -> Iterator[CounterApp]:
    other = CounterApp(app.env)
    yield other


def test_a_batch_is_one_transaction_and_later_jobs_see_earlier_changes(app: CounterApp) -> None:
    a, b = saved(app, "a", "b")
    batch_write = app._batch_write
    assert batch_write is not None
    writes: list[tuple[int, int]] = []
    write = batch_write.write

    def counted(events: Any, trackings: Any, *rest: Any) -> Any:
        writes.append((len(events), len(trackings)))
        return write(events, trackings, *rest)

    batch_write.write = counted  # type: ignore[method-assign]
    jobs = [increment(app, a.id, "a", 1), increment(app, b.id, "b", 2),
            increment(app, a.id, "a", 3), increment(app, a.id, "a", 4)]
    app.run_jobs(jobs)
    assert [job.result for job in jobs] == [1, 1, 2, 3]
    assert writes == [(4, 4)]  # one write: every event and tracking row of the batch
    assert saved_count(app, a.id) == 3 and saved_count(app, b.id) == 1
    assert all(app.is_tracked("upstream", n) for n in (1, 2, 3, 4))

    again = [increment(app, a.id, "a", 1), increment(app, a.id, "a", 5)]
    app.run_jobs(again)  # a redelivered message changes nothing
    assert [(job.duplicate, job.result) for job in again] == [(True, "seen"), (False, 4)]
    assert saved_count(app, a.id) == 4


def test_a_refused_job_saves_nothing_not_even_its_tracking(app: CounterApp) -> None:
    a, b = saved(app, "a", "b")
    jobs = [increment(app, a.id, "a", 1), increment(app, b.id, "b", 2, refuse=True),
            increment(app, b.id, "b", 3)]
    app.run_jobs(jobs)
    assert isinstance(jobs[1].refused, Refused) and not jobs[1].failed
    assert saved_count(app, a.id) == 1 and saved_count(app, b.id) == 1
    assert not app.is_tracked("upstream", 2) and app.is_tracked("upstream", 3)


def test_a_refusal_that_half_changed_an_earlier_jobs_aggregate_is_not_saved(
        app: CounterApp) -> None:
    a, = saved(app, "a")
    # the second job changes the counter the first one returned, then is refused: its change
    # must not ride along with the third job's
    jobs = [increment(app, a.id, "a", 1), increment(app, a.id, "a", 2, refuse=True),
            increment(app, a.id, "a", 3)]
    app.run_jobs(jobs)
    assert [job.result for job in jobs] == [1, None, 2]
    assert saved_count(app, a.id) == 2


def test_a_conflict_with_another_writer_decides_again_one_by_one(
        app: CounterApp, replica: CounterApp) -> None:
    a, b = saved(app, "a", "b")
    raced: list[bool] = []

    def race() -> None:  # the other replica changes ``a`` while the batch is being decided
        if not raced:
            raced.append(True)
            bump_elsewhere(replica, a.id)

    jobs = [increment(app, b.id, "b", 1), increment(app, a.id, "a", 2, then=race),
            increment(app, a.id, "a", 3)]
    app.run_jobs(jobs)
    assert not any(job.failed for job in jobs)
    assert [job.result for job in jobs] == [1, 2, 3]
    assert saved_count(app, a.id) == 3 and saved_count(app, b.id) == 1


def test_a_failing_job_stops_the_later_jobs_of_its_key_only(app: CounterApp) -> None:
    a, b = saved(app, "a", "b")
    jobs = [increment(app, a.id, "a", 1), increment(app, a.id, "a", 2, fail=True),
            increment(app, a.id, "a", 3), increment(app, b.id, "b", 4)]
    app.run_jobs(jobs)
    assert [job.failed for job in jobs] == [False, True, True, False]
    assert isinstance(jobs[1].error, RuntimeError) and jobs[2].skipped
    assert saved_count(app, a.id) == 1 and saved_count(app, b.id) == 1
    assert not app.is_tracked("upstream", 2) and not app.is_tracked("upstream", 3)


def bump_unless_zero(app: CounterApp, counter_id: Any, key: str, position: int) -> Job:
    """Adds one, unless the counter is still at zero (then there is nothing to save)."""

    def decide() -> tuple[Sequence[Aggregate], int]:
        counter: Counter = app.load(counter_id)
        if counter.count == 0:
            return [], 0
        counter.increment()
        return [counter], counter.count

    return Job(key, decide, Tracking("upstream", position))


def test_a_decision_resting_on_a_cached_aggregate_it_does_not_save_is_made_again(
        app: CounterApp, replica: CounterApp) -> None:
    a = Counter("a")
    app.record([a])  # cached here at count 0
    bump_elsewhere(replica, a.id)  # the store says 1; this process's cache still says 0
    for jobs in ([bump_unless_zero(app, a.id, "a", 1)],  # one job: decided on its own
                 [bump_unless_zero(app, a.id, "a", 2), increment(app, a.id, "b", 3)]):
        app.run_jobs(jobs)
        assert not any(job.failed for job in jobs)
    assert saved_count(app, a.id) == 4


def test_a_stale_cached_aggregate_that_is_saved_conflicts_and_is_read_again(
        app: CounterApp, replica: CounterApp) -> None:
    a, = saved(app, "a")
    bump_elsewhere(replica, a.id)
    job = app.run_job(increment(app, a.id, "a", 1))
    assert job.result == 2 and saved_count(app, a.id) == 2


def test_a_cached_aggregate_changed_by_a_failed_decision_is_not_seen_by_the_next(
        app: CounterApp) -> None:
    a, = saved(app, "a")  # cached here at count 0
    for failing in (increment(app, a.id, "a", 1, fail=True),
                    increment(app, a.id, "a", 2, refuse=True)):
        app.run_jobs([failing])  # each took the cached counter and changed it before failing
        assert failing.failed or failing.refused is not None
        job = app.run_job(increment(app, a.id, "a", failing.tracking.notification_id + 10))
        assert job.result == saved_count(app, a.id)
    assert saved_count(app, a.id) == 2
