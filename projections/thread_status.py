"""thread_status: the guide's ``threads`` collection, plus each thread's open requests."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from contracts.events import EventEnvelope
from contracts.queries import PendingInteraction, ThreadView
from projections.db import ViewDatabase, dumps

NAME = "thread_status"

DDL = [
    """
    CREATE TABLE IF NOT EXISTS threads (
        thread_id TEXT PRIMARY KEY,
        graph_name TEXT NOT NULL,
        workflow_digest TEXT NOT NULL,
        status TEXT NOT NULL,
        current_node TEXT,
        started_by TEXT NOT NULL,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        completed_at TEXT,
        error TEXT,
        output TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS threads_status ON threads (status, updated_at)",
    """
    CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        node_name TEXT NOT NULL,
        interaction_type TEXT NOT NULL,
        prompt TEXT NOT NULL,
        context TEXT NOT NULL,
        options TEXT NOT NULL,
        assignees TEXT NOT NULL,
        timeout_seconds REAL,
        deadline TEXT,
        created_at TEXT NOT NULL,
        batch_index INTEGER NOT NULL,
        batch_size INTEGER NOT NULL,
        status TEXT NOT NULL,
        closed_at TEXT,
        action TEXT,
        responder TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS requests_open ON requests (status, thread_id, created_at)",
]

ENDINGS = {
    "ThreadCompleted": "completed",
    "ThreadFailed": "failed",
    "ThreadTimedOut": "timed_out",
    "ThreadCancelled": "cancelled",
}


def create(db: ViewDatabase) -> None:
    with db.transaction() as cursor:
        for statement in DDL:
            cursor.execute(statement)


def drop(db: ViewDatabase) -> None:
    with db.transaction() as cursor:
        cursor.execute("DROP TABLE IF EXISTS threads")
        cursor.execute("DROP TABLE IF EXISTS requests")
        cursor.execute("DELETE FROM view_tracking WHERE view=?", (NAME,))


def apply(cursor: sqlite3.Cursor, env: EventEnvelope) -> None:
    """Fold one event into the view (the caller handles tracking and the transaction)."""
    p = env.payload
    at = env.occurred_at.isoformat()
    kind = env.event_type
    if kind == "ThreadStarted":
        cursor.execute(
            "INSERT OR IGNORE INTO threads (thread_id, graph_name, workflow_digest, status, "
            "current_node, started_by, started_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
            (env.thread_id, p["graph_name"], p["workflow_digest"], "running", None,
             p["started_by"], at, at),
        )
    elif kind == "NodeCompleted":
        cursor.execute("UPDATE threads SET current_node=?, updated_at=?, output=? "
                       "WHERE thread_id=?", (p.get("next_node"), at, dumps(p.get("output")),
                                             env.thread_id))
    elif kind == "NodeFailed":
        cursor.execute("UPDATE threads SET current_node=?, updated_at=? WHERE thread_id=?",
                       (p.get("next_node"), at, env.thread_id))
    elif kind == "ThreadPaused":
        cursor.execute("UPDATE threads SET status='paused', current_node=?, updated_at=? "
                       "WHERE thread_id=?", (p["node"], at, env.thread_id))
    elif kind == "ThreadResumed":
        cursor.execute(
            "UPDATE threads SET status=CASE WHEN EXISTS (SELECT 1 FROM requests WHERE "
            "thread_id=? AND status='pending' AND id<>?) THEN status ELSE 'running' END, "
            "updated_at=? WHERE thread_id=?",
            (env.thread_id, p["interaction_id"], at, env.thread_id),
        )
    elif kind in ENDINGS:
        cursor.execute(
            "UPDATE threads SET status=?, updated_at=?, completed_at=?, error=?, "
            "output=COALESCE(?, output) WHERE thread_id=?",
            (ENDINGS[kind], at, at, p.get("error"),
             dumps(p["output"]) if "output" in p else None, env.thread_id),
        )
    elif kind == "InteractionRequested":
        cursor.execute(
            "INSERT OR IGNORE INTO requests (id, thread_id, node_name, interaction_type, prompt, "
            "context, options, assignees, timeout_seconds, deadline, created_at, batch_index, "
            "batch_size, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?, 'pending')",
            (p["id"], env.thread_id, p["node_name"], p["interaction_type"], p["prompt"],
             dumps(p["context"]), dumps(p["options"]), dumps(p["assignees"]),
             p.get("timeout_seconds"), p.get("deadline"), p["created_at"],
             p.get("batch_index", 0), p.get("batch_size", 1)),
        )
    elif kind == "ResponseAccepted":
        cursor.execute("UPDATE requests SET status='answered', closed_at=?, action=?, "
                       "responder=? WHERE id=?",
                       (p["timestamp"], p["action"], p["responder"], p["request_id"]))
    elif kind == "InteractionTimedOut":
        cursor.execute("UPDATE requests SET status='timed_out', closed_at=? WHERE id=? AND "
                       "status='pending'", (p["timestamp"], p["request_id"]))
    elif kind == "InteractionCancelled":
        cursor.execute("UPDATE requests SET status='cancelled', closed_at=? WHERE id=? AND "
                       "status='pending'", (at, p["request_id"]))


def _pending(row: sqlite3.Row) -> PendingInteraction:
    return PendingInteraction(
        id=row["id"], thread_id=row["thread_id"], node_name=row["node_name"],
        interaction_type=row["interaction_type"], prompt=row["prompt"],
        context=json.loads(row["context"]), options=json.loads(row["options"]),
        assignees=json.loads(row["assignees"]), timeout_seconds=row["timeout_seconds"],
        deadline=row["deadline"], created_at=row["created_at"],
        batch_index=row["batch_index"], batch_size=row["batch_size"],
    )


def pending(db: ViewDatabase, thread_id: str | None = None,
            limit: int = 100) -> list[PendingInteraction]:
    if thread_id:
        rows = db.query("SELECT * FROM requests WHERE status='pending' AND thread_id=? "
                        "ORDER BY created_at, batch_index LIMIT ?", (thread_id, limit))
    else:
        rows = db.query("SELECT * FROM requests WHERE status='pending' "
                        "ORDER BY created_at, batch_index LIMIT ?", (limit,))
    return [_pending(r) for r in rows]


def _thread(db: ViewDatabase, row: sqlite3.Row) -> ThreadView:
    data: dict[str, Any] = dict(row)
    data["output"] = json.loads(row["output"]) if row["output"] is not None else None
    data["pending"] = (pending(db, row["thread_id"]) if row["status"] == "paused" else [])
    return ThreadView(**data)


def thread(db: ViewDatabase, thread_id: str) -> ThreadView | None:
    rows = db.query("SELECT * FROM threads WHERE thread_id=?", (thread_id,))
    return _thread(db, rows[0]) if rows else None


def threads(db: ViewDatabase, status: str | None = None, graph_name: str | None = None,
            limit: int = 100) -> list[ThreadView]:
    clauses, params = [], []
    if status:
        clauses.append("status=?")
        params.append(status)
    if graph_name:
        clauses.append("graph_name=?")
        params.append(graph_name)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = db.query(f"SELECT * FROM threads {where} ORDER BY updated_at DESC LIMIT ?",  # noqa: S608
                    (*params, limit))
    return [_thread(db, r) for r in rows]
