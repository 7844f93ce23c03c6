"""The projections on the whole stack (real nats-server, real stores, SQLite and PostgreSQL):
thread status through a thread's life, ``show``, ``audit`` and ``analytics`` on the command
line, rebuilds that give back the live views, events no view knows, and a crash of the
projections service in the middle of a batch."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from contracts import subjects
from contracts.commands import ResumeThread, StartThread
from contracts.events import EventEnvelope
from contracts.queries import ADMIN_REBUILD, RebuildProgress
from contracts.workflow import NodeSpec, WorkflowSpec
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from projections import main as projections_main
from projections.db import ViewDatabase
from projections.projector import VIEWS, Projector
from projections.rebuild import rebuild_from_stores
from services.common.clock import FakeClock
from tests.conftest import POSTGRES_DSN, ROOT
from tests.helpers import cli, cli_json, wait_for

TYPES = str(ROOT / "tests" / "workflows" / "types.csv")


# -- helpers shared with the property test -------------------------------------------------------


def views_db(hitl: HitlTestStack) -> ViewDatabase:
    db: ViewDatabase = hitl.stack.runtimes["projections"].db
    return db


def dump(db: ViewDatabase) -> dict[str, list[str]]:
    """Every row of every view table, comparable across databases."""
    return {table: sorted(json.dumps(row, sort_keys=True, default=str)
                          for row in db.query(f"SELECT * FROM {table}"))
            for view in VIEWS.values() for table in view.tables}


def fresh_rebuild(hitl: HitlTestStack, settings: Settings,
                  parallel: bool | None = None) -> dict[str, list[str]]:
    """The views rebuilt from the stores into a brand-new database (``parallel``: the stores
    read by worker processes, as for large stores)."""
    if settings.persistence == "postgres":
        assert POSTGRES_DSN
        db = ViewDatabase.postgres(POSTGRES_DSN, f"{settings.postgres_schema}_fresh")
    else:
        db = ViewDatabase.sqlite(hitl.data_dir / f"fresh-{uuid.uuid4().hex[:6]}.sqlite")
    try:
        rebuild_from_stores(db, Projector(db), settings, data_dir=hitl.data_dir / "stores",
                            parallel=parallel)
        return dump(db)
    finally:
        db.close()


def quiesce(hitl: HitlTestStack, timeout: float = 20.0, *, besides: str = "") -> None:
    """Wait until nothing is in flight: every relay has published every stored event, every
    durable consumer (but ``besides``) has handled every message, so the views have applied
    everything."""

    async def consumers_idle() -> bool:
        js = hitl.client.nc.jetstream()
        for stream in (subjects.EVENTS_STREAM, subjects.COMMANDS_STREAM,
                       subjects.SCHEDULES_STREAM):
            try:
                infos = await js.consumers_info(stream)
            except Exception:  # a stream this stack does not use
                continue
            if any(i.num_pending or i.num_ack_pending for i in infos if i.name != besides):
                return False
        return True

    def relays_done() -> bool:
        for name, runtime in hitl.stack.runtimes.items():
            app = getattr(runtime, "app", None)
            if name == "projections" or app is None:
                continue
            recorder = app.recorder
            if (recorder.max_tracking_id("nats-relay") or 0) < (
                    recorder.max_notification_id() or 0):
                return False
        return True

    def settled() -> bool:
        return relays_done() and bool(hitl.call(consumers_idle()))

    for _ in range(2):  # twice in a row: nothing was about to start either
        wait_for(settled, timeout=timeout, what="the stack to settle")


def wait_status(hitl: HitlTestStack, thread_id: str, status: str) -> Any:
    def probe() -> Any:
        view = hitl.status(thread_id)
        return view if view is not None and view.status == status else None

    return wait_for(probe, timeout=15, what=f"{thread_id} to be {status}")


def failing_flow() -> WorkflowSpec:
    return WorkflowSpec(graph_name="Breaks", nodes=(
        NodeSpec(name="start", agent_type="echo", next_on_success="needs",
                 input_fields=("request",), output_field="request"),
        NodeSpec(name="needs", agent_type="input", input_fields=("missing",),
                 output_field="x"),
    ))


def gate_flow(context: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec(graph_name="Gate", nodes=(
        NodeSpec(name="start", agent_type="input", next_on_success="gate",
                 input_fields=("request",), output_field="request"),
        NodeSpec(name="gate", agent_type="approval_interaction", next_on_success="done",
                 next_on_failure="done", prompt="Please approve: {request}",
                 input_fields=("request",), output_field="decision",
                 context={"interaction_type": "approval", **context}),
        NodeSpec(name="done", agent_type="echo", input_fields=("decision",),
                 output_field="result"),
    ))


# -- thread status -------------------------------------------------------------------------------


def test_thread_status_through_every_ending(hitl: HitlTestStack) -> None:
    paused = hitl.start(f"{TYPES}::Approve", {"request": "desk"}, thread_id="life-done")
    view = hitl.status("life-done")
    assert view is not None
    assert (view.status, view.current_node, view.graph_name) == ("paused", "gate", "Approve")
    assert [p.id for p in view.pending] == [paused.pending[0]["id"]]
    assert view.completed_at is None and view.started_by == hitl.client.principal
    assert hitl.resume("life-done", "approve").status == "completed"
    done = hitl.status("life-done")  # read-your-writes: right after resume returned
    assert done is not None and (done.status, done.current_node, done.pending) == (
        "completed", None, [])
    assert done.output == "Approved: desk"
    assert done.started_at <= done.updated_at == done.completed_at

    hitl.start(f"{TYPES}::Choice", {"app": "x"}, thread_id="life-cancel")
    hitl.cancel("life-cancel", "changed my mind")
    cancelled = wait_status(hitl, "life-cancel", "cancelled")
    assert cancelled.current_node == "pick" and cancelled.completed_at is not None

    failed = hitl.start(failing_flow(), {"request": "r"}, thread_id="life-fail")
    assert failed.status == "failed"
    view = hitl.status("life-fail")
    assert view is not None and view.status == "failed" and view.current_node == "needs"
    assert view.error is not None and "missing" in view.error

    hitl.start(gate_flow({"timeout_seconds": 0.3}), {"request": "r"}, thread_id="life-late")
    late = wait_status(hitl, "life-late", "timed_out")
    assert late.current_node == "gate" and late.pending == [] and "timed out" in late.error

    code, listed, _ = cli_json(hitl.nats_url, "threads", "--status", "cancelled")
    assert code == 0 and [t["thread_id"] for t in listed] == ["life-cancel"]
    code, listed, _ = cli_json(hitl.nats_url, "threads", "--graph", "Approve")
    assert [t["thread_id"] for t in listed] == ["life-done"]
    code, _, stderr = cli_json(hitl.nats_url, "threads", "--status", "sleeping")
    assert code == 2 and "expected one of: running, paused" in stderr


def test_a_command_reads_its_writes_without_waiting_for_the_linger(tmp_path: Path,
                                                                   settings: Settings) -> None:
    """The views' consumer lets events gather before it applies them (here for a minute, far
    longer than a command may wait for the view); a command's read-your-writes query has it
    apply them at once: right after ``resume`` returns, the view is the new one."""
    lingering = settings.model_copy(update={"projections_linger": 60.0})
    with HitlTestStack(tmp_path, settings=lingering) as hitl:
        assert hitl.stack.runtimes["projections"].events_subscription().linger == 60.0
        hitl.assert_paused(hitl.start(f"{TYPES}::Approve", {"request": "desk"},
                                      thread_id="rw"))
        assert hitl.resume("rw", "approve").status == "completed"
        view = hitl.status("rw")
        assert view is not None and (view.status, view.output) == ("completed",
                                                                   "Approved: desk")


def test_the_views_consumer_deleted_while_it_runs_is_made_again_where_the_views_are(
        hitl: HitlTestStack) -> None:
    """The projections' durable consumer is deleted while the stack runs: it is made again from
    the views' own position, so what happens next still reaches the views."""
    hitl.assert_paused(hitl.start(f"{TYPES}::Approve", {"request": "a"}, thread_id="before"))

    async def delete() -> None:
        await hitl.client.nc.jetstream().delete_consumer(subjects.EVENTS_STREAM,
                                                         projections_main.DURABLE)

    hitl.call(delete())
    assert hitl.resume("before", "approve").status == "completed"
    hitl.assert_paused(hitl.start(f"{TYPES}::Approve", {"request": "b"}, thread_id="after"))
    assert [(v.thread_id, v.status) for v in (hitl.status("before"), hitl.status("after"))
            if v is not None] == [("before", "completed"), ("after", "paused")]


