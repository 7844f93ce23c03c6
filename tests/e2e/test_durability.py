"""Durability: a paused thread survives a full restart; an event saved just before a crash is
still published; a re-published event is dropped by the stream; malformed commands from other
systems are answered and kept."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest

from contracts import subjects
from contracts.commands import StartThread
from hitlflow.client import HitlClient
from hitlflow.settings import Settings
from hitlflow.stack import EmbeddedNats, PortInUseError, free_port
from hitlflow.testing import HitlTestStack
from services.workflow.application import WorkflowService
from services.workflow.definition import load_workflow
from tests.conftest import EXAMPLE_AGENTS, ROOT
from tests.helpers import wait_for

TYPES = str(ROOT / "tests" / "workflows" / "types.csv")


async def stream_subjects(nats_url: str, thread_id: str) -> list[str]:
    """Every event message the stream holds for one thread, in order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subjects.thread_events_subject(thread_id),
                                 stream=subjects.EVENTS_STREAM, ordered_consumer=True)
        found = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return found
            found.append(msg.subject.split(".")[3])
    finally:
        await nc.close()


def test_paused_thread_survives_a_full_restart(tmp_path: Path, settings: Settings) -> None:
    port = free_port()
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings, port=port) as hitl:
        first = hitl.start(f"{TYPES}::Choice", {"app": "payments"}, thread_id="t-restart")
        assert first.status == "paused"
    # Processes and nats-server are gone; everything comes back from disk.
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings, port=port) as hitl:
        assert [p.id for p in hitl.pending("t-restart")] == [first.pending[0]["id"]]
        done = hitl.resume("t-restart", "choose", {"choice": 2})
        assert done.status == "completed" and done.output["option"] == "Staging (us-west-2)"


def test_event_saved_before_a_crash_is_published_after_restart(tmp_path: Path,
                                                               settings: Settings) -> None:
    port = free_port()
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings, port=port):
        pass  # streams and stores exist; nothing else
    # The workflow service saves a thread's events and "crashes" before its relay runs.
    spec = load_workflow(f"{TYPES}::Approve")
    service = WorkflowService(settings.store_env("workflow", tmp_path / "stores"))
    reply = service.start_thread(StartThread(thread_id="t-crash", workflow=spec,
                                             state={"request": "saved, never sent"}),
                                 "test", 1)
    assert reply.ok
    service.close()
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings, port=port) as hitl:
        # The relay catches up: the interaction service opens the request from ThreadPaused.
        pending = wait_for(lambda: hitl.pending("t-crash"), what="the request to be opened")
        assert pending[0].prompt == "Please approve: saved, never sent"
        assert hitl.resume("t-crash", "approve").status == "completed"
        kinds = asyncio.run(stream_subjects(hitl.nats_url, "t-crash"))
        assert kinds.count("ThreadStarted") == 1 and kinds.count("ThreadPaused") == 1


def test_republished_events_are_dropped_by_the_stream(tmp_path: Path,
                                                      settings: Settings) -> None:
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings) as hitl:
        assert hitl.start(f"{TYPES}::Approve", {"request": "r"}, thread_id="t-dup").ok
        relay = hitl.stack.runtimes["workflow"].relay
        wait_for(lambda: asyncio.run(stream_subjects(hitl.nats_url, "t-dup")).count(
            "ThreadPaused") == 1, what="the pause to be published")
        before = asyncio.run(stream_subjects(hitl.nats_url, "t-dup"))
        # Lose the relay's record of what it published (a crash between publish and record):
        # it publishes everything again, and the stream's de-duplication drops every copy.
        app = hitl.stack.runtimes["workflow"].app
        with app.recorder.datastore.transaction(commit=True) as cursor:
            if settings.persistence == "sqlite":
                cursor.execute("DELETE FROM tracking WHERE application_name='nats-relay'")
            else:
                cursor.execute(f"DELETE FROM {settings.postgres_schema}.workflow_tracking "
                               "WHERE application_name='nats-relay'")
        republished = hitl.call(relay.publish_pending())
        assert republished >= 3  # ThreadStarted, NodeCompleted, ThreadPaused at least
        assert asyncio.run(stream_subjects(hitl.nats_url, "t-dup")) == before
        assert hitl.resume("t-dup", "approve").status == "completed"


def test_malformed_command_from_another_system_is_answered_and_kept(
    hitl: HitlTestStack,
) -> None:
    async def send() -> tuple:
        async with HitlClient(hitl.nats_url) as client:
            garbage = await client.publish_raw(subjects.resume_subject("erp", "t-raw"),
                                               b"not json")
            missing_key = await client.publish_raw(
                subjects.resume_subject("erp", "t-raw"),
                json.dumps({"thread_id": "t-raw", "action": "approve"}).encode())
            return garbage, missing_key

    assert hitl.start(f"{TYPES}::Approve", {"request": "r"}, thread_id="t-raw").ok
    garbage, missing_key = asyncio.run(send())
    assert garbage.code == "invalid_command" and "invalid command" in garbage.error
    assert missing_key.code == "invalid_command" and "idempotency_key" in missing_key.error
    inbox = hitl.stack.runtimes["interaction"].app.inbox("t-raw")
    assert sum(1 for o in inbox.outcomes.values() if o["code"] == "invalid_command") == 2
    assert hitl.status("t-raw").status == "paused"
    assert hitl.resume("t-raw", "approve").status == "completed"


def test_taken_port_gets_a_clear_message(tmp_path: Path) -> None:
    port = free_port()
    first = EmbeddedNats(tmp_path / "a", port)
    first.start()
    try:
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            EmbeddedNats(tmp_path / "b", port).start()
    finally:
        first.stop()
