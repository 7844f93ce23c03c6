"""Timeouts on the whole stack: each policy and a chain, answers just before and just after the
deadline, the sweep finding a deadline whose NATS timer was lost, and the CLI that shows them.

Real-time tests use deadlines well under a second (the NATS timer fires them); exact-boundary
tests use a FakeClock that starts at the real time, so the NATS timer of a 60 s deadline stays
far in the future while the test moves the clock and runs ``hitlflow timeouts check``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from contracts import subjects
from contracts.events import EventEnvelope
from contracts.workflow import NodeSpec, WorkflowSpec
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from services.common.clock import FakeClock
from services.timeout import handlers as timeout_handlers
from tests.helpers import cli, cli_json, wait_for

OPTIONS = ["Production (us-east-1)", "Staging (us-west-2)", "Development (local)",
           "Cancel deployment"]


def approval_flow(context: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec(graph_name="Gate", nodes=(
        NodeSpec(name="start", agent_type="input", next_on_success="gate",
                 input_fields=("request",), output_field="request"),
        NodeSpec(name="gate", agent_type="approval_interaction", next_on_success="done",
                 next_on_failure="refused", prompt="Please approve: {request}",
                 input_fields=("request",), output_field="decision",
                 context={"interaction_type": "approval", **context}),
        NodeSpec(name="done", agent_type="output", prompt="Approved: {request}",
                 input_fields=("decision",), output_field="result"),
        NodeSpec(name="refused", agent_type="output", prompt="Refused: {request}",
                 input_fields=("decision",), output_field="result"),
    ))


def choice_flow(context: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec(graph_name="Pick", nodes=(
        NodeSpec(name="start", agent_type="input", next_on_success="pick",
                 input_fields=("app",), output_field="app"),
        NodeSpec(name="pick", agent_type="choice_interaction", next_on_success="deploy",
                 prompt="Select the deployment environment for {app}", input_fields=("app",),
                 output_field="target",
                 context={"interaction_type": "choice", "options": OPTIONS, **context}),
        NodeSpec(name="deploy", agent_type="echo", input_fields=("target",),
                 output_field="result"),
    ))


def events(hitl: HitlTestStack, thread_id: str) -> list[EventEnvelope]:
    """Every event the HITL_EVENTS stream holds for one thread, from every service, in order."""

    async def read() -> list[EventEnvelope]:
        js = hitl.client.nc.jetstream()
        sub = await js.subscribe(subjects.thread_events_subject(thread_id),
                                 stream=subjects.EVENTS_STREAM, ordered_consumer=True)
        found: list[EventEnvelope] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    return found
                found.append(EventEnvelope.model_validate_json(msg.data))
                if msg.metadata.num_pending == 0:
                    return found
        finally:
            await sub.unsubscribe()

    return hitl.call(read())  # type: ignore[no-any-return]


def kinds(hitl: HitlTestStack, thread_id: str) -> list[str]:
    return [e.event_type for e in events(hitl, thread_id)]


def of_type(hitl: HitlTestStack, thread_id: str, event_type: str) -> list[dict[str, Any]]:
    return [e.payload for e in events(hitl, thread_id) if e.event_type == event_type]


def wait_status(hitl: HitlTestStack, thread_id: str, status: str, timeout: float = 15.0) -> Any:
    def probe() -> Any:
        view = hitl.status(thread_id)
        return view if view is not None and view.status == status else None

    return wait_for(probe, timeout=timeout, what=f"thread {thread_id} to be {status}")


def wait_events(hitl: HitlTestStack, thread_id: str, event_type: str, count: int = 1,
                timeout: float = 15.0) -> list[dict[str, Any]]:
    return wait_for(lambda: (found := of_type(hitl, thread_id, event_type))
                    and len(found) >= count and found,
                    timeout=timeout, what=f"{count} {event_type} of {thread_id}")


def cleared(hitl: HitlTestStack, thread_id: str) -> None:
    """Wait until the timeout service has taken in the answer (it gathers deadline events for
    DEADLINE_LINGER before it handles them)."""
    wait_for(lambda: any(d["reason"] == "answered"
                         for d in of_type(hitl, thread_id, "DeadlineCleared")),
             what=f"the deadline of {thread_id} to be cleared by its answer")


def scheduled(hitl: HitlTestStack, thread_id: str, step: int = 0) -> dict[str, Any]:
    """Wait until the timeout service has set the timer of ``step`` (it follows the request
    asynchronously, a moment after the thread pauses)."""
    found = wait_for(lambda: [d for d in of_type(hitl, thread_id, "DeadlineScheduled")
                              if d["step"] == step],
                     what=f"the deadline of {thread_id} step {step} to be scheduled")
    return found[0]  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


def manual_sweeps(settings: Settings) -> Settings:
    """No periodic sweep while a test runs: only the test's own ``timeouts check`` fires."""
    return settings.model_copy(update={"timeout_sweep_interval": 3600.0})