def test_show_prints_the_status_and_the_whole_timeline(hitl: HitlTestStack) -> None:
    hitl.start(f"{TYPES}::Approve", {"request": "laptops"}, thread_id="shown")
    hitl.resume("shown", "maybe")
    hitl.resume("shown", "reject", {"reason": "too dear"}, on_behalf_of="carol")
    quiesce(hitl)
    code, data, stderr = cli_json(hitl.nats_url, "show", "shown")
    assert code == 0, stderr
    assert data["thread"]["status"] == "completed"
    kinds = [e["event_type"] for e in data["events"]]
    for expected in ("ThreadStarted", "ThreadPaused", "InteractionRequested", "ResponseRejected",
                     "ResponseAccepted", "ThreadResumed", "ThreadCompleted"):
        assert expected in kinds
    assert kinds.index("ResponseRejected") < kinds.index("ResponseAccepted")
    assert {e["service"] for e in data["events"]} >= {"workflow", "interaction"}
    text = cli(hitl.nats_url, "show", "shown").stdout
    assert "status completed" in text and "graph Approve" in text
    assert "reject by carol (data: reason)" in text and "invalid_response" in text
    code, _, stderr = cli_json(hitl.nats_url, "show", "no-such-thread")
    assert code == 1 and "unknown thread 'no-such-thread'" in stderr


