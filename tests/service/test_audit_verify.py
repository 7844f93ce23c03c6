"""Tamper evidence: rows edited, swapped and deleted directly in SQLite and PostgreSQL, each one
caught by ``hitlflow audit verify`` (exit 1, the first event that differs), and a store put
back verifies again."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from projections.verify import verify
from services.common.keyring import KeyRingCipher
from services.interaction.application import InteractionService
from tests.conftest import EXAMPLE_AGENTS, example
from tests.helpers import cli, wait_for

APPROVAL = example("approval.csv") + "::ApprovalFlow"


class Rows:
    """The stored events of a service store, as rows (SQLite file or PostgreSQL table)."""

    def __init__(self, settings: Settings, stores: Path) -> None:
        self.settings = settings
        self.stores = stores

    def _run(self, service: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self.settings.persistence == "sqlite":
            with sqlite3.connect(self.stores / f"{service}.sqlite") as conn:
                rows = conn.execute(sql.format(table="stored_events", id="rowid")
                                    .replace("%s", "?"), params).fetchall()
                conn.commit()
                return rows
        import psycopg

        table = f'"{self.settings.postgres_schema}"."{service}_events"'
        assert self.settings.postgres_dsn
        with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
            cursor = conn.execute(sql.format(table=table, id="notification_id"), params)
            return cursor.fetchall() if cursor.description else []

    def get(self, service: str, position: int) -> tuple[Any, ...]:
        [row] = self._run(service, "SELECT originator_id, originator_version, topic, state FROM"
                                   " {table} WHERE {id} = %s", (position,))
        return tuple(row)

    def set(self, service: str, position: int, topic: str, state: bytes) -> None:
        self._run(service, "UPDATE {table} SET topic = %s, state = %s WHERE {id} = %s",
                  (topic, state, position))

    def delete(self, service: str, position: int) -> None:
        self._run(service, "DELETE FROM {table} WHERE {id} = %s", (position,))

    def put_back(self, service: str, position: int, row: tuple[Any, ...]) -> None:
        self._run(service, "INSERT INTO {table} ({id}, originator_id, originator_version, topic,"
                           " state) VALUES (%s, %s, %s, %s, %s)", (position, *row))


@pytest.fixture
def history(tmp_path: Path, settings: Settings) -> Iterator[tuple[HitlTestStack, list[str]]]:
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings) as hitl:
        threads = []
        for answer in ("approve", "reject", None):
            thread = f"v-{uuid.uuid4().hex[:8]}"
            hitl.assert_paused(hitl.start(APPROVAL, {"user_request": f"item {thread}"},
                                          thread_id=thread))
            if answer:
                hitl.resume(thread, answer, {"reason": "because"}, on_behalf_of="alice")
            threads.append(thread)
        hitl.cancel(threads[2], "no longer needed")

        def anchored() -> bool:
            report = verify(settings, db=_db(hitl))
            return report.ok and report.unanchored == 0 and report.threads == 3

        wait_for(anchored, 20, "every event anchored")
        yield hitl, threads


def _db(hitl: HitlTestStack) -> Any:
    return hitl.stack.runtimes["projections"].db


def _anchors(hitl: HitlTestStack, thread: str, service: str) -> list[dict[str, Any]]:
    return _db(hitl).query("SELECT position, event_type FROM audit_chain WHERE thread_id = ?"
                           " AND service = ? ORDER BY seq", (thread, service))


def _differs(hitl: HitlTestStack, settings: Settings, thread: str | None = None) -> Any:
    report = verify(settings, thread, db=_db(hitl))
    assert not report.ok, "verify found nothing"
    return report.differences[0]


def _cli_env(settings: Settings, home: Path) -> dict[str, str]:
    env = {"HITLFLOW_HOME": str(home), "HITLFLOW_PERSISTENCE": settings.persistence}
    if settings.persistence == "postgres":
        env.update(HITLFLOW_POSTGRES_DSN=str(settings.postgres_dsn),
                   HITLFLOW_POSTGRES_SCHEMA=str(settings.postgres_schema))
    return env


def test_an_untouched_history_verifies(history: tuple[HitlTestStack, list[str]],
                                       settings: Settings, tmp_path: Path) -> None:
    hitl, threads = history
    result = cli(hitl.nats_url, "audit", "verify", "--json", env=_cli_env(settings, tmp_path))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] and data["threads"] == 3 and data["events"] > 20
    result = cli(hitl.nats_url, "audit", "verify", "--thread", threads[0],
                 env=_cli_env(settings, tmp_path))
    assert result.exit_code == 0 and "verified: 1 thread(s)" in result.stdout
    result = cli(hitl.nats_url, "audit", "verify", "--thread", "nobody",
                 env=_cli_env(settings, tmp_path))
    assert result.exit_code == 2 and "unknown thread 'nobody'" in result.stderr


def test_edits_swaps_and_deletions_are_each_caught(history: tuple[HitlTestStack, list[str]],
                                                    settings: Settings, tmp_path: Path) -> None:
    hitl, threads = history
    rows = Rows(settings, tmp_path / "stores")
    thread = threads[0]
    interaction = _anchors(hitl, thread, "interaction")
    accepted = next(a["position"] for a in interaction if a["event_type"] == "ResponseAccepted")
    app = InteractionService(settings.store_env("interaction", tmp_path / "stores"))
    cipher = app.mapper.cipher
    app.close()
    assert isinstance(cipher, KeyRingCipher)

    # 1. an insider with the key changes the answer: approve -> reject
    original = rows.get("interaction", accepted)
    plain = json.loads(cipher.decrypt(bytes(original[3])))
    assert plain["action"] == "approve"
    plain["action"] = "reject"
    rows.set("interaction", accepted, original[2], cipher.encrypt(json.dumps(plain).encode()))
    found = _differs(hitl, settings)
    assert (found.thread_id, found.service, found.kind, found.position) == (
        thread, "interaction", "content", accepted)
    result = cli(hitl.nats_url, "audit", "verify", env=_cli_env(settings, tmp_path))
    assert result.exit_code == 1
    assert f"position {accepted} (ResponseAccepted): content" in result.stderr
    # the other threads are fine on their own
    assert verify(settings, threads[1], db=_db(hitl)).ok
    rows.set("interaction", accepted, original[2], bytes(original[3]))
    assert verify(settings, db=_db(hitl)).ok

    # 2. someone without the key flips a byte of the ciphertext
    state = bytearray(original[3])
    state[-1] ^= 0x01
    rows.set("interaction", accepted, original[2], bytes(state))
    found = _differs(hitl, settings)
    assert (found.kind, found.position) == ("content", accepted)
    assert "cannot be read" in found.detail
    rows.set("interaction", accepted, original[2], bytes(original[3]))

    # 3. an event deleted from the middle of a thread
    workflow = _anchors(hitl, thread, "workflow")
    middle = workflow[len(workflow) // 2]
    kept = rows.get("workflow", middle["position"])
    rows.delete("workflow", middle["position"])
    found = _differs(hitl, settings, thread)
    assert (found.kind, found.service, found.position) == ("missing", "workflow",
                                                           middle["position"])
    rows.put_back("workflow", middle["position"], kept)
    assert verify(settings, db=_db(hitl)).ok

    # 4. the last events of a thread deleted (truncation)
    tail = [(a["position"], rows.get("workflow", a["position"])) for a in workflow[-2:]]
    for position, _ in tail:
        rows.delete("workflow", position)
    found = _differs(hitl, settings, thread)
    assert (found.kind, found.position) == ("missing", tail[0][0])
    for position, row in tail:
        rows.put_back("workflow", position, row)
    assert verify(settings, db=_db(hitl)).ok

    # 5. two events of the thread swapped (order); two of the same type differ in content
    first, second = next((a["position"], b["position"]) for a, b in pairwise(workflow[1:])
                         if a["event_type"] != b["event_type"])
    one, two = rows.get("workflow", first), rows.get("workflow", second)
    rows.set("workflow", first, two[2], bytes(two[3]))
    rows.set("workflow", second, one[2], bytes(one[3]))
    found = _differs(hitl, settings, thread)
    assert (found.kind, found.position) == ("order", first)
    rows.set("workflow", first, one[2], bytes(one[3]))
    rows.set("workflow", second, two[2], bytes(two[3]))
    assert verify(settings, db=_db(hitl)).ok


def test_verify_on_a_store_it_cannot_read(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "nothing-here")
    result = cli("nats://127.0.0.1:1", "audit", "verify",
                 env={"HITLFLOW_HOME": str(settings.home)})
    assert result.exit_code == 2
    assert "no workflow store at" in result.stderr and "Traceback" not in result.stderr
