"""Encryption at rest: no prompt, context or answer text in any raw row of any service store
(SQLite and PostgreSQL); a wrong, missing or rotated key."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from base64 import b64decode
from pathlib import Path
from typing import Any

import pytest

from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from services.common.keyring import (
    MARKER,
    StoreUnreadableError,
    key_id,
    new_key,
    read_key_file,
    rotate_key_file,
)
from services.workflow.application import WorkflowService
from tests.conftest import EXAMPLE_AGENTS, ROOT, example

APPROVAL = example("approval.csv") + "::ApprovalFlow"
SERVICES = ("workflow", "interaction", "timeout")


def raw_states(settings: Settings, stores: Path) -> list[bytes]:
    """Every stored event's state, as the database holds it."""
    if settings.persistence == "sqlite":
        states = []
        for service in SERVICES:
            with sqlite3.connect(stores / f"{service}.sqlite") as conn:
                states += [bytes(r[0]) for r in conn.execute("SELECT state FROM stored_events")]
        return states
    import psycopg
    from psycopg import sql

    assert settings.postgres_dsn and settings.postgres_schema
    with psycopg.connect(settings.postgres_dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s"
            " AND column_name = 'state'", (settings.postgres_schema,))]
        assert len(tables) >= 3, tables
        states = []
        for table in tables:
            states += [bytes(r[0]) for r in conn.execute(sql.SQL("SELECT state FROM {}").format(
                sql.Identifier(settings.postgres_schema, table)))]
        return states


def test_no_prompt_context_or_answer_in_the_raw_rows(tmp_path: Path,
                                                     settings: Settings) -> None:
    secret = f"Buy-{uuid.uuid4().hex}"
    reason = f"reason-{uuid.uuid4().hex}"
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings) as hitl:
        thread = f"enc-{uuid.uuid4().hex[:8]}"
        request = hitl.assert_paused(hitl.start(APPROVAL, {"user_request": secret},
                                                thread_id=thread))
        assert secret in request["prompt"]  # the prompt and context show it
        hitl.assert_completed(hitl.resume(thread, "reject", {"reason": reason}))
        assert hitl.events(thread, "ThreadResumed")[0]["data"] == {"reason": reason}
    states = raw_states(settings, tmp_path / "stores")
    assert len(states) > 10
    for state in states:
        assert state.startswith(MARKER)
        for text in (secret, reason, "Please approve this request", "Buy"):
            assert text.encode() not in state
    # the views (not a service store) still show the thread, from the published events


def _store_with_events(tmp_path: Path, settings: Settings) -> Settings:
    """A workflow store holding a few events, written with the settings' keys."""
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings,
                       ) as hitl:
        hitl.assert_paused(hitl.start(APPROVAL, {"user_request": "x"},
                                      thread_id=f"k-{uuid.uuid4().hex[:6]}"))
    return settings


def _open(settings: Settings, stores: Path) -> WorkflowService:
    return WorkflowService(settings.store_env("workflow", stores))


def test_a_wrong_or_missing_key_refuses_to_open_the_store(tmp_path: Path,
                                                          settings: Settings) -> None:
    _store_with_events(tmp_path, settings)
    stores = tmp_path / "stores"
    wrong = settings.model_copy(update={"cipher_keys": new_key()})
    with pytest.raises(StoreUnreadableError, match=r"the workflow store holds an event "
                       r"\(position 1\) this service cannot read: the event is encrypted "
                       r"with key [0-9a-f]{8}, which is not in the key ring"):
        _open(wrong, stores)
    # the key file lost: a new one is made, and it is not the store's key either
    settings.key_path.unlink()
    with pytest.raises(StoreUnreadableError, match="not in the key ring"):
        _open(settings, stores)
    off = settings.model_copy(update={"encryption": False})
    with pytest.raises(StoreUnreadableError, match="encryption is off here"):
        _open(off, stores)


def test_an_unencrypted_store_is_refused_with_encryption_on(tmp_path: Path,
                                                            settings: Settings) -> None:
    plain = settings.model_copy(update={"encryption": False})
    _store_with_events(tmp_path, plain)
    with pytest.raises(StoreUnreadableError, match="stored without encryption"):
        _open(settings, tmp_path / "stores")


def test_rotation_keeps_old_events_readable(tmp_path: Path, settings: Settings) -> None:
    _store_with_events(tmp_path, settings)
    old = read_key_file(settings.key_path)[0]
    new_id = rotate_key_file(settings.key_path)
    assert read_key_file(settings.key_path)[1] == old
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings) as hitl:
        thread = f"rot-{uuid.uuid4().hex[:6]}"
        hitl.assert_paused(hitl.start(APPROVAL, {"user_request": "after"}, thread_id=thread))
        assert hitl.state(thread)["user_request"] == "after"
    app = _open(settings, tmp_path / "stores")
    try:
        notifications = app.recorder.select_notifications(1, 10_000)
        ids = {bytes(n.state)[2:6].hex() for n in notifications}
        assert ids == {key_id(b64decode(old)).hex(), new_id}
        for notification in notifications:  # every one reads back
            app.mapper.to_domain_event(notification)
    finally:
        app.close()


def test_serve_with_a_wrong_key_says_so_without_a_traceback(tmp_path: Path,
                                                            settings: Settings) -> None:
    _store_with_events(tmp_path, settings)
    env: dict[str, Any] = {**os.environ, "HITLFLOW_HOME": str(tmp_path),
                           "HITLFLOW_CIPHER_KEYS": new_key(),
                           "HITLFLOW_PERSISTENCE": settings.persistence}
    if settings.persistence == "postgres":
        env.update(HITLFLOW_POSTGRES_DSN=settings.postgres_dsn,
                   HITLFLOW_POSTGRES_SCHEMA=settings.postgres_schema)
    done = subprocess.run([sys.executable, "-m", "hitlflow", "serve", "workflow",
                           "--nats-url", "nats://127.0.0.1:1"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "error: the workflow store holds an event" in done.stderr
    assert "not in the key ring" in done.stderr
    assert "Traceback" not in done.stderr
