"""The projections at scale: several replicas on one views database (one applies events under
a lease, every one answers queries, a standby takes over when the holder stops or loses it),
and the views' tracking rows compacted without letting a re-published event in twice."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from contracts import subjects
from contracts.events import EventEnvelope
from hitlflow.testing import HitlTestStack
from projections import thread_status
from projections.lease import Lease, LeaseLostError
from projections.main import ProjectionsRuntime
from projections.projector import Projector
from tests.conftest import EXAMPLE_AGENTS, make_settings
from tests.helpers import wait_for
from tests.service.test_projections import dump, views_db
from tests.service.test_timeouts import approval_flow


@pytest.fixture
def scaled(tmp_path: Path, backend: str) -> Any:
    settings = make_settings(backend, tmp_path).model_copy(update={
        "projections_lease_ttl": 1.0, "projections_compact_after": 0.5})
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings) as stack:
        yield stack


def events_in_stream(hitl: HitlTestStack) -> list[EventEnvelope]:
    async def read() -> list[EventEnvelope]:
        js = hitl.client.nc.jetstream()
        sub = await js.pull_subscribe(subjects.EVENTS_ALL, durable=None,
                                      config=None, stream=subjects.EVENTS_STREAM)
        found: list[EventEnvelope] = []
        while True:
            try:
                batch = await sub.fetch(500, timeout=1)
            except TimeoutError:
                break
            for msg in batch:
                found.append(EventEnvelope.model_validate_json(msg.data))
                await msg.ack()
        await sub.unsubscribe()
        return found

    result: list[EventEnvelope] = hitl.call(read())
    return result


def drive(hitl: HitlTestStack, thread: str) -> None:
    hitl.assert_paused(hitl.start(approval_flow({}), {"request": "r"}, thread_id=thread))
    hitl.assert_completed(hitl.resume(thread, "approve"))


def test_a_standby_replica_takes_over_when_the_holder_stops(scaled: HitlTestStack) -> None:
    hitl = scaled
    first: ProjectionsRuntime = hitl.stack.runtimes["projections"]
    second = ProjectionsRuntime(hitl.settings, nats_url=hitl.nats_url,
                                data_dir=hitl.data_dir / "stores")
    hitl.call(second.start())
    try:
        wait_for(lambda: first.leading, what="the first replica to lead")
        assert not second.leading  # one writer at a time
        drive(hitl, "lease-1")
        hitl.call(first.stop())  # releases the lease: the standby takes it at its next try
        wait_for(lambda: second.leading, timeout=10, what="the standby to take over")
        drive(hitl, "lease-2")  # answered, and read back, through the second replica
        view = hitl.status("lease-2")
        assert view is not None and view.status == "completed"
    finally:
        hitl.call(second.stop())


def test_a_replica_that_lost_the_lease_cannot_write(tmp_path: Path, backend: str) -> None:
    settings = make_settings(backend, tmp_path)
    runtime = ProjectionsRuntime(settings, data_dir=tmp_path / "stores")
    db, projector = runtime.db, runtime.projector
    try:
        a, b = Lease(db, ttl=30), Lease(db, ttl=30)
        assert a.acquire() and not b.acquire()
        assert a.acquire()  # renewed by its holder
        with db.transaction() as tx:  # a paused or partitioned holder: its time runs out
            tx.execute("UPDATE view_lease SET expires_at = 0")
        assert b.acquire() and b.epoch == a.epoch + 1
        env = EventEnvelope(event_type="ThreadCancelled", service="workflow",
                            thread_id="fenced", event_id=str(uuid.uuid4()),
                            aggregate_id=str(uuid.uuid4()), aggregate_version=1, position=7,
                            occurred_at="2026-01-01T00:00:00Z", payload={"reason": "x"})
        with pytest.raises(LeaseLostError):
            projector.apply([env], consumer="projections", stream_seq=9, guard=a.check)
        assert db.consumer_position("projections") == 0  # nothing of the batch was kept
        assert projector.apply([env], consumer="projections", stream_seq=9, guard=b.check) == 1
    finally:
        db.close()


def test_a_stop_that_comes_while_the_lease_is_being_taken_gives_it_up(
        tmp_path: Path, backend: str) -> None:
    """The stop of a replica whose first acquire() was still running in its worker thread:
    release() waits for it and gives the lease up, and no later acquire() takes it again, so
    the next replica leads at once instead of after the lease's time runs out."""
    settings = make_settings(backend, tmp_path)
    runtime = ProjectionsRuntime(settings, data_dir=tmp_path / "stores")
    db = runtime.db
    try:
        stopping, next_one = Lease(db, ttl=30), Lease(db, ttl=30)
        with ThreadPoolExecutor(1) as pool:
            with stopping._lock:  # acquire() in its thread, not yet done when the stop comes
                taking = pool.submit(stopping.acquire)
                released = pool.submit(stopping.release)  # queued behind it, as stop() is
            assert taking.result(timeout=10) is True
            released.result(timeout=10)
        assert stopping.acquire() is False  # released for good
        assert next_one.acquire() is True
    finally:
        db.close()


def test_tracking_rows_are_compacted_and_old_events_stay_out(scaled: HitlTestStack) -> None:
    hitl = scaled
    runtime: ProjectionsRuntime = hitl.stack.runtimes["projections"]
    db = views_db(hitl)
    drive(hitl, "compact-1")
    # the live replica folds them into the views' positions once they are old enough
    wait_for(lambda: db.one("SELECT COUNT(*) AS n FROM applied_events")["n"] == 0,  # type: ignore[index]
             timeout=15, what="the tracking rows to be compacted")
    positions = {s: db.position(thread_status.NAME, s) for s in ("workflow", "interaction")}
    assert positions["workflow"] > 0
    before = dump(db)
    # every event published again (e.g. a relay replaying after the dedup window): no change
    projector = Projector(db)
    envelopes = events_in_stream(hitl)
    assert envelopes
    projector.apply(envelopes, guard=runtime.lease.check)
    assert dump(db) == before
    assert {s: db.position(thread_status.NAME, s) for s in positions} == positions
    drive(hitl, "compact-2")  # and new events are applied as ever
    view = hitl.status("compact-2")
    assert view is not None and view.status == "completed"
