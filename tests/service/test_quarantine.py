"""No poison message stalls the relay or a consumer: each one quarantines a message no retry can
help (stream HITL_DLQ, listed by ``hitlflow doctor``) and every other thread goes on; an outage
or a conflict storm is retried, never quarantined.

Every consumer test follows one script: a thread paused before the poison, the poison for
another thread, then a fresh thread runs start → pause → resume → completed, the earlier
thread resumes and completes, and ``hitlflow doctor --json`` lists the poison with the source
and reason. Where a crafted message that decodes can make handling fail for real, the test
sends one; where none can, the test makes the running service's aggregate lookup raise for
the poison thread only (``fail_lookup``) and its docstring says so. Real nats-server, real
stores; messages are delivered again after 50 ms and quarantined at the second failure.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent

from contracts import subjects
from contracts.events import EventEnvelope
from contracts.limits import NATS_MAX_PAYLOAD
from contracts.timeouts import TimeoutInteraction
from hitlflow.settings import Settings
from hitlflow.stack import EmbeddedNats, free_port
from hitlflow.testing import HitlTestStack
from services.common.messaging import connect, ensure_streams
from services.common.quarantine import QuarantineError
from services.common.relay import Relay
from services.interaction import handlers as interaction_handlers
from services.interaction.domain import inbox_uuid
from services.timeout.domain import deadline_uuid
from services.workflow.domain import Thread, thread_uuid
from tests.conftest import EXAMPLE_AGENTS, example
from tests.helpers import cli, cli_json, wait_for
from tests.unit.test_group_commit import Counter, make_app

APPROVAL = example("approval.csv") + "::ApprovalFlow"
STATE = {"user_request": "Buy 3 laptops"}
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


class InjectedFaultError(Exception):
    """A fault a test makes a running service raise for one thread only."""


@pytest.fixture
def stack(tmp_path: Path, settings: Settings) -> Iterator[HitlTestStack]:
    quick = settings.model_copy(update={"poison_attempts": 2, "redelivery_delay": 0.05})
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=quick) as running:
        yield running


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def app_of(stack: HitlTestStack, service: str) -> Any:
    runtime = stack.stack.runtimes[service]
    return runtime.runtime.app if service == "timeout" else runtime.app


def fail_lookup(monkeypatch: pytest.MonkeyPatch, app: Any, aggregate_id: UUID,
                error: Callable[[], Exception] | None = None, times: int | None = None) -> None:
    """Make the running service's aggregate lookup raise for one aggregate (``times`` times,
    or always)."""
    original = app.get_or_none
    calls = itertools.count(1)
    lock = threading.Lock()

    def get_or_none(wanted: UUID) -> Any:
        if wanted == aggregate_id:
            with lock:
                call = next(calls)
            if times is None or call <= times:
                raise (error or (lambda: InjectedFaultError(f"injected fault {wanted}")))()
        return original(wanted)

    monkeypatch.setattr(app, "get_or_none", get_or_none)


#: Positions of crafted events: none a service gives (0, -1, ...), each its own, so that no
#: consumer takes one for a redelivery of another and no view's position moves.
CRAFTED = itertools.count(0, -1)


def envelope(service: str, event_type: str, thread_id: str, payload: dict[str, Any], *,
             position: int | None = None) -> tuple[str, bytes]:
    """A crafted event as another publisher could send it."""
    position = next(CRAFTED) if position is None else position
    env = EventEnvelope(event_type=event_type, service=service,  # type: ignore[arg-type]
                        thread_id=thread_id, event_id=str(uuid.uuid4()),
                        aggregate_id=str(uuid.uuid4()), aggregate_version=1, position=position,
                        occurred_at=datetime.now(UTC), payload=payload)
    return f"hitl.evt.{service}.{event_type}.{thread_id}", env.model_dump_json().encode()


def publish(stack: HitlTestStack, subject: str, data: bytes) -> None:
    stack.call(stack.client.nc.jetstream().publish(subject, data))


def paused(stack: HitlTestStack) -> str:
    thread = unique("earlier")
    stack.assert_paused(stack.start(APPROVAL, STATE, thread_id=thread), node="approve_gate")
    return thread


def goes_on(stack: HitlTestStack, earlier: str) -> None:
    """A fresh thread runs through, and the thread paused before the poison completes; the
    views show both."""
    fresh = unique("fresh")
    stack.assert_paused(stack.start(APPROVAL, STATE, thread_id=fresh), node="approve_gate")
    stack.assert_completed(stack.resume(fresh, "approve"))
    stack.assert_completed(stack.resume(earlier, "approve"))
    for thread in (fresh, earlier):
        view = stack.status(thread)
        assert view is not None and view.status == "completed", view


def quarantined(stack: HitlTestStack, source: str, thread_id: str | None,
                contains: str) -> dict[str, Any]:
    """The entry ``hitlflow doctor --json`` lists for ``source`` (and thread), once there."""

    def probe() -> dict[str, Any] | None:
        code, report, _ = cli_json(stack.nats_url, "doctor", "--limit", "1000")
        assert code == (1 if report["quarantined"] else 0), report["checks"]
        for entry in report["quarantined"]:
            if entry["source"] == source and thread_id in (None, entry["thread_id"]):
                return dict(entry)
        return None

    entry = wait_for(probe, 15, f"{source} to quarantine a message of {thread_id}")
    assert contains in entry["reason"], entry
    return entry


def scenario(stack: HitlTestStack, poison: Callable[[str], None], *, source: str,
             contains: str) -> dict[str, Any]:
    earlier = paused(stack)
    thread = unique("poison")
    poison(thread)
    goes_on(stack, earlier)
    return quarantined(stack, source, thread, contains)


# -- the relay ----------------------------------------------------------------------------------


def test_the_relay_quarantines_events_it_can_never_publish_and_goes_on(
        stack: HitlTestStack) -> None:
    """Saved straight into the workflow store (past every edge): an event larger than NATS
    takes, and one whose envelope cannot be built (a thread id that is no subject token)."""
    app = app_of(stack, "workflow")
    earlier = paused(stack)
    limit = stack.client.nc.max_payload
    big, bad = unique("big"), "not a subject token"
    for thread_id, inputs in ((big, {"blob": "x" * (limit + 1000)}), (bad, {})):
        app.record([Thread(thread_id=thread_id, graph_name="G", workflow_digest="0" * 64,
                           inputs=inputs, started_by="test", start_node="start")])
    goes_on(stack, earlier)

    too_large = quarantined(stack, "relay-workflow", big, "more than the")
    assert too_large["size"] > limit and not too_large["body_kept"]
    assert too_large["subject"] == f"hitl.evt.workflow.ThreadStarted.{big}"
    assert too_large["ref"].startswith("workflow:")
    no_envelope = quarantined(stack, "relay-workflow", bad,
                              "envelope could not be built: InvalidThreadIdError")
    assert no_envelope["body_kept"]

    result = cli(stack.nats_url, "doctor", "--show", str(no_envelope["seq"]), "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["headers"]["Hitl-Source"] == "relay-workflow"
    assert shown["headers"]["Hitl-Ref"] == no_envelope["ref"]
    assert "not a subject token" in shown["body"]  # the event as its store keeps it


def counter_envelope(event: Any, position: int) -> EventEnvelope | None:
    """Counters as events of thread ``<name>``; ``wide-`` ones carry 4 KB, ``big-`` ones more
    than the server takes."""
    name = event.name
    blob = "x" * (4096 if name.startswith("wide-") else NATS_MAX_PAYLOAD + 1
                  if name.startswith("big-") else 0)
    return EventEnvelope(event_type="NodeCompleted", service="workflow", thread_id=name,
                         event_id=str(uuid.uuid4()), aggregate_id=str(event.originator_id),
                         aggregate_version=1, position=position,
                         occurred_at=event.timestamp, payload={"node": "n", "output": blob})


def on_nats(server: EmbeddedNats, body: Callable[[Any, Any], Any]) -> None:
    async def main() -> None:
        nc = await connect(server.url, name="test", reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await body(nc, js)
        finally:
            await nc.close()

    asyncio.run(main())


def test_the_relay_moves_past_a_poison_event_only_once_its_quarantine_is_stored(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    app = make_app(tmp_path)
    for name in ("t-1", "big-1", "t-2"):
        app.record([Counter(name)])

    async def body(nc: Any, js: Any) -> None:
        relay = Relay(app, js, counter_envelope)
        await js.delete_stream(subjects.DLQ_STREAM)  # the quarantine cannot be stored
        with pytest.raises(QuarantineError):
            await relay.publish_pending()
        assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 0
        await ensure_streams(js)
        assert await relay.publish_pending() == 3
        events = await js.stream_info(subjects.EVENTS_STREAM)
        assert events.state.messages == 2  # t-1 and t-2
        record = await js.get_msg(subjects.DLQ_STREAM, 1)
        assert record.subject == "hitl.dlq.relay-counters"
        assert record.headers["Hitl-Ref"] == "workflow:2"
        assert record.headers["Hitl-Thread"] == "big-1"
        assert int(record.headers["Hitl-Size"]) > NATS_MAX_PAYLOAD and not record.data
        await relay.publish_pending()  # again (a restart): the record is stored once
        assert (await js.stream_info(subjects.DLQ_STREAM)).state.messages == 1
        await relay.close()

    on_nats(nats_server, body)
    app.close()


def test_the_relay_quarantines_an_event_the_stream_refuses_for_good(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """An operator limited the events stream's message size; one event is larger."""
    app = make_app(tmp_path)
    for name in ("t-1", "wide-1", "t-2"):
        app.record([Counter(name)])

    async def body(nc: Any, js: Any) -> None:
        config = (await js.stream_info(subjects.EVENTS_STREAM)).config
        config.max_msg_size = 2048
        await js.update_stream(config)
        relay = Relay(app, js, counter_envelope)
        assert await relay.publish_pending() == 3
        assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 2
        record = await js.get_msg(subjects.DLQ_STREAM, 1)
        assert record.headers["Hitl-Thread"] == "wide-1"
        assert "err_code 10054" in record.headers["Hitl-Error"]
        assert json.loads(record.data)["thread_id"] == "wide-1"  # the message itself is kept
        await relay.close()

    on_nats(nats_server, body)
    app.close()