@pytest.fixture
def faked(tmp_path: Path, settings: Settings, clock: FakeClock) -> Iterator[HitlTestStack]:
    """The whole stack on a clock that only moves when the test says."""
    with HitlTestStack(tmp_path, settings=manual_sweeps(settings), clock=clock) as stack:
        yield stack


def check(hitl: HitlTestStack) -> dict[str, Any]:
    code, reply, stderr = cli_json(hitl.nats_url, "timeouts", "check")
    assert code == 0, stderr
    return reply  # type: ignore[no-any-return]


# -- the policies, on the NATS timer -------------------------------------------------------------


def test_fail_policy_times_the_thread_out(hitl: HitlTestStack) -> None:
    run = hitl.start(approval_flow({"timeout_seconds": 0.3}), {"request": "laptops"},
                     thread_id="to-fail")
    request = run.pending[0]
    assert request["timeout_seconds"] == 0.3 and request["deadline"] is not None
    view = wait_status(hitl, "to-fail", "timed_out")
    assert view.pending == []
    timed_out = wait_events(hitl, "to-fail", "InteractionTimedOut")
    assert [(t["policy"], t["step"]) for t in timed_out] == [("fail", 0)]
    assert of_type(hitl, "to-fail", "ThreadTimedOut") == [
        {"node": "gate", "interaction_id": request["id"]}]
    fired = wait_events(hitl, "to-fail", "DeadlineFired")
    assert [f["via"] for f in fired] == ["schedule"]
    assert [c["reason"] for c in wait_events(hitl, "to-fail", "DeadlineCleared")] == [
        "timed_out"]
    code, status, _ = cli_json(hitl.nats_url, "status", "to-fail")
    assert code == 0 and status["status"] == "timed_out"


def test_default_policy_answers_in_the_persons_place(hitl: HitlTestStack) -> None:
    policy = {"policy": "default", "action": "choose", "data": {"choice": 3}}
    hitl.start(choice_flow({"timeout_seconds": 0.3, "on_timeout": policy}),
               {"app": "payments"}, thread_id="to-default")
    view = wait_status(hitl, "to-default", "completed")
    assert view.output == {"choice": 3, "option": "Development (local)"}
    [answer] = of_type(hitl, "to-default", "ResponseAccepted")
    assert answer["by_timeout"] is True and answer["responder"] == "timeout"
    assert answer["action"] == "choose" and answer["data"] == {"choice": 3}
    [timed_out] = of_type(hitl, "to-default", "InteractionTimedOut")
    assert (timed_out["policy"], timed_out["action"]) == ("default", "choose")
    [resumed] = of_type(hitl, "to-default", "ThreadResumed")
    assert resumed["by_timeout"] is True
    assert "ThreadTimedOut" not in kinds(hitl, "to-default")


def test_remind_policy_renotifies_then_times_out(hitl: HitlTestStack) -> None:
    policy = {"policy": "remind", "after_seconds": 0.2, "times": 2}
    run = hitl.start(approval_flow({"timeout_seconds": 0.2, "on_timeout": policy,
                                    "assignees": ["ann"]}),
                     {"request": "desk"}, thread_id="to-remind")
    wait_status(hitl, "to-remind", "timed_out")
    reminders = of_type(hitl, "to-remind", "InteractionReminded")
    assert [(r["reminder"], r["of"], r["step"]) for r in reminders] == [(1, 2, 0), (2, 2, 1)]
    assert all(r["assignees"] == ["ann"] for r in reminders)
    first_deadline = datetime.fromisoformat(run.pending[0]["deadline"])
    assert datetime.fromisoformat(reminders[0]["deadline"]) > first_deadline
    [timed_out] = of_type(hitl, "to-remind", "InteractionTimedOut")
    assert (timed_out["policy"], timed_out["step"]) == ("fail", 2)
    scheduled = of_type(hitl, "to-remind", "DeadlineScheduled")
    assert [(s["step"], s["policy"]) for s in scheduled] == [
        (0, "remind"), (1, "remind"), (2, "fail")]