# -- audit ---------------------------------------------------------------------------------------


def audit(hitl: HitlTestStack, *args: str) -> list[dict[str, Any]]:
    code, rows, stderr = cli_json(hitl.nats_url, "audit", *args)
    assert code == 0, stderr
    return rows  # type: ignore[no-any-return]


def test_audit_command_filters_and_formats(hitl: HitlTestStack) -> None:
    hitl.start(f"{TYPES}::Approve", {"request": "a"}, thread_id="au-1")
    hitl.start(f"{TYPES}::Choice", {"app": "b"}, thread_id="au-2")
    hitl.resume("au-1", "choose", {"choice": 1}, on_behalf_of="bob")  # wrong action: refused
    hitl.resume("au-1", "approve", {"reason": "ok"}, on_behalf_of="alice")
    hitl.resume("au-2", "choose", {"choice": 2, "justification": "safer"}, on_behalf_of="bob")
    quiesce(hitl)
    rows = audit(hitl)
    assert [(r["thread_id"], r["event"]) for r in rows] == [
        ("au-1", "requested"), ("au-2", "requested"), ("au-1", "rejected"),
        ("au-1", "accepted"), ("au-2", "accepted")]
    requested, rejected, accepted = rows[0], rows[2], rows[3]
    assert requested["digest"] == rejected["digest"] == accepted["digest"]
    assert len(accepted["digest"]) == 64 and accepted["digest"] != rows[1]["digest"]
    assert (rejected["code"], rejected["data_keys"]) == ("invalid_response", ["choice"])
    assert (accepted["responder"], accepted["action"], accepted["data_keys"]) == (
        "alice", "approve", ["reason"])

    assert [r["event"] for r in audit(hitl, "--thread", "au-2")] == ["requested", "accepted"]
    assert [r["thread_id"] for r in audit(hitl, "--node", "pick")] == ["au-2", "au-2"]
    assert [(r["thread_id"], r["event"]) for r in audit(hitl, "--responder", "bob")] == [
        ("au-1", "rejected"), ("au-2", "accepted")]
    assert [r["thread_id"] for r in audit(hitl, "--action", "approve")] == ["au-1"]
    assert [r["event"] for r in audit(hitl, "--type", "approval")] == [
        "requested", "rejected", "accepted"]
    assert [r["thread_id"] for r in audit(hitl, "--event", "rejected")] == ["au-1"]
    assert len(audit(hitl, "--request-id", requested["request_id"])) == 3
    assert audit(hitl, "--since", rows[3]["at"]) == rows[3:]
    assert audit(hitl, "--until", rows[3]["at"]) == rows[:3]
    assert audit(hitl, "--days", "1") == rows
    assert audit(hitl, "--since", "2000-01-01", "--until", "2000-01-02") == []
    assert audit(hitl, "--page-size", "2") == rows  # several pages, one stream

    result = cli(hitl.nats_url, "audit", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["event"] for r in table] == [r["event"] for r in rows]
    assert table[3]["digest"] == accepted["digest"] and table[3]["data_keys"] == '["reason"]'
    assert table[3]["principal"] == hitl.client.principal and table[3]["shown"]
    text = cli(hitl.nats_url, "audit", "--responder", "alice").stdout.splitlines()
    assert text[0].split()[:3] == ["at", "(UTC)", "event"] and len(text) == 2
    assert "accepted" in text[1] and accepted["digest"][:12] in text[1]

    for bad, message in ((["--event", "maybe"], "--event"),
                         (["--since", "yesterday"], "not a date or time"),
                         (["--since", "2026-01-02", "--until", "2026-01-01"], "must be before"),
                         (["--since", "2026-01-02", "--days", "2"], "either --since or --days"),
                         (["--format", "xml"], "xml")):
        result = cli(hitl.nats_url, "audit", *bad)
        assert result.exit_code == 2 and message in result.stderr + result.stdout, bad