def test_the_relay_quarantines_a_stored_event_it_cannot_read(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """A stored event of a class this release does not have (written straight to the store)."""
    app = make_app(tmp_path)
    app.record([Counter("t-1")])
    app.recorder.insert_events([StoredEvent(originator_id=uuid.uuid4(), originator_version=1,
                                            topic="gone.module:Gone.Created", state=b'{"a":1}')])
    app.record([Counter("t-2")])

    async def body(nc: Any, js: Any) -> None:
        relay = Relay(app, js, counter_envelope)
        assert await relay.publish_pending() == 3
        assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 2
        record = await js.get_msg(subjects.DLQ_STREAM, 1)
        assert record.headers["Hitl-Ref"] == "counters:2"
        assert "the stored event cannot be read" in record.headers["Hitl-Error"]
        assert record.data == b'{"a":1}'
        await relay.close()

    on_nats(nats_server, body)
    app.close()


def test_the_relay_retries_an_envelope_that_failed_for_a_transient_reason(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """The store is busy while the relay builds an envelope: the batch is tried again, nothing
    is quarantined."""
    app = make_app(tmp_path)
    app.record([Counter("t-1")])
    busy = [True]

    def to_envelope(event: Any, position: int) -> EventEnvelope | None:
        if busy:
            busy.clear()
            raise OperationalError("database is locked")
        return counter_envelope(event, position)

    async def body(nc: Any, js: Any) -> None:
        relay = Relay(app, js, to_envelope)
        with pytest.raises(OperationalError):
            await relay.publish_pending()
        assert await relay.publish_pending() == 1
        assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 1
        assert (await js.stream_info(subjects.DLQ_STREAM)).state.messages == 0
        await relay.close()

    on_nats(nats_server, body)
    app.close()


# -- the workflow service -----------------------------------------------------------------------


@SQLITE_ONLY
def test_workflow_start_quarantines_a_start_it_cannot_decide(
        stack: HitlTestStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: the workflow service's aggregate lookup raises for the poison thread. Its
    sender is told the start was quarantined."""
    app = app_of(stack, "workflow")

    def poison(thread: str) -> None:
        fail_lookup(monkeypatch, app, thread_uuid(thread))
        refused = stack.start(APPROVAL, STATE, thread_id=thread)
        assert "quarantined" in stack.assert_refused(refused, code="quarantined")

    scenario(stack, poison, source="workflow-start", contains="InjectedFaultError")


@SQLITE_ONLY
def test_workflow_cancel_quarantines_a_cancel_it_cannot_decide(
        stack: HitlTestStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: the workflow service's aggregate lookup raises for the poison thread."""
    app = app_of(stack, "workflow")

    def poison(thread: str) -> None:
        fail_lookup(monkeypatch, app, thread_uuid(thread))
        stack.assert_refused(stack.cancel(thread), code="quarantined")

    scenario(stack, poison, source="workflow-cancel", contains="InjectedFaultError")


def accepted(thread: str) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "node_name": "gate", "interaction_type": "approval",
            "action": "approve", "route": "success", "timestamp": datetime.now(UTC).isoformat(),
            "responder": "someone", "idempotency_key": unique("key")}


@SQLITE_ONLY
def test_workflow_answers_quarantines_an_answer_it_cannot_apply(
        stack: HitlTestStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: the workflow service's aggregate lookup raises for the poison thread; the
    answer itself is a valid ResponseAccepted."""
    app = app_of(stack, "workflow")

    def poison(thread: str) -> None:
        fail_lookup(monkeypatch, app, thread_uuid(thread))
        publish(stack, *envelope("interaction", "ResponseAccepted", thread, accepted(thread)))

    scenario(stack, poison, source="workflow-answers", contains="InjectedFaultError")


@SQLITE_ONLY
def test_workflow_timeouts_quarantines_a_timeout_it_cannot_apply(
        stack: HitlTestStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: the workflow service's aggregate lookup raises for the poison thread; the
    event itself is a valid InteractionTimedOut with policy fail."""
    app = app_of(stack, "workflow")

    def poison(thread: str) -> None:
        fail_lookup(monkeypatch, app, thread_uuid(thread))
        publish(stack, *envelope("interaction", "InteractionTimedOut", thread, {
            "request_id": str(uuid.uuid4()), "node_name": "gate", "policy": "fail",
            "timestamp": datetime.now(UTC).isoformat()}))

    scenario(stack, poison, source="workflow-timeouts", contains="InjectedFaultError")


# -- the interaction service --------------------------------------------------------------------


@SQLITE_ONLY
def test_interaction_resume_quarantines_a_response_it_cannot_decide(
        stack: HitlTestStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: the interaction service's aggregate lookup raises for the poison thread's
    inbox. Its sender is told the response was quarantined."""
    app = app_of(stack, "interaction")

    def poison(thread: str) -> None:
        fail_lookup(monkeypatch, app, inbox_uuid(thread))
        stack.assert_refused(stack.resume(thread, "approve"), code="quarantined")

    scenario(stack, poison, source="interaction-resume", contains="InjectedFaultError")


def test_interaction_threads_quarantines_a_pause_with_an_invalid_request(
        stack: HitlTestStack) -> None:
    """Crafted: a ThreadPaused whose request is not a valid InteractionSpec (the envelope and
    its event type are fine). The poison thread's next event is handled too."""
    app = app_of(stack, "interaction")
    started = {"graph_name": "G", "workflow_digest": "0" * 64, "inputs": {},
               "started_by": "test"}
    poisoned: list[str] = []

    def poison(thread: str) -> None:
        poisoned.append(thread)
        publish(stack, *envelope("workflow", "ThreadPaused", thread, {
            "node": "gate", "interactions": [{"id": "r-1", "thread_id": thread}]}))
        publish(stack, *envelope("workflow", "ThreadStarted", thread, started))

    entry = scenario(stack, poison, source="interaction-threads", contains="ValidationError")
    assert entry["subject"] == f"hitl.evt.workflow.ThreadPaused.{poisoned[0]}"
    wait_for(lambda: app.inbox(poisoned[0]) is not None, 10,
             "the poison thread's next event to be handled")


@SQLITE_ONLY
def test_interaction_timeout_quarantines_a_timeout_for_a_request_id_that_is_no_uuid(
        stack: HitlTestStack) -> None:
    """Crafted: a TimeoutInteraction (valid for its contract) whose request id is no UUID."""

    def poison(thread: str) -> None:
        command = TimeoutInteraction(thread_id=thread, request_id="not-a-uuid", step=0,
                                     due_at=datetime.now(UTC))
        publish(stack, subjects.timeout_subject(thread), command.model_dump_json().encode())

    scenario(stack, poison, source="interaction-timeout", contains="badly formed")


def requested(thread: str, **fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "thread_id": thread, "node_name": "gate",
            "interaction_type": "approval", "prompt": "ok?",
            "created_at": datetime.now(UTC).isoformat(), **fields}


@SQLITE_ONLY
def test_interaction_notify_quarantines_a_request_it_cannot_announce(
        stack: HitlTestStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: building the notification raises for the poison thread (the service's
    ``notification_from``); the InteractionRequested itself is valid."""
    original = interaction_handlers.notification_from

    def poison(thread: str) -> None:
        def notification_from(request: Any) -> Any:
            if request.thread_id == thread:
                raise InjectedFaultError(f"injected fault for {thread}")
            return original(request)

        monkeypatch.setattr(interaction_handlers, "notification_from", notification_from)
        publish(stack, *envelope("interaction", "InteractionRequested", thread,
                                 requested(thread)))

    scenario(stack, poison, source="interaction-notify", contains="InjectedFaultError")


# -- the timeout service ------------------------------------------------------------------------


@SQLITE_ONLY
def test_timeout_deadlines_quarantines_a_deadline_it_cannot_read(stack: HitlTestStack) -> None:
    """Crafted: an InteractionRequested whose deadline is Unix seconds: valid for the contract,
    which the deadline consumer cannot read."""

    def poison(thread: str) -> None:
        publish(stack, *envelope("interaction", "InteractionRequested", thread,
                                 requested(thread, timeout_seconds=60, deadline=2_000_000_000)))

    scenario(stack, poison, source="timeout-deadlines", contains="Invalid isoformat")


@SQLITE_ONLY
def test_timeout_fire_quarantines_a_timer_it_cannot_fire(
        stack: HitlTestStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected: the timeout service's aggregate lookup raises for the poison request's
    deadline; the fired timer itself is a valid TimeoutInteraction."""
    app = app_of(stack, "timeout")

    def poison(thread: str) -> None:
        request_id = str(uuid.uuid4())
        fail_lookup(monkeypatch, app, deadline_uuid(request_id))
        command = TimeoutInteraction(thread_id=thread, request_id=request_id, step=0,
                                     due_at=datetime.now(UTC))
        publish(stack, subjects.schedule_fire_subject(thread),
                command.model_dump_json().encode())

    scenario(stack, poison, source="timeout-fire", contains="InjectedFaultError")


# -- the projections ----------------------------------------------------------------------------


def test_projections_quarantine_events_the_views_cannot_take(stack: HitlTestStack) -> None:
    """Crafted: a ThreadStarted without the fields thread_status needs (at a position past the
    workflow service's, where the views take it), and an event whose position no database
    integer holds (every view fails on it)."""
    out_of_range: list[str] = []

    def poison(thread: str) -> None:
        publish(stack, *envelope("workflow", "ThreadStarted", thread, {}, position=10**12))
        other = unique("poison")
        out_of_range.append(other)
        publish(stack, *envelope("workflow", "NodeCompleted", other, {"node": "n"},
                                 position=2**63))

    entry = scenario(stack, poison, source="projections", contains="graph_name")
    assert entry["subject"].startswith("hitl.evt.workflow.ThreadStarted.")
    assert entry["stream_seq"] is not None
    quarantined(stack, "projections", out_of_range[0], "failed 2 times")


# -- what is not poison -------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    lambda: OperationalError("database is locked"),
    lambda: IntegrityError("version conflict"),
], ids=["store-unavailable", "conflict-storm"])
def test_a_transient_failure_is_retried_not_quarantined(
        stack: HitlTestStack, monkeypatch: pytest.MonkeyPatch,
        error: Callable[[], Exception]) -> None:
    """Injected: the interaction service's aggregate lookup fails for the thread's inbox many
    more times than the poison attempts; the thread still pauses and completes."""
    thread = unique("flaky")
    fail_lookup(monkeypatch, app_of(stack, "interaction"), inbox_uuid(thread), error,
                times=4 * stack.settings.poison_attempts)
    stack.assert_paused(stack.start(APPROVAL, STATE, thread_id=thread), node="approve_gate")
    stack.assert_completed(stack.resume(thread, "approve"))
    code, report, _ = cli_json(stack.nats_url, "doctor")
    assert (code, report["quarantined"]) == (0, []), report
    assert report["ok"] and all(check["ok"] for check in report["checks"])
    assert {s["name"] for s in report["streams"]} == {
        subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM, subjects.SCHEDULES_STREAM,
        subjects.DLQ_STREAM}
    assert "interaction-threads" in {c["name"] for c in report["consumers"]}


def test_doctor_fails_its_checks_on_a_nats_without_the_streams(
        nats_server: EmbeddedNats) -> None:
    code, report, _ = cli_json(nats_server.url, "doctor")
    assert code == 1 and not report["ok"]
    failed = {check["name"] for check in report["checks"] if not check["ok"]}
    assert failed == {f"stream {name}" for name in (
        subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM, subjects.SCHEDULES_STREAM,
        subjects.DLQ_STREAM)}


def test_doctor_says_when_no_stack_answers() -> None:
    result = cli(f"nats://127.0.0.1:{free_port()}", "doctor")
    assert result.exit_code == 3
    assert "cannot reach NATS" in result.stderr
