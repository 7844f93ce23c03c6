"""A thread's data key in a service store: made once, the same for every writer of the store,
and stored without leaving the store's own writes less durable (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from eventsourcing.persistence import OperationalError

from contracts.commands import CancelThread, StartThread
from hitlflow.settings import Settings
from services.common import sealing
from services.common.sealing import ThreadKeys
from services.workflow.agents import AgentRegistry
from services.workflow.application import WorkflowService
from services.workflow.definition import load_workflow
from services.workflow.domain import Thread, thread_uuid
from tests.conftest import EXAMPLE_AGENTS, example


def keys_of(app: WorkflowService) -> ThreadKeys:
    keys = app.mapper.keys
    assert isinstance(keys, ThreadKeys)
    return keys


def test_two_writers_of_one_store_get_the_key_stored_first(settings: Settings) -> None:
    first = WorkflowService(settings.store_env("workflow"))
    second = WorkflowService(settings.store_env("workflow"))
    try:
        made = keys_of(first).key("thread-1", create=True)
        assert made is not None and len(made) == 32
        # the second writer has not seen it: its own new key loses to the stored one
        assert keys_of(second)._store("thread-1", b"\x00" * 32) is False
        assert keys_of(second).key("thread-1", create=True) == made
        assert keys_of(first).key("thread-1", create=False) == made
        assert keys_of(second).key("thread-2", create=False) is None  # none made on reading
        assert keys_of(first).key("thread-2", create=False) is None
    finally:
        first.close()
        second.close()


def test_an_erased_thread_gets_no_new_key(settings: Settings) -> None:
    app = WorkflowService(settings.store_env("workflow"))
    other = WorkflowService(settings.store_env("workflow"))
    try:
        assert keys_of(app).key("thread-1", create=True) is not None
        assert keys_of(app).erase("thread-1") is True
        assert keys_of(other).key("thread-1", create=True) is None
        assert keys_of(other).erase("thread-1") is False
    finally:
        app.close()
        other.close()


def test_the_store_still_syncs_every_commit_after_a_key_is_made(tmp_path: Path) -> None:
    """A key's own commit does not wait for the disk (the events sealed with it are written
    after it, by a commit that does); the store's connection is back to syncing each commit
    afterwards, whatever the key's insert did."""
    app = WorkflowService(Settings(home=tmp_path, auth=False).store_env("workflow"))
    try:
        datastore = keys_of(app)._datastore

        def level() -> int:
            with datastore.get_connection(commit=True) as conn:
                return int(conn._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0])

        assert level() == 2  # FULL
        assert keys_of(app).key("thread-1", create=True) is not None
        assert level() == 2
        # a refused insert (the table is gone) leaves the level as it was too
        with datastore.transaction(commit=True) as cursor:
            cursor.execute("ALTER TABLE hitlflow_thread_keys RENAME TO moved")
        with pytest.raises(OperationalError, match="no such table"):
            keys_of(app)._store("thread-2", b"\x01" * 32)
        assert level() == 2
    finally:
        app.close()


def test_a_thread_written_again_long_after_is_still_sealed(settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Which thread an aggregate belongs to is kept only for the latest few writes; a thread
    changed again after many others (its entry long forgotten) still has its personal values
    sealed under its key, whether saved by a job or by eventsourcing's ``save``."""
    monkeypatch.setattr(sealing, "MAX_THREADS", 2)
    registry = AgentRegistry.load([EXAMPLE_AGENTS])
    spec = load_workflow(example("approval.csv") + "::ApprovalFlow", registry=registry)
    app = WorkflowService(settings.store_env("workflow"), agents=registry)
    secret = f"Secret-{uuid.uuid4().hex}"
    try:
        for number in range(6):
            reply = app.start_thread(StartThread(thread_id=f"t-{number}", workflow=spec,
                                                 state={"user_request": f"{secret}-{number}"}),
                                     "t", number + 1)
            assert reply.ok, reply.error
        cancelled = app.cancel_thread(CancelThread(thread_id="t-0", reason=f"{secret} (job)"),
                                      "t", 100)
        assert cancelled.ok, cancelled.error
        thread: Thread = app.repository.get(thread_uuid("t-1"))
        thread.cancel(f"{secret} (save)", "t")
        app.save(thread)
        for thread_id, how in (("t-0", "job"), ("t-1", "save")):
            events = stored_states(app, thread_id)
            assert not [text for text in events if secret in text], thread_id
            assert sealing.SEAL in events[-1], events[-1]
            # read back (unsealed with the thread's key), the reason is there
            last = app.recorder.select_events(thread_uuid(thread_id))[-1]
            assert f"{secret} ({how})" in str(vars(app.mapper.to_domain_event(last)))
    finally:
        app.close()


def stored_states(app: WorkflowService, thread_id: str) -> list[str]:
    """A thread's events as stored, with the store's own encryption taken off (what is left is
    what the thread's data key seals)."""
    mapper = app.mapper
    texts = []
    for stored in app.recorder.select_events(thread_uuid(thread_id)):
        state = stored.state
        if mapper.cipher is not None:
            state = mapper.cipher.decrypt(state)
        if mapper.compressor is not None:
            state = mapper.compressor.decompress(state)
        texts.append(state.decode())
    return texts