# -- analytics -----------------------------------------------------------------------------------


def test_analytics_command_against_hand_computed_values(faked: HitlTestStack,
                                                        clock: FakeClock) -> None:
    t0 = clock.now()
    for name in ("an-1", "an-2", "an-3"):
        faked.start(f"{TYPES}::Approve", {"request": name}, thread_id=name)
    clock.advance(10)
    faked.resume("an-1", "approve")  # 10 s
    clock.advance(20)
    faked.resume("an-2", "reject")  # 30 s
    faked.start(f"{TYPES}::Choice", {"app": "x"}, thread_id="an-4")  # asked at +30 s
    clock.advance(50)
    faked.resume("an-4", "choose", {"choice": 1})  # 50 s
    quiesce(faked)
    until = t0 + timedelta(seconds=100)
    code, report, stderr = cli_json(faked.nats_url, "analytics", "--since",
                                    (t0 - timedelta(minutes=1)).isoformat(),
                                    "--until", until.isoformat(), "--threshold", "2")
    assert code == 0, stderr
    assert report["total_interactions"] == 4
    assert report["by_type"] == {"approval": 3, "choice": 1}
    assert report["avg_response_time"] == pytest.approx(30.0)
    assert report["approval_rate"] == pytest.approx(0.5) and report["timeout_rate"] == 0.0
    overall = report["overall"]
    assert (overall["p50_response_time_s"], overall["p95_response_time_s"]) == (
        pytest.approx(30.0), pytest.approx(50.0))
    assert overall["pending"] == 1 and overall["oldest_pending_age_s"] == pytest.approx(100.0)
    assert report["per_node"]["gate"]["total"] == 3 and report["per_node"]["pick"]["total"] == 1
    assert report["bottlenecks"] == [
        {"schema_version": 1, "node": "gate", "interaction_count": 3,
         "type": "high_interaction_volume"}]
    text = cli(faked.nats_url, "analytics", "--until", until.isoformat(), "--days", "1").stdout
    assert "interactions 4" in text and "approval rate 50.0%" in text
    assert "p50 30.00s, p95 50.00s" in text


# -- rebuilding ----------------------------------------------------------------------------------


def test_rebuild_gives_back_the_live_views(hitl: HitlTestStack, settings: Settings) -> None:
    hitl.start(f"{TYPES}::Approve", {"request": "a"}, thread_id="rb-1")
    hitl.start(f"{TYPES}::Edit", {"draft": "text"}, thread_id="rb-2")
    hitl.start(f"{TYPES}::Talk", {"topic": "t"}, thread_id="rb-3")
    hitl.resume("rb-1", "approve")
    hitl.resume("rb-2", "edit", {})  # refused: no 'edited'
    hitl.resume("rb-3", "respond", {"message": "hello"})
    hitl.cancel("rb-3")
    quiesce(hitl)
    live = dump(views_db(hitl))
    assert fresh_rebuild(hitl, settings) == live
    assert fresh_rebuild(hitl, settings, parallel=True) == live

    code, reply, stderr = cli_json(hitl.nats_url, "projections", "rebuild")
    assert code == 0, stderr
    assert reply["ok"] and reply["views"] == ["thread_status", "audit_trail", "analytics"]
    assert reply["events"] == len(live["thread_timeline"])
    assert set(reply["read"]) >= {"workflow", "interaction"}
    assert dump(views_db(hitl)) == live

    code, reply, _ = cli_json(hitl.nats_url, "projections", "rebuild", "audit_trail")
    assert code == 0 and reply["views"] == ["audit_trail"]
    assert dump(views_db(hitl)) == live
    # live events after a rebuild are applied once: not again for what the rebuild replayed
    assert hitl.resume("rb-2", "approve").status == "completed"
    quiesce(hitl)
    assert dump(views_db(hitl)) == fresh_rebuild(hitl, settings)

    result = cli(hitl.nats_url, "projections", "rebuild", "audit", "analytics")
    assert result.exit_code == 2 and "unknown view(s) 'audit'" in result.stderr


