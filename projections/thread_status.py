"""thread_status: the guide's ``threads`` collection, each thread's open requests, and the full
event timeline of every thread (what ``hitlflow show`` prints).

Rows of ``thread_status`` come from the workflow service's events only, rows of
``thread_requests`` from the interaction service's only, so their final state does not depend
on how the two services' events interleave (live and rebuilt views agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from contracts.queries import (
    Cursor,
    PendingCursor,
    PendingInteraction,
    ThreadsCursor,
    ThreadView,
    TimelineEvent,
)
from projections.db import Row, Tx, ViewDatabase, fill_page, iso
from projections.event import Event, moment, payload_json, payload_text
from projections.rows import Audience, Keyed, Rows

NAME = "thread_status"
VERSION = 4
TABLES = ("thread_status", "thread_requests", "thread_timeline", "thread_request_audience")

DDL = (
    """CREATE TABLE IF NOT EXISTS thread_status (
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
        output TEXT,
        version BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS thread_requests (
        id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        node_name TEXT NOT NULL,
        interaction_type TEXT NOT NULL,
        prompt TEXT NOT NULL,
        context TEXT NOT NULL,
        options TEXT NOT NULL,
        assignees TEXT NOT NULL,
        timeout_seconds DOUBLE PRECISION,
        deadline TEXT,
        created_at TEXT NOT NULL,
        batch_index INTEGER NOT NULL,
        batch_size INTEGER NOT NULL,
        status TEXT NOT NULL,
        closed_at TEXT,
        action TEXT,
        responder TEXT,
        shown TEXT NOT NULL DEFAULT '',
        candidate_groups TEXT NOT NULL DEFAULT '[]',
        claimed_by TEXT,
        quorum TEXT,
        votes TEXT NOT NULL DEFAULT '[]',
        response_schema TEXT
    )""",
    # who may answer each request: ('user', name), ('group', name), or ('any', '')
    """CREATE TABLE IF NOT EXISTS thread_request_audience (
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS thread_timeline (
        thread_id TEXT NOT NULL,
        at_ts DOUBLE PRECISION NOT NULL,
        service TEXT NOT NULL,
        position BIGINT NOT NULL,
        at TEXT NOT NULL,
        event_type TEXT NOT NULL,
        aggregate_version BIGINT NOT NULL,
        payload TEXT NOT NULL
    )""",
)
#: Created after the rows during a rebuild (one sort instead of a million random inserts).
INDEXES = (
    "CREATE INDEX IF NOT EXISTS thread_status_by_status ON thread_status (status, updated_at)",
    "CREATE INDEX IF NOT EXISTS thread_status_by_update ON thread_status (updated_at)",
    "CREATE INDEX IF NOT EXISTS thread_requests_open ON thread_requests"
    " (status, thread_id, created_at)",
    "CREATE INDEX IF NOT EXISTS thread_request_audience_by_name ON thread_request_audience"
    " (kind, name)",
    "CREATE INDEX IF NOT EXISTS thread_request_audience_by_request ON thread_request_audience"
    " (request_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS thread_timeline_event ON thread_timeline"
    " (service, position)",
    "CREATE INDEX IF NOT EXISTS thread_timeline_by_thread ON thread_timeline"
    " (thread_id, at_ts, service, position)",
)
#: The index the fold reads by (replacing a request's audience), built before the rows.
LOOKUPS = ("thread_request_audience_by_request",)

ENDINGS = {
    "ThreadCompleted": "completed",
    "ThreadFailed": "failed",
    "ThreadTimedOut": "timed_out",
    "ThreadCancelled": "cancelled",
}

_THREAD_COLUMNS = ("thread_id, graph_name, workflow_digest, status, current_node, started_by, "
                   "started_at, updated_at, completed_at, error, output")


def _json(value: Any) -> str:
    return payload_json(value)  # the same compact JSON, by an encoder made once


def _text(value: Any) -> Any:
    """A text column's value: an erased value (``{"erased": true, ...}``) as its JSON."""
    return _json(value) if isinstance(value, dict) else value


# -- folding events -----------------------------------------------------------------------------

#: The keyed tables the fold reads and changes (through ``tx.rows``: projections/rows.py).
STATUS = Keyed("thread_status", (
    "thread_id", "graph_name", "workflow_digest", "status", "current_node", "started_by",
    "started_at", "updated_at", "completed_at", "error", "output", "version"))
REQUESTS = Keyed("thread_requests", (
    "id", "thread_id", "node_name", "interaction_type", "prompt", "context", "options",
    "assignees", "timeout_seconds", "deadline", "created_at", "batch_index", "batch_size",
    "status", "closed_at", "action", "responder", "shown", "candidate_groups", "claimed_by",
    "quorum", "votes", "response_schema"),
    defaults={"shown": "", "candidate_groups": "[]", "votes": "[]"})
AUDIENCE = Audience("thread_request_audience")


def _started(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    rows.add(STATUS, {
        "thread_id": env.thread_id, "graph_name": p["graph_name"],
        "workflow_digest": p["workflow_digest"], "status": "running", "current_node": None,
        "started_by": p.get("started_by", "anonymous"), "started_at": at, "updated_at": at,
        "version": env.aggregate_version})


def _node_completed(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    node, output = p.get("next_node"), _json(p.get("output"))
    row = rows.change(STATUS, env.thread_id)
    if row is not None:
        row.update(current_node=node, output=output, updated_at=at,
                   version=env.aggregate_version)


def _node_failed(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    node = p.get("next_node")
    row = rows.change(STATUS, env.thread_id)
    if row is not None:
        row.update(current_node=node, updated_at=at, version=env.aggregate_version)


def _touched(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    row = rows.change(STATUS, env.thread_id)
    if row is not None:
        row.update(updated_at=at, version=env.aggregate_version)


def _paused(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    node = p["node"]
    row = rows.change(STATUS, env.thread_id)
    if row is not None:
        row.update(status="paused", current_node=node, updated_at=at,
                   version=env.aggregate_version)


def _resumed(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    # a batch stays paused until its last request is answered
    status = "paused" if int(p.get("waiting_on") or 0) > 0 else "running"
    row = rows.change(STATUS, env.thread_id)
    if row is not None:
        row.update(status=status, updated_at=at, version=env.aggregate_version)


def _ended(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    node = None if env.event_type == "ThreadCompleted" else p.get("node")
    error = p.get("error")
    if env.event_type == "ThreadTimedOut":
        error = f"request {p.get('interaction_id')} at node {p.get('node')!r} timed out"
    status, error = ENDINGS[env.event_type], _text(error)
    output = _json(p["output"]) if "output" in p else None
    row = rows.change(STATUS, env.thread_id)
    if row is not None:
        row.update(status=status, updated_at=at, completed_at=at, error=error,
                   version=env.aggregate_version)
        if node is not None:
            row["current_node"] = node
        if output is not None:
            row["output"] = output


def _audience(users: Any, groups: Any) -> list[tuple[str, str]]:
    return [("user", u) for u in users] + [("group", g) for g in groups] or [("any", "")]


def _requested(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    rows.add(REQUESTS, {
        "id": p["id"], "thread_id": env.thread_id, "node_name": p["node_name"],
        "interaction_type": p["interaction_type"], "prompt": _text(p["prompt"]),
        "context": _json(p.get("context") or {}), "options": _json(p.get("options") or []),
        "assignees": _json(list(p.get("assignees") or ())),
        "timeout_seconds": p.get("timeout_seconds"),
        "deadline": iso(p["deadline"]) if p.get("deadline") else None,
        "created_at": iso(p["created_at"]), "batch_index": p.get("batch_index", 0),
        "batch_size": p.get("batch_size", 1), "status": "pending", "shown": p.get("shown") or "",
        "candidate_groups": _json(list(p.get("candidate_groups") or ())),
        "quorum": _json(p["quorum"]) if p.get("quorum") else None,
        "response_schema": _json(p["response_schema"]) if p.get("response_schema") else None})
    quorum = p.get("quorum") or {}
    if quorum:
        audience = _audience(quorum.get("of") or (),
                             [quorum["group"]] if quorum.get("group") else ())
    else:
        audience = _audience(p.get("assignees") or (), p.get("candidate_groups") or ())
    rows.offer(AUDIENCE, p["id"], audience)


def _accepted(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    closed, action, responder = iso(p["timestamp"]), p["action"], p.get("responder")
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row.update(status="answered", closed_at=closed, action=action, responder=responder)


def _closed(rows: Rows, request_id: str, status: str, closed: str) -> None:
    row = rows.change(REQUESTS, request_id)
    if row is not None and row["status"] == "pending":
        row.update(status=status, closed_at=closed)


def _timed_out(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    _closed(rows, p["request_id"], "timed_out", iso(p.get("timestamp") or at))


def _cancelled(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    _closed(rows, p["request_id"], "cancelled", at)


def _reminded(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    if p.get("deadline"):
        deadline = iso(p["deadline"])
        row = rows.change(REQUESTS, p["request_id"])
        if row is not None:
            row["deadline"] = deadline


def _escalated(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    assignees, shown = _json(list(p.get("assignees") or ())), p.get("shown") or ""
    deadline = iso(p["deadline"]) if p.get("deadline") else None
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row.update(assignees=assignees, candidate_groups="[]", claimed_by=None)
        if shown:
            row["shown"] = shown
        if deadline is not None:
            row["deadline"] = deadline
    rows.offer(AUDIENCE, p["request_id"], _audience(p.get("assignees") or (), ()))


def _claimed(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    claimed_by = p["claimed_by"]
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row["claimed_by"] = claimed_by


def _released(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row["claimed_by"] = None


def _delegated(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    to, shown = p["to"], p["shown"]
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row.update(claimed_by=to, shown=shown)


def _reassigned(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    assignees = _json(list(p.get("assignees") or ()))
    groups, shown = _json(list(p.get("candidate_groups") or ())), p["shown"]
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row.update(assignees=assignees, candidate_groups=groups, claimed_by=None, shown=shown)
    rows.offer(AUDIENCE, p["request_id"],
               _audience(p.get("assignees") or (), p.get("candidate_groups") or ()))


def _voted(rows: Rows, env: Event, p: dict[str, Any], at: str) -> None:
    row = rows.change(REQUESTS, p["request_id"])
    if row is None:
        return
    votes = [v for v in json.loads(row["votes"]) if v.get("voter") != p["voter"]]
    votes.append({"voter": p["voter"], "action": p["action"]})
    row["votes"] = _json(votes)


Handler = Callable[[Rows, Event, dict[str, Any], str], None]

HANDLERS: dict[str, Handler] = {
    "ThreadStarted": _started,
    "NodeCompleted": _node_completed,
    "NodeFailed": _node_failed,
    "NodeDecided": _touched,
    "FallbackTaken": _touched,
    "ThreadPaused": _paused,
    "ThreadResumed": _resumed,
    **dict.fromkeys(ENDINGS, _ended),
    "InteractionRequested": _requested,
    "ResponseAccepted": _accepted,
    "InteractionTimedOut": _timed_out,
    "InteractionCancelled": _cancelled,
    "InteractionReminded": _reminded,
    "InteractionEscalated": _escalated,
    "InteractionClaimed": _claimed,
    "InteractionReleased": _released,
    "InteractionDelegated": _delegated,
    "InteractionReassigned": _reassigned,
    "VoteCast": _voted,
}


def apply(tx: Tx, env: Event) -> None:
    """Fold one event (of any type, known or not) into the view."""
    at, at_ts = moment(env)
    # nothing reads the timeline while events are folded: a rebuild writes it in bulk
    tx.defer(
        "INSERT INTO thread_timeline (thread_id, at_ts, service, position, at, event_type,"
        " aggregate_version, payload) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        (env.thread_id, at_ts, env.service, env.position, at, env.event_type,
         env.aggregate_version, payload_text(env)),
    )
    handler = HANDLERS.get(env.event_type)
    if handler is not None:
        handler(tx.rows, env, env.payload, at)


# -- queries ------------------------------------------------------------------------------------


def _pending(row: Row) -> PendingInteraction:
    return PendingInteraction(
        id=row["id"], thread_id=row["thread_id"], node_name=row["node_name"],
        interaction_type=row["interaction_type"], prompt=row["prompt"],
        context=json.loads(row["context"]), options=json.loads(row["options"]),
        assignees=json.loads(row["assignees"]), timeout_seconds=row["timeout_seconds"],
        deadline=row["deadline"], created_at=row["created_at"],
        batch_index=row["batch_index"], batch_size=row["batch_size"],
        shown=row["shown"], candidate_groups=json.loads(row["candidate_groups"]),
        claimed_by=row["claimed_by"],
        quorum=json.loads(row["quorum"]) if row["quorum"] else None,
        votes=json.loads(row["votes"]),
        response_schema=json.loads(row["response_schema"]) if row["response_schema"] else None,
    )


def pending(db: ViewDatabase, thread_id: str) -> list[PendingInteraction]:
    """Every open request of one thread (bounded: a pause's requests fit one event)."""
    rows = db.query("SELECT * FROM thread_requests WHERE status='pending' AND thread_id=?"
                    " ORDER BY created_at, batch_index, id", (thread_id,))
    return [_pending(r) for r in rows]


def pending_page(db: ViewDatabase, thread_id: str | None = None, limit: int = 100,
                 after: PendingCursor | None = None, *, person: str | None = None,
                 groups: tuple[str, ...] = (),
                 ) -> tuple[list[PendingInteraction], PendingCursor | None]:
    """Open requests, oldest first: one page and the cursor of the next (None: no more).
    With ``person``: only those that person may answer now (the request's rules, as the
    interaction service applies them: claimed by them, or unclaimed and assigned to them, to
    one of ``groups`` or to anyone; a quorum they have not voted on yet)."""
    clauses: list[str] = ["status='pending'"]
    params: list[Any] = []
    if thread_id:
        clauses.append("thread_id=?")
        params.append(thread_id)
    if person is not None:
        marks = ",".join("?" * len(groups))
        clauses.append(
            "(claimed_by=? OR (claimed_by IS NULL AND id IN (SELECT request_id FROM"
            " thread_request_audience WHERE kind='any' OR (kind='user' AND name=?)"
            + (f" OR (kind='group' AND name IN ({marks}))" if groups else "") + ")))")
        params += [person, person, *groups]
    if after is not None:
        clauses.append("(created_at, batch_index, id) > (?, ?, ?)")
        params += [after.created_at, after.batch_index, after.id]
    rows = db.query("SELECT * FROM thread_requests WHERE " + " AND ".join(clauses) +  # noqa: S608
                    " ORDER BY created_at, batch_index, id LIMIT ?", (*params, limit + 1))
    stamps = {r["id"]: str(r["created_at"]) for r in rows}
    items, more = fill_page([_pending(r) for r in rows], limit)
    following = (PendingCursor(created_at=stamps[items[-1].id],
                               batch_index=items[-1].batch_index, id=items[-1].id)
                 if more else None)
    if person is not None:  # a quorum waits on each voter once
        items = [i for i in items if not any(v.get("voter") == person for v in i.votes)]
    return items, following


def _thread(db: ViewDatabase, row: Row) -> ThreadView:
    data: dict[str, Any] = dict(row)
    data["output"] = json.loads(row["output"]) if row["output"] is not None else None
    data["pending"] = (pending(db, row["thread_id"]) if row["status"] == "paused" else [])
    return ThreadView(**data)


def thread(db: ViewDatabase, thread_id: str) -> ThreadView | None:
    row = db.one(f"SELECT {_THREAD_COLUMNS} FROM thread_status WHERE thread_id=?",  # noqa: S608
                 (thread_id,))
    return _thread(db, row) if row else None


def threads(db: ViewDatabase, status: str | None = None, graph_name: str | None = None,
            limit: int = 100, after: ThreadsCursor | None = None,
            ) -> tuple[list[ThreadView], ThreadsCursor | None]:
    """Threads, most recently updated first: one page and the cursor of the next."""
    clauses: list[str] = []
    params: list[Any] = []
    if status:
        clauses.append("status=?")
        params.append(status)
    if graph_name:
        clauses.append("graph_name=?")
        params.append(graph_name)
    if after is not None:
        clauses.append("(updated_at < ? OR (updated_at = ? AND thread_id > ?))")
        params += [after.updated_at, after.updated_at, after.thread_id]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = db.query(f"SELECT {_THREAD_COLUMNS} FROM thread_status {where}"  # noqa: S608
                    " ORDER BY updated_at DESC, thread_id LIMIT ?", (*params, limit + 1))
    stamps = {r["thread_id"]: str(r["updated_at"]) for r in rows}
    items, more = fill_page([_thread(db, r) for r in rows], limit)
    if not more:
        return items, None
    last = items[-1]
    return items, ThreadsCursor(updated_at=stamps[last.thread_id], thread_id=last.thread_id)


def timeline(db: ViewDatabase, thread_id: str, after: Cursor | None = None,
             limit: int = 500) -> tuple[list[TimelineEvent], Cursor | None]:
    """A thread's events in the order they happened: one page after ``after``, and the cursor
    of the next page (None: no more)."""
    params: list[Any] = [thread_id]
    keyset = ""
    if after is not None:
        keyset = " AND (at_ts, service, position) > (?, ?, ?)"
        params += [after.at_ts, after.service, after.position]
    rows = db.query("SELECT * FROM thread_timeline WHERE thread_id=?" + keyset +  # noqa: S608
                    " ORDER BY at_ts, service, position LIMIT ?", (*params, limit + 1))
    events, more = fill_page([TimelineEvent(at=r["at"], at_ts=r["at_ts"], service=r["service"],
                                            position=r["position"], event_type=r["event_type"],
                                            aggregate_version=r["aggregate_version"],
                                            payload=json.loads(r["payload"])) for r in rows],
                             limit)
    if not more:
        return events, None
    last = events[-1]
    return events, Cursor(at_ts=last.at_ts, service=last.service, position=last.position)