def test_a_chain_reminds_escalates_then_takes_the_default(hitl: HitlTestStack) -> None:
    chain = [{"policy": "remind", "after_seconds": 0.2},
             {"policy": "escalate", "to": ["lead"], "timeout_seconds": 0.2},
             {"policy": "default", "action": "reject", "data": {"reason": "nobody answered"}}]
    hitl.start(approval_flow({"timeout_seconds": 0.2, "on_timeout": chain,
                              "assignees": ["ann"]}),
               {"request": "yacht"}, thread_id="to-chain")
    view = wait_status(hitl, "to-chain", "completed")
    assert view.output == "Refused: yacht"
    steps = [k for k in kinds(hitl, "to-chain") if k in (
        "InteractionReminded", "InteractionEscalated", "ResponseAccepted",
        "InteractionTimedOut", "ThreadResumed")]
    assert steps == ["InteractionReminded", "InteractionEscalated", "ResponseAccepted",
                     "InteractionTimedOut", "ThreadResumed"]
    [escalated] = of_type(hitl, "to-chain", "InteractionEscalated")
    assert (escalated["from_assignees"], escalated["assignees"]) == (["ann"], ["lead"])
    [answer] = of_type(hitl, "to-chain", "ResponseAccepted")
    assert answer["by_timeout"] and answer["data"] == {"reason": "nobody answered"}
    assert answer["route"] == "failure"


# -- the deadline itself, on a fake clock --------------------------------------------------------


def test_an_answer_just_before_the_deadline_wins(faked: HitlTestStack,
                                                 clock: FakeClock) -> None:
    faked.start(approval_flow({"timeout_seconds": 60}), {"request": "chairs"},
                thread_id="to-before")
    scheduled(faked, "to-before")
    clock.advance(59.999)
    done = faked.resume("to-before", "approve")
    assert done.ok and done.status == "completed"
    clock.advance(3600)
    assert check(faked)["fired"] == []  # the check waits until the answer is taken in
    assert of_type(faked, "to-before", "DeadlineCleared")[0]["reason"] == "answered"
    assert "InteractionTimedOut" not in kinds(faked, "to-before")
    assert faked.status("to-before").status == "completed"  # type: ignore[union-attr]


def test_an_answer_just_after_the_deadline_is_refused_as_late(faked: HitlTestStack,
                                                              clock: FakeClock) -> None:
    run = faked.start(approval_flow({"timeout_seconds": 60}), {"request": "chairs"},
                      thread_id="to-after")
    scheduled(faked, "to-after")
    clock.advance(60)  # exactly at the deadline: too late
    result = cli(faked.nats_url, "resume", "to-after", "approve")
    assert result.exit_code == 1
    assert "late" in result.stderr and "too late" in result.stderr
    assert faked.status("to-after").status == "paused"  # type: ignore[union-attr]
    reply = check(faked)
    assert [(f["thread_id"], f["policy"], f["applied"]) for f in reply["fired"]] == [
        ("to-after", "fail", True)]
    wait_status(faked, "to-after", "timed_out")
    again = faked.resume("to-after", "approve")
    assert not again.ok and again.reply.code == "late"
    codes = [r["code"] for r in faked.rejections("to-after")]
    assert codes == ["late", "late"]
    assert of_type(faked, "to-after", "ResponseRejected")[0]["code"] == "late"
    assert [t["request_id"] for t in of_type(faked, "to-after", "InteractionTimedOut")] == [
        run.pending[0]["id"]]