def test_rebuild_reports_its_progress_while_it_runs(hitl: HitlTestStack,
                                                   settings: Settings) -> None:
    """Progress messages come over NATS to the subject the request names, the last one with
    everything replayed, and then the reply; the rebuilt views are the live ones."""
    for index in range(3):
        hitl.start(f"{TYPES}::Approve", {"request": f"p{index}"}, thread_id=f"prog-{index}")
    hitl.resume("prog-0", "approve")
    quiesce(hitl)
    live = dump(views_db(hitl))
    seen: list[RebuildProgress] = []
    reply = hitl.call(hitl.client.rebuild(on_progress=seen.append))
    assert reply.ok and reply.events == len(live["thread_timeline"])
    wait_for(lambda: seen and seen[-1].done == reply.events, timeout=10,
             what="the last progress message")
    assert all(m.views == ["thread_status", "audit_trail", "analytics"] for m in seen)
    assert [m.done for m in seen] == sorted(m.done for m in seen)
    assert seen[-1].total == reply.events and seen[0].total >= reply.events
    assert dump(views_db(hitl)) == live

    # a subject with a wildcard is refused, naming the field; nothing is rebuilt
    raw = hitl.call(hitl.client._query(ADMIN_REBUILD, {"progress_subject": "hitl.>"}))
    assert not raw["ok"] and "progress_subject" in raw["error"]["error"]


def test_a_rebuild_replays_rescheduled_deadlines(hitl: HitlTestStack,
                                               settings: Settings) -> None:
    """A reminder reschedules the request's deadline (the timeout service's
    DeadlineRescheduled, which its relay publishes as DeadlineScheduled): a rebuild reads the
    timeout store as that relay publishes it, and gives back the live views."""
    policy = {"policy": "remind", "after_seconds": 0.2, "times": 1}
    hitl.start(gate_flow({"timeout_seconds": 0.2, "on_timeout": policy}), {"request": "desk"},
               thread_id="rb-remind")
    wait_status(hitl, "rb-remind", "timed_out")
    quiesce(hitl)
    live = dump(views_db(hitl))
    scheduled = [row for row in map(json.loads, live["thread_timeline"])
                 if row["thread_id"] == "rb-remind" and row["event_type"] == "DeadlineScheduled"]
    assert len(scheduled) == 2  # the first deadline, and the one after the reminder
    assert fresh_rebuild(hitl, settings) == live
    assert fresh_rebuild(hitl, settings, parallel=True) == live


def test_offline_rebuild_beside_the_running_service(hitl: HitlTestStack,
                                                    settings: Settings) -> None:
    hitl.start(f"{TYPES}::Approve", {"request": "a"}, thread_id="off-1")
    quiesce(hitl)
    before = dump(views_db(hitl))
    env = {"HITLFLOW_PERSISTENCE": settings.persistence,
           "HITLFLOW_POSTGRES_DSN": settings.postgres_dsn or "",
           "HITLFLOW_POSTGRES_SCHEMA": settings.postgres_schema or ""}
    result = cli(hitl.nats_url, "projections", "rebuild", "--offline", "--home",
                 str(hitl.data_dir), "--json", env=env)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["events"] == len(before["thread_timeline"])
    assert hitl.resume("off-1", "approve").status == "completed"
    quiesce(hitl)
    assert dump(views_db(hitl)) == fresh_rebuild(hitl, settings)


# -- what the projections receive ----------------------------------------------------------------


def test_unknown_and_malformed_events_do_not_stop_the_projections(hitl: HitlTestStack) -> None:
    hitl.start(f"{TYPES}::Approve", {"request": "a"}, thread_id="odd-1")
    future = EventEnvelope(
        event_type="SomethingNewHappened", service="timeout", thread_id="odd-1",
        event_id=str(uuid.uuid4()), aggregate_id=str(uuid.uuid4()), aggregate_version=1,
        position=10_000_000, occurred_at=datetime.now(UTC), payload={"request_id": "x"})

    async def publish() -> None:
        js = hitl.client.nc.jetstream()
        await js.publish(future.subject, future.model_dump_json().encode())
        await js.publish("hitl.evt.workflow.Garbage.odd-1", b"not an envelope")

    hitl.call(publish())
    assert hitl.resume("odd-1", "approve").status == "completed"
    quiesce(hitl)
    code, data, _ = cli_json(hitl.nats_url, "show", "odd-1")
    assert code == 0 and data["thread"]["status"] == "completed"
    assert "SomethingNewHappened" in [e["event_type"] for e in data["events"]]
    assert [r["event"] for r in audit(hitl, "--thread", "odd-1")] == ["requested", "accepted"]


