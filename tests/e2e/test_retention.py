"""Retention: ended threads archived with their chain links, out of the live and rebuilt thread
views, tracking rows compacted; the audit and the chains still verify."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from projections import projector as projector_module
from projections import rebuild as rebuild_module
from projections import rows as rows_module
from projections.projector import Projector
from projections.rebuild import rebuild_from_stores
from projections.verify import verify
from tests.conftest import example
from tests.helpers import cli, cli_json, wait_for
from tests.service.test_projections_property import views_and_chains

APPROVAL = example("approval.csv") + "::ApprovalFlow"


def _env(settings: Settings, home: Path) -> dict[str, str]:
    env = {"HITLFLOW_HOME": str(home), "HITLFLOW_PERSISTENCE": settings.persistence}
    if settings.persistence == "postgres":
        env.update(HITLFLOW_POSTGRES_DSN=str(settings.postgres_dsn),
                   HITLFLOW_POSTGRES_SCHEMA=str(settings.postgres_schema))
    return env


def test_archive_ended_threads(tmp_path: Path, hitl: HitlTestStack, settings: Settings,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    done, waiting = (f"ret-{uuid.uuid4().hex[:8]}" for _ in range(2))
    hitl.assert_paused(hitl.start(APPROVAL, {"user_request": "old"}, thread_id=done))
    hitl.assert_completed(hitl.resume(done, "approve", on_behalf_of="alice"))
    hitl.assert_paused(hitl.start(APPROVAL, {"user_request": "open"}, thread_id=waiting))
    db = hitl.stack.runtimes["projections"].db

    def settled() -> list[dict[str, Any]] | None:  # the timeout service clears its deadline last
        events: list[dict[str, Any]] = cli_json(hitl.nats_url, "show", done)[1]["events"]
        return events if any(e["event_type"] == "DeadlineCleared" for e in events) else None

    events = wait_for(settled, 20, "the thread's last event")
    wait_for(lambda: verify(settings, db=db).unanchored == 0, 20, "every event anchored")
    archive = tmp_path / "archive" / "threads.jsonl"

    result = cli(hitl.nats_url, "retention", "archive", "--older-than-days", "0", "--out",
                 str(archive), "--json", env=_env(settings, tmp_path))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["threads"] == 1 and report["tracking_rows_compacted"] > 0
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [e["position"] for e in lines[:-1]] == [e["position"] for e in events]
    anchors = {(r["service"], r["position"]): r["hash"] for r in db.query(
        "SELECT service, position, hash FROM audit_chain WHERE thread_id = ?", (done,))}
    assert all(e["chain"] == anchors[(e["service"], e["position"])] for e in lines[:-1])
    assert lines[-1]["archived"]["status"] == "completed"

    # out of the thread views, live and rebuilt; the open thread untouched
    assert cli(hitl.nats_url, "status", done).exit_code == 1
    assert hitl.status(waiting) is not None
    code, _, stderr = cli_json(hitl.nats_url, "projections", "rebuild")
    assert code == 0, stderr
    assert cli(hitl.nats_url, "status", done).exit_code == 1
    assert hitl.status(waiting) is not None and hitl.status(waiting).status == "paused"
    # the bulk path (the stores read by worker processes, many chunks, rows forgotten between
    # them) gives the same views and chain links, the archived thread left out again
    views = views_and_chains(db)
    monkeypatch.setattr(projector_module, "REPLAY_CHUNK", 3)
    monkeypatch.setattr(rows_module, "KEEP", 2)
    monkeypatch.setattr(rebuild_module, "PAGE", 4)
    rebuild_from_stores(db, Projector(db), settings, data_dir=hitl.data_dir / "stores",
                        parallel=True)
    assert views_and_chains(db) == views
    # the audit and the chains stay
    code, audit, _ = cli_json(hitl.nats_url, "audit", "--thread", done)
    assert code == 0 and any(e["event"] == "accepted" for e in audit)
    assert verify(settings, db=db).ok
    # the views go on after compaction: the open thread still completes
    hitl.assert_completed(hitl.resume(waiting, "approve"))