def test_escalation_gives_new_assignees_a_new_deadline(faked: HitlTestStack,
                                                       clock: FakeClock) -> None:
    policy = {"policy": "escalate", "to": ["lead@example.com"], "timeout_seconds": 600}
    faked.start(approval_flow({"timeout_seconds": 60, "on_timeout": policy,
                               "assignees": ["ann"]}),
                {"request": "servers"}, thread_id="to-escalate")
    scheduled(faked, "to-escalate")
    clock.advance(61)
    reply = check(faked)
    assert [(f["policy"], f["applied"]) for f in reply["fired"]] == [("escalate", True)]

    def moved_on() -> Any:
        code, deadlines, _ = cli_json(faked.nats_url, "timeouts", "list", "to-escalate")
        assert code == 0
        return [(d["step"], d["policy"], d["status"]) for d in deadlines if d["step"] == 1]

    assert wait_for(moved_on, what="the escalated deadline") == [(1, "fail", "pending")]
    clock.advance(300)  # past the first deadline, well before the escalated one
    done = faked.resume("to-escalate", "approve", on_behalf_of="lead@example.com")
    assert done.ok and done.status == "completed"
    cleared(faked, "to-escalate")
    clock.advance(600)
    assert check(faked)["fired"] == []


def test_a_repeated_check_fires_nothing_twice(faked: HitlTestStack, clock: FakeClock) -> None:
    for i in range(3):
        faked.start(approval_flow({"timeout_seconds": 30}), {"request": f"r{i}"},
                    thread_id=f"to-twice-{i}")
        scheduled(faked, f"to-twice-{i}")
    clock.advance(31)
    first = check(faked)
    assert sorted(f["thread_id"] for f in first["fired"]) == [f"to-twice-{i}" for i in range(3)]
    assert all(f["applied"] for f in first["fired"])
    for i in range(3):
        wait_status(faked, f"to-twice-{i}", "timed_out")
    assert check(faked)["fired"] == []
    for i in range(3):
        assert len(of_type(faked, f"to-twice-{i}", "InteractionTimedOut")) == 1


def test_a_cancelled_thread_clears_its_deadline(faked: HitlTestStack, clock: FakeClock) -> None:
    faked.start(approval_flow({"timeout_seconds": 30}), {"request": "x"}, thread_id="to-cancel")
    scheduled(faked, "to-cancel")
    assert faked.cancel("to-cancel", "no longer needed").ok
    assert wait_events(faked, "to-cancel", "DeadlineCleared")[0]["reason"] == "cancelled"
    clock.advance(31)
    assert check(faked)["fired"] == []
    assert faked.status("to-cancel").status == "cancelled"  # type: ignore[union-attr]


# -- the sweep, the safety net -------------------------------------------------------------------


def test_the_sweep_finds_a_deadline_whose_timer_message_was_lost(faked: HitlTestStack,
                                                                 clock: FakeClock) -> None:
    run = faked.start(approval_flow({"timeout_seconds": 60}), {"request": "lost"},
                      thread_id="to-lost")
    request_id = run.pending[0]["id"]
    held = subjects.schedule_subject(request_id, "to-lost")

    async def timer_message() -> Any:
        js = faked.client.nc.jetstream()
        try:
            return await js.get_last_msg(subjects.SCHEDULES_STREAM, held)
        except NotFoundError:
            return None

    message = wait_for(lambda: faked.call(timer_message()), what="the NATS timer to be set")
    assert message.headers["Nats-Schedule"].startswith("@at ")

    async def lose_it() -> None:
        await faked.client.nc.jetstream().purge_stream(subjects.SCHEDULES_STREAM, subject=held)

    faked.call(lose_it())
    assert faked.call(timer_message()) is None
    clock.advance(61)
    reply = check(faked)
    assert [(f["request_id"], f["applied"]) for f in reply["fired"]] == [(request_id, True)]
    wait_status(faked, "to-lost", "timed_out")
    assert [f["via"] for f in of_type(faked, "to-lost", "DeadlineFired")] == ["sweep"]


def test_check_lists_what_timed_out(faked: HitlTestStack, clock: FakeClock) -> None:
    faked.start(approval_flow({"timeout_seconds": 10}), {"request": "x"}, thread_id="to-list")
    scheduled(faked, "to-list")
    result = cli(faked.nats_url, "timeouts", "check")
    assert result.exit_code == 0 and "no deadline had passed (1 pending)" in result.stdout
    clock.advance(11)
    result = cli(faked.nats_url, "timeouts", "check")
    assert result.exit_code == 0, result.stderr
    assert "to-list" in result.stdout and "gate" in result.stdout and "applied" in result.stdout
    assert "1 timed out, 0 still pending" in result.stdout