# -- a crash in the middle of a batch ------------------------------------------------------------

CRASHING_PROJECTIONS = """
import asyncio, dataclasses, os, sys
from pathlib import Path

from hitlflow.settings import Settings
from projections import main

runtime = main.build(Settings(), nats_url=sys.argv[1], data_dir=Path(sys.argv[2]))
runtime.batch_size = 20
crash_at, seen = int(sys.argv[3]), 0


def crashing(apply):
    def folded(tx, env):
        global seen
        apply(tx, env)
        seen += 1
        if seen == crash_at:
            os._exit(3)  # inside the batch's transaction: nothing of it is committed
    return folded


runtime.projector.views = [dataclasses.replace(v, apply=crashing(v.apply))
                           if v.name == "audit_trail" else v for v in runtime.projector.views]


async def run():
    await runtime.start()
    await asyncio.Event().wait()


asyncio.run(run())
"""


def test_a_crash_in_the_middle_of_a_batch_loses_and_doubles_nothing(
        hitl: HitlTestStack, settings: Settings, tmp_path: Path) -> None:
    hitl.start(f"{TYPES}::Approve", {"request": "before"}, thread_id="crash-0")
    quiesce(hitl)
    hitl.call(hitl.stack.runtimes.pop("projections").stop())

    async def send(subject: str, command: Any) -> None:
        reply = await hitl.client.publish_raw(subject, command.model_dump_json().encode())
        assert reply.ok, reply

    spec = hitl.workflow(f"{TYPES}::Approve")
    interaction = hitl.stack.runtimes["interaction"].app
    for n in range(1, 9):  # events pile up while the projections are down
        thread = f"crash-{n}"
        hitl.call(send(subjects.start_subject("erp", thread),
                       StartThread(thread_id=thread, workflow=spec, state={"request": n})))
        inbox = wait_for(lambda t=thread: (box := interaction.inbox(t)) is not None
                         and box.open and box, what=f"the request of {thread}")
        shown = interaction.load(UUID(inbox.open[0])).shown
        hitl.call(send(subjects.resume_subject("ann", thread),
                       ResumeThread(thread_id=thread, action="approve" if n % 2 else "reject",
                                    idempotency_key=f"k-{n}", shown=shown)))
    quiesce(hitl, besides="projections")

    async def stream_size() -> int:
        info = await hitl.client.nc.jetstream().stream_info(subjects.EVENTS_STREAM)
        return int(info.state.messages)

    total = hitl.call(stream_size())
    db_before = dump_counts(hitl, settings)
    env = {**os.environ, "HITLFLOW_PERSISTENCE": settings.persistence,
           "HITLFLOW_POSTGRES_DSN": settings.postgres_dsn or "",
           "HITLFLOW_POSTGRES_SCHEMA": settings.postgres_schema or "",
           "HITLFLOW_HOME": str(tmp_path)}
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_PROJECTIONS, hitl.nats_url, str(tmp_path / "stores"),
         "30"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert crashed.returncode == 3, crashed.stderr[-2000:]
    committed, applied = dump_counts(hitl, settings)
    assert db_before[0] < committed < total  # one batch went in, the crashed one did not
    assert applied == committed  # every applied event is in the views, and only those

    runtime = projections_main.build(settings, nats_url=hitl.nats_url,
                                     data_dir=tmp_path / "stores")
    hitl.call(runtime.start())
    hitl.stack.runtimes["projections"] = runtime
    quiesce(hitl)
    assert dump_counts(hitl, settings) == (total, total)
    live = dump(runtime.db)
    assert len(live["thread_timeline"]) == total
    assert fresh_rebuild(hitl, settings) == live
    assert wait_status(hitl, "crash-8", "completed").output == "Refused: 8"


def dump_counts(hitl: HitlTestStack, settings: Settings) -> tuple[int, int]:
    """(stream sequence the views have applied up to, events applied), read from the views
    database as it is on disk."""
    if settings.persistence == "postgres":
        assert POSTGRES_DSN
        db = ViewDatabase.postgres(POSTGRES_DSN, settings.postgres_schema)
    else:
        db = ViewDatabase.sqlite(hitl.data_dir / "stores" / "projections.sqlite")
    try:
        applied = db.one("SELECT COUNT(*) AS n FROM applied_events")
        return db.consumer_position("projections"), int(applied["n"]) if applied else 0
    finally:
        db.close()
