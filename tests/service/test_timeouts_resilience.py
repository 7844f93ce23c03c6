"""Exactly-once firing: a restart of the timeout service, a restart of nats-server, and two
timeout service replicas neither lose nor double a timeout."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from services.common.clock import FakeClock
from services.timeout import main as timeout_main
from services.timeout.main import TimeoutRuntime
from services.workflow.domain import thread_uuid
from tests.helpers import stored_events, wait_for
from tests.service.test_timeouts import (
    approval_flow,
    check,
    manual_sweeps,
    scheduled,
    wait_status,
)


def deadline_of(run: Any) -> datetime:
    return datetime.fromisoformat(run.pending[0]["deadline"])


def wait_until_past(moment: datetime) -> None:
    wait_for(lambda: datetime.now(UTC) > moment, timeout=30, what=f"{moment} to pass")


def timed_out_in_store(hitl: HitlTestStack, thread_id: str) -> bool:
    """From the workflow service's own store (needs no client connection)."""
    thread = hitl.stack.runtimes["workflow"].app.get_or_none(thread_uuid(thread_id))
    return thread is not None and thread.status == "timed_out"


def assert_once_each(hitl: HitlTestStack, runs: list[Any]) -> None:
    """One firing, one timeout of the request, one timeout of the thread: no more, no less."""
    request_ids = sorted(run.pending[0]["id"] for run in runs)
    interaction = hitl.stack.runtimes["interaction"].app
    timed_out = [e.request_id for e in stored_events(interaction, "InteractionTimedOut")]
    assert sorted(timed_out) == request_ids
    fired = [e.request_id for e in stored_events(hitl.stack.runtimes["timeout"].app,
                                                 "DeadlineFired")]
    assert sorted(fired) == request_ids
    workflow = hitl.stack.runtimes["workflow"].app
    threads = [e.originator_id for e in stored_events(workflow, "ThreadTimedOut")]
    assert sorted(map(str, threads)) == sorted(str(thread_uuid(r.reply.thread_id))
                                               for r in runs)


def replica(hitl: HitlTestStack, clock: Any = None) -> TimeoutRuntime:
    runtime = timeout_main.build(hitl.settings, nats_url=hitl.nats_url,
                                 data_dir=hitl.data_dir / "stores", clock=clock)
    hitl.call(runtime.start())
    return runtime


def test_a_restart_of_the_timeout_service_loses_and_doubles_nothing(
        hitl: HitlTestStack) -> None:
    before = hitl.start(approval_flow({"timeout_seconds": 0.8}), {"request": "a"},
                        thread_id="rs-before")
    scheduled(hitl, "rs-before")
    hitl.call(hitl.stack.runtimes["timeout"].stop())
    # opened while the timeout service is down: it learns of it only after the restart
    during = hitl.start(approval_flow({"timeout_seconds": 0.3}), {"request": "b"},
                        thread_id="rs-during")
    wait_until_past(max(deadline_of(before), deadline_of(during)))
    assert hitl.status("rs-before").status == "paused"  # type: ignore[union-attr]
    assert hitl.status("rs-during").status == "paused"  # type: ignore[union-attr]
    hitl.stack.runtimes["timeout"] = replica(hitl)
    wait_status(hitl, "rs-before", "timed_out")
    wait_status(hitl, "rs-during", "timed_out")
    assert check(hitl)["fired"] == []
    assert_once_each(hitl, [before, during])


def test_a_restart_of_nats_server_loses_and_doubles_nothing(hitl: HitlTestStack) -> None:
    runs = [hitl.start(approval_flow({"timeout_seconds": 1.0}), {"request": f"n{i}"},
                       thread_id=f"nr-{i}") for i in range(3)]
    for run in runs:
        scheduled(hitl, run.reply.thread_id)
    nats = hitl.stack.nats
    assert nats is not None
    nats.stop()
    wait_until_past(max(deadline_of(run) for run in runs))
    nats.start()
    for run in runs:
        wait_for(lambda r=run: timed_out_in_store(hitl, r.reply.thread_id), timeout=30,
                 what=f"{run.reply.thread_id} to time out after the restart")
    assert_once_each(hitl, runs)


def test_two_replicas_fire_each_deadline_once(hitl: HitlTestStack) -> None:
    second = replica(hitl)
    try:
        runs = [hitl.start(approval_flow({"timeout_seconds": 0.3}), {"request": f"r{i}"},
                           thread_id=f"two-{i}") for i in range(6)]
        for run in runs:
            wait_status(hitl, run.reply.thread_id, "timed_out")
        assert_once_each(hitl, runs)
    finally:
        hitl.call(second.stop())


def test_two_replicas_sweeping_at_once_fire_each_deadline_once(tmp_path: Path,
                                                               settings: Settings) -> None:
    clock = FakeClock(datetime.now(UTC))
    with HitlTestStack(tmp_path, settings=manual_sweeps(settings), clock=clock) as hitl:
        second = replica(hitl, clock)
        try:
            runs = [hitl.start(approval_flow({"timeout_seconds": 60}), {"request": f"s{i}"},
                               thread_id=f"sweep-{i}") for i in range(5)]
            for run in runs:
                scheduled(hitl, run.reply.thread_id)
            clock.advance(61)
            first: TimeoutRuntime = hitl.stack.runtimes["timeout"]

            async def both() -> list[Any]:
                return await asyncio.gather(first.sweep(wait=10), second.sweep(wait=10))

            a, b = hitl.call(both())
            applied = sorted(item.request_id for item in [*a, *b] if item.applied)
            assert applied == sorted(run.pending[0]["id"] for run in runs)
            for run in runs:
                wait_status(hitl, run.reply.thread_id, "timed_out")
            assert_once_each(hitl, runs)
        finally:
            hitl.call(second.stop())
