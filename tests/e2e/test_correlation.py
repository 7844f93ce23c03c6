"""One correlation id from a command through every event it causes, in every service, and
every log line about it (header ``Hitl-Correlation-Id``)."""

from __future__ import annotations

import uuid

import pytest

from contracts import subjects
from hitlflow.testing import HitlTestStack
from tests.helpers import wait_for
from tests.service.test_timeouts import approval_flow


def events_with_headers(hitl: HitlTestStack, thread: str) -> list[tuple[str, str | None]]:
    async def read() -> list[tuple[str, str | None]]:
        js = hitl.client.nc.jetstream()
        sub = await js.pull_subscribe(subjects.thread_events_subject(thread), durable=None,
                                      stream=subjects.EVENTS_STREAM)
        found: list[tuple[str, str | None]] = []
        while True:
            try:
                batch = await sub.fetch(100, timeout=1)
            except TimeoutError:
                break
            for msg in batch:
                found.append((msg.subject.split(".")[3],
                              (msg.headers or {}).get(subjects.CORRELATION_HEADER)))
                await msg.ack()
        await sub.unsubscribe()
        return found

    result: list[tuple[str, str | None]] = hitl.call(read())
    return result


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_correlation_id_follows_a_command_through_every_service(
        hitl: HitlTestStack, request: pytest.FixtureRequest) -> None:
    thread = f"corr-{uuid.uuid4().hex[:8]}"
    started = hitl.start(approval_flow({"timeout_seconds": 3600}), {"request": "r"},
                         thread_id=thread)
    hitl.assert_paused(started)
    answered = hitl.resume(thread, "approve")
    hitl.assert_completed(answered)
    start_id, resume_id = started.correlation_id, answered.correlation_id
    assert start_id and resume_id and start_id != resume_id

    def settled() -> list[tuple[str, str | None]] | None:
        found = events_with_headers(hitl, thread)
        return found if any(t == "DeadlineCleared" for t, _ in found) else None

    events = dict(wait_for(settled, what="the deadline to be cleared"))
    # the start, through the workflow, interaction and timeout services
    for event_type in ("ThreadStarted", "ThreadPaused", "InteractionRequested",
                       "DeadlineScheduled"):
        assert events[event_type] == start_id, event_type
    # the answer, through the interaction, workflow and timeout services
    for event_type in ("ResponseAccepted", "ThreadResumed", "ThreadCompleted",
                       "DeadlineCleared"):
        assert events[event_type] == resume_id, event_type
    # the services' log lines (structlog prints to the process's stderr, as captured here)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None or not capture.is_globally_capturing():
        pytest.skip("the log lines are checked when pytest captures the output")
    logged = capture.read_global_capture()[1]
    for line in logged.splitlines():
        if thread in line and ("thread_started" in line or "response_accepted" in line
                               or "deadline_" in line):
            assert f"correlation_id={start_id}" in line or \
                f"correlation_id={resume_id}" in line, line
    assert f"correlation_id={resume_id}" in logged and f"correlation_id={start_id}" in logged
