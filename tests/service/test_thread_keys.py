"""A thread's data key in a service store: made once, the same for every writer of the store,
and stored without leaving the store's own writes less durable (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventsourcing.persistence import OperationalError

from hitlflow.settings import Settings
from services.common.sealing import ThreadKeys
from services.workflow.application import WorkflowService


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
