"""A thread's data key in a service store: made once, the same for every writer of the store,
and stored without leaving the store's own writes less durable (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from eventsourcing.persistence import IntegrityError, OperationalError

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


def approval_spec(registry: AgentRegistry) -> object:
    return load_workflow(example("approval.csv") + "::ApprovalFlow", registry=registry)


def key_rows(app: WorkflowService) -> dict[str, object]:
    keys = keys_of(app)
    with keys._datastore.transaction(commit=False) as cursor:
        cursor.execute(f"SELECT thread_id, wrapped FROM {keys._table}")
        rows = [tuple(r.values()) if isinstance(r, dict) else tuple(r)  # PostgreSQL: dicts
                for r in cursor.fetchall()]
        return {str(thread_id): wrapped for thread_id, wrapped in rows}


def test_a_new_threads_key_is_stored_by_the_write_of_its_events(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key of a thread new to the store goes in the transaction that writes the thread's
    first events, not in one of its own; the events read back with it."""
    registry = AgentRegistry.load([EXAMPLE_AGENTS])
    app = WorkflowService(settings.store_env("workflow"), agents=registry)
    try:
        def no_separate_commit(*_: object) -> bool:
            raise AssertionError("a key stored in a transaction of its own")

        monkeypatch.setattr(ThreadKeys, "_store", no_separate_commit)
        group = app._group  # SQLite: its commits are counted
        before = group.commits if group is not None else 0
        reply = app.start_thread(StartThread(thread_id="t-1", workflow=approval_spec(registry),
                                             state={"user_request": "Buy 3 laptops"}), "t", 1)
        assert reply.ok, reply.error
        if group is not None:
            assert group.commits == before + 1  # events, tracking and key: one commit
        assert list(key_rows(app)) == ["t-1"]
        other = WorkflowService(settings.store_env("workflow"), agents=registry)
        try:  # another process reads the thread back with the stored key
            thread: Thread = other.repository.get(thread_uuid("t-1"))
            assert thread.state["user_request"] == "Buy 3 laptops"
        finally:
            other.close()
    finally:
        app.close()


def test_a_write_that_fails_leaves_no_key_behind(settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A key made for a write that is not committed is neither stored nor kept, nor is the
    write's tracking, even when the error is raised in this process rather than by the
    database: the next write makes its own key, stores it with its events, and they read
    back."""
    registry = AgentRegistry.load([EXAMPLE_AGENTS])
    app = WorkflowService(settings.store_env("workflow"), agents=registry)
    try:
        recorder = app.recorder
        # the method the write calls once the key and the tracking are in the transaction
        name = "_insert_events" if app._group is not None else "_insert_stored_events"
        original = getattr(recorder, name)

        def failing(*_: object, **__: object) -> None:
            raise OperationalError("disk I/O error")

        monkeypatch.setattr(recorder, name, failing)
        command = StartThread(thread_id="t-1", workflow=approval_spec(registry),
                              state={"user_request": "Buy 3 laptops"})
        with pytest.raises(OperationalError, match="disk I/O"):
            app.run_job(app.start_job(command, "t", 1))
        assert key_rows(app) == {}
        assert keys_of(app).key("t-1", create=False) is None
        assert app.is_tracked("t", 1) is False
        monkeypatch.setattr(recorder, name, original)
        assert app.start_thread(command, "t", 1).ok
        assert list(key_rows(app)) == ["t-1"]
        fresh = WorkflowService(settings.store_env("workflow"), agents=registry)
        try:
            assert fresh.repository.get(thread_uuid("t-1")).state["user_request"] == (
                "Buy 3 laptops")
        finally:
            fresh.close()
    finally:
        app.close()


def test_a_key_another_writer_stored_first_wins_and_the_write_is_sealed_again(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers of one store start the same thread's first write at once: the one whose
    key is stored second has its write refused as a version conflict, seals its events again
    under the stored key and saves them."""
    registry = AgentRegistry.load([EXAMPLE_AGENTS])
    first = WorkflowService(settings.store_env("workflow"), agents=registry)
    second = WorkflowService(settings.store_env("workflow"), agents=registry)
    try:
        keys = keys_of(second)
        raced: list[bytes | None] = []

        def other_writer_first(method: str) -> object:
            original = getattr(keys, method)

            def wrapper(*args: object) -> object:
                if not raced:  # the other writer stores its key for the thread just before
                    raced.append(keys_of(first).key("t-1", create=True))
                return original(*args)

            return wrapper

        # the key made for the write is stored with it (by a write on its own on a retry)
        monkeypatch.setattr(keys, "insert_made", other_writer_first("insert_made"))
        monkeypatch.setattr(keys, "_store", other_writer_first("_store"))
        reply = second.start_thread(StartThread(thread_id="t-1", workflow=approval_spec(registry),
                                                state={"user_request": "Buy 3 laptops"}), "t", 1)
        assert reply.ok, reply.error
        assert raced and raced[0] is not None
        assert keys.key("t-1", create=False) == raced[0]
        # the events were sealed under the stored key: the first writer reads them
        assert first.repository.get(thread_uuid("t-1")).state["user_request"] == "Buy 3 laptops"
    finally:
        first.close()
        second.close()


def test_a_key_stored_earlier_in_the_same_transaction_is_no_conflict(tmp_path: Path) -> None:
    """Two writes of one group commit that carry the same new key (made for one mapping,
    written twice): the second finds the key it brings, and succeeds."""
    app = WorkflowService(Settings(home=tmp_path, auth=False).store_env("workflow"))
    try:
        keys = keys_of(app)
        group = app._group
        assert group is not None
        with keys.deferred() as made:
            key = keys.key("t-1", create=True)
        assert key is not None and key_rows(app) == {}
        for _ in range(2):
            group.write([], [], lambda cursor: keys.insert_made(cursor, made))
        keys.stored(made)
        assert keys.key("t-1", create=False) == key
        # a key made elsewhere for the same thread is refused
        with keys.deferred() as other:
            other["t-1"] = (b"\x02" * 32, keys._wrap(b"\x02" * 32))
        with pytest.raises(IntegrityError, match="another writer"):
            group.write([], [], lambda cursor: keys.insert_made(cursor, other))
    finally:
        app.close()
