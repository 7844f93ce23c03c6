"""What a service store sends PostgreSQL: its own reads keep the connection's prepared
statements, and its writes notify no one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contracts.commands import StartThread
from services.workflow.agents import AgentRegistry
from services.workflow.application import WorkflowService
from services.workflow.definition import load_workflow
from tests.conftest import EXAMPLE_AGENTS, POSTGRES_DSN, example, make_settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def app(tmp_path: Path) -> Iterator[WorkflowService]:
    settings = make_settings("postgres", tmp_path).model_copy(
        update={"postgres_pool_size": 1, "postgres_max_overflow": 0})  # one connection
    service = WorkflowService(settings.store_env("workflow"),
                              agents=AgentRegistry.load([EXAMPLE_AGENTS]))
    try:
        yield service
    finally:
        service.close()


def test_the_stores_own_reads_keep_the_connections_prepared_statements(
        app: WorkflowService) -> None:
    """Reading a position's tracking or a thread's key runs outside a transaction: one rolled
    back at its end makes psycopg deallocate every prepared statement of the connection, and
    eventsourcing then prepared its statements again after each such read."""
    datastore: Any = app.recorder.datastore

    def prepared() -> int:
        with datastore.get_connection() as conn:
            return len(conn.execute("SELECT name FROM pg_prepared_statements").fetchall())

    app.recorder.select_events(uuid.uuid4())  # (eventsourcing prepares it at once)
    assert prepared() >= 1
    assert app.is_tracked("upstream", 1) is False
    assert app.thread_keys.key("thread-1", create=False) is None
    assert prepared() >= 1


def test_a_write_sends_no_notification(app: WorkflowService) -> None:
    """eventsourcing sends a NOTIFY on its events table's channel with every write; nothing
    here listens, and each such commit waits for every other one of the server. A listener
    on that channel hears only the marker it sends itself after the write."""
    channel = app.recorder.channel_name
    assert POSTGRES_DSN is not None
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        spec = load_workflow(example("approval.csv") + "::ApprovalFlow", registry=app.agents)
        reply = app.start_thread(StartThread(thread_id="t-1", workflow=spec,
                                             state={"user_request": "Buy 3 laptops"}), "t", 1)
        assert reply.ok, reply.error
        listener.execute(f"NOTIFY \"{channel}\", 'marker'")  # delivered in commit order
        heard = []
        for note in listener.notifies(timeout=10):
            heard.append(note.payload)
            if note.payload == "marker":
                break
        assert heard == ["marker"]