@pytest.fixture
def gathering(tmp_path: Path, settings: Settings, clock: FakeClock,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[HitlTestStack]:
    """A stack whose timeout service lets deadline events gather for a whole second."""
    monkeypatch.setattr(timeout_handlers, "DEADLINE_LINGER", 1.0)
    with HitlTestStack(tmp_path, settings=manual_sweeps(settings), clock=clock) as stack:
        yield stack


def test_check_and_list_see_every_request_made_before_them(gathering: HitlTestStack,
                                                           clock: FakeClock) -> None:
    """No waiting for the timer to be set: ``timeouts list`` and ``check`` wait until the
    timeout service has recorded what was published before they asked."""
    gathering.start(approval_flow({"timeout_seconds": 60}), {"request": "x"},
                    thread_id="to-fresh")
    code, listed, stderr = cli_json(gathering.nats_url, "timeouts", "list")
    assert code == 0, stderr
    assert [(d["thread_id"], d["status"]) for d in listed] == [
        ("to-fresh", "pending")]
    gathering.start(approval_flow({"timeout_seconds": 60}), {"request": "y"},
                    thread_id="to-fresher")
    clock.advance(61)
    fired = check(gathering)["fired"]
    assert sorted((f["thread_id"], f["applied"]) for f in fired) == [
        ("to-fresh", True), ("to-fresher", True)]
    wait_status(gathering, "to-fresher", "timed_out")


@contextmanager
def consumer_paused(hitl: HitlTestStack, stream: str, durable: str) -> Iterator[None]:
    """Hold a durable consumer at the server (nothing is delivered to it) for the block."""
    js = hitl.client.nc.jetstream()
    hitl.call(js.pause_consumer(stream, durable, "2100-01-01T00:00:00Z"))
    try:
        yield
    finally:
        hitl.call(js.resume_consumer(stream, durable))


def test_a_lagging_timeout_service_answers_from_what_it_recorded_and_says_so(
        tmp_path: Path, settings: Settings, clock: FakeClock) -> None:
    """It waits a third of the reply timeout (here 0.5 s) for its consumer, then answers with
    how many events it had still to record; the CLI warns on stderr, the JSON says it.

    The server holds the deadline consumer (a paused consumer gets no deliveries) until the
    test lets it go, so the lag lasts exactly as long as the test needs it, however loaded the
    machine."""
    quick = manual_sweeps(settings).model_copy(update={"reply_timeout": 1.5})
    with HitlTestStack(tmp_path, settings=quick, clock=clock) as hitl:
        with consumer_paused(hitl, subjects.EVENTS_STREAM, timeout_handlers.DEADLINES_CONSUMER):
            hitl.start(approval_flow({"timeout_seconds": 60}), {"request": "x"},
                       thread_id="to-lag")
            listed = cli(hitl.nats_url, "timeouts", "list")
            assert listed.exit_code == 0, listed.stderr
            assert "no pending deadlines" in listed.stdout
            warning = " ".join(listed.stderr.split())
            assert ("the timeout service had 1 interaction event(s) still to record; deadlines "
                    "they set or clear are not in this answer") in warning
            clock.advance(61)
            reply = check(hitl)
            assert (reply["fired"], reply["unrecorded"]) == ([], 1)
        fired = wait_for(lambda: check(hitl)["fired"], timeout=20,
                         what="the deadline to be recorded and fired")
        assert [(f["thread_id"], f["applied"]) for f in fired] == [("to-lag", True)]
        wait_status(hitl, "to-lag", "timed_out")
        # its InteractionTimedOut gathers in turn; once recorded, nothing is left
        wait_for(lambda: check(hitl)["unrecorded"] == 0, timeout=20, what="nothing unrecorded")


# -- where deadlines come from, and how they show -------------------------------------------------


def test_pending_shows_each_deadline_and_the_time_left(hitl: HitlTestStack) -> None:
    hitl.start(approval_flow({"timeout_seconds": 7200}), {"request": "a"}, thread_id="to-show")
    scheduled(hitl, "to-show")
    code, items, _ = cli_json(hitl.nats_url, "pending", "to-show")
    assert code == 0 and items[0]["timeout_seconds"] == 7200 and items[0]["deadline"]
    result = cli(hitl.nats_url, "pending", "to-show")
    assert "Answer before" in result.stdout
    assert "1h 59m left" in result.stdout or "2h 00m left" in result.stdout
    result = cli(hitl.nats_url, "timeouts", "list")
    assert "to-show" in result.stdout and "left" in result.stdout


def test_defaults_per_interaction_type_come_from_settings(hitl: HitlTestStack) -> None:
    approval = hitl.start(approval_flow({}), {"request": "a"}, thread_id="to-default-24h")
    assert approval.pending[0]["timeout_seconds"] == 24 * 3600
    choice = hitl.start(choice_flow({}), {"app": "b"}, thread_id="to-default-30m")
    assert choice.pending[0]["timeout_seconds"] == 30 * 60
    none = hitl.start(approval_flow({"timeout_seconds": None}), {"request": "c"},
                      thread_id="to-no-timeout")
    assert none.pending[0]["timeout_seconds"] is None
    assert none.pending[0]["deadline"] is None
    assert Settings(timeout_approval="none").request_timeouts().get("approval") is None  # type: ignore[arg-type]


def test_an_invalid_on_timeout_is_refused_at_start(hitl: HitlTestStack) -> None:
    outcome = hitl.start(approval_flow({"timeout_seconds": 5, "on_timeout": "remind"}),
                         {"request": "a"}, thread_id="to-invalid")
    assert not outcome.ok and outcome.reply.code == "invalid_workflow"
    assert "node 'gate'" in (outcome.reply.error or "")
    assert '"after_seconds"' in (outcome.reply.error or "")


def test_no_timeout_service_exits_3(tmp_path: Path) -> None:
    from hitlflow.stack import free_port

    result = cli(f"nats://127.0.0.1:{free_port()}", "timeouts", "check")
    assert result.exit_code == 3 and "cannot reach NATS" in result.stderr


def test_a_timeout_service_that_cannot_answer_says_why_at_once(faked: HitlTestStack) -> None:
    """Its deadline index closed under it (a real failure of the service, not of NATS): both
    requests are answered with what went wrong, exit 3 (not the CLI's own "no timeout service
    answered" after its wait), and the service goes on answering once its index is back."""
    faked.start(approval_flow({"timeout_seconds": 60}), {"request": "x"}, thread_id="to-broken")
    timeout = faked.stack.runtimes["timeout"]
    index = timeout.sweeper.index
    scheduled(faked, "to-broken")
    faked.call(asyncio.to_thread(index.close))
    try:
        for command in ("list", "check"):
            result = cli(faked.nats_url, "timeouts", command)
            assert result.exit_code == 3, (command, result.stdout, result.stderr)
            said = " ".join(result.stderr.split())
            assert f"the timeout service could not answer this {command} request" in said
            assert "closed database" in said
    finally:
        timeout.sweeper.index = type(index)(index.path, timeout.app)
    code, listed, stderr = cli_json(faked.nats_url, "timeouts", "list")
    assert code == 0, stderr
    assert [d["thread_id"] for d in listed] == ["to-broken"]


def test_a_stuck_timeout_service_answers_when_its_time_is_up(
        tmp_path: Path, settings: Settings, clock: FakeClock) -> None:
    """Its deadline index does not answer (held, as a disk that hangs would hold it): the list
    is answered after two thirds of the reply timeout (here 1 s) with that, not left to the
    caller's own timeout."""
    quick = manual_sweeps(settings).model_copy(update={"reply_timeout": 1.5})
    with HitlTestStack(tmp_path, settings=quick, clock=clock) as hitl:
        index = hitl.stack.runtimes["timeout"].sweeper.index
        with index._lock:
            result = cli(hitl.nats_url, "timeouts", "list")
        assert result.exit_code == 3, result.stdout
        assert ("the timeout service could not answer this list request: it had not answered "
                "within 1 s") in " ".join(result.stderr.split())
        code, listed, stderr = cli_json(hitl.nats_url, "timeouts", "list")
        assert (code, listed) == (0, []), stderr
