"""audit_trail: the guide's ``interaction_audit`` collection, for every interaction.

One row per request, accepted response, refused attempt, timeout, reminder, escalation and
cancellation, and per decision a node took without asking (condition false, fallback): who,
when, which action, the keys of the data sent (never the values), and the sha256 digest of what
the responder was shown. Rows about a request carry that request's digest too, so an auditor
can tell which exact prompt an answer was given to.

The digest is ``sha256`` of the canonical JSON (keys sorted, no spaces, UTF-8) of
``{"context": …, "options": […], "prompt": …}`` as the request carried them — see
:func:`shown_digest`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from contracts.events import EventEnvelope
from contracts.limits import MAX_PAGE_BYTES
from contracts.queries import AuditEntry, AuditQuery, Cursor
from projections.chain import digest
from projections.db import Row, Tx, ViewDatabase, dumps, epoch, fill_page, when

NAME = "audit_trail"
VERSION = 1
TABLES = ("audit_trail", "audit_requests")

DDL = (
    """CREATE TABLE IF NOT EXISTS audit_trail (
        service TEXT NOT NULL,
        position BIGINT NOT NULL,
        at_ts DOUBLE PRECISION NOT NULL,
        at TEXT NOT NULL,
        event TEXT NOT NULL,
        event_type TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        request_id TEXT,
        node_name TEXT,
        interaction_type TEXT,
        action TEXT,
        responder TEXT,
        data_keys TEXT NOT NULL,
        by_timeout INTEGER NOT NULL,
        code TEXT,
        reason TEXT,
        idempotency_key TEXT,
        digest TEXT,
        detail TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_requests (
        request_id TEXT PRIMARY KEY,
        node_name TEXT NOT NULL,
        interaction_type TEXT NOT NULL,
        digest TEXT NOT NULL
    )""",
)
#: Created after the rows during a rebuild.
INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS audit_trail_event ON audit_trail (service, position)",
    "CREATE INDEX IF NOT EXISTS audit_trail_by_time ON audit_trail (at_ts, service, position)",
    "CREATE INDEX IF NOT EXISTS audit_trail_by_thread ON audit_trail (thread_id, at_ts)",
    "CREATE INDEX IF NOT EXISTS audit_trail_by_responder ON audit_trail (responder, at_ts)",
    "CREATE INDEX IF NOT EXISTS audit_trail_by_node ON audit_trail (node_name, at_ts)",
)

#: Event type → the ``event`` column of its audit row. Other event types have no audit row.
EVENTS = {
    "InteractionRequested": "requested",
    "ResponseAccepted": "accepted",
    "ResponseRejected": "rejected",
    "InteractionTimedOut": "timed_out",
    "InteractionCancelled": "cancelled",
    "InteractionReminded": "reminded",
    "InteractionEscalated": "escalated",
    "NodeDecided": "decided",
    "FallbackTaken": "fallback",
    "CommandRefused": "refused",
}

COLUMNS = ("at", "event", "thread_id", "request_id", "node_name", "interaction_type", "action",
           "responder", "data_keys", "by_timeout", "code", "reason", "digest", "service",
           "position", "event_type", "idempotency_key", "detail")

_INSERT = (
    "INSERT INTO audit_trail (service, position, at_ts, at, event, event_type, thread_id,"
    " request_id, node_name, interaction_type, action, responder, data_keys, by_timeout, code,"
    " reason, idempotency_key, digest, detail) VALUES (?,?,?,?,?,?,?,?,"
    " COALESCE(?, (SELECT node_name FROM audit_requests WHERE request_id = ?)),"
    " COALESCE(?, (SELECT interaction_type FROM audit_requests WHERE request_id = ?)),"
    " ?,?,?,?,?,?,?,"
    " COALESCE(?, (SELECT digest FROM audit_requests WHERE request_id = ?)),"
    " ?) ON CONFLICT DO NOTHING"
)


#: What a free-text reason of an erased thread reads as.
ERASED = "(erased)"


def shown_digest(prompt: str, context: dict[str, Any], options: Sequence[str]) -> str:
    """sha256 (hex) of what a request showed: its prompt, context and options."""
    canonical = json.dumps({"context": context, "options": list(options), "prompt": prompt},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _sensitive(context: Any) -> dict[str, Any]:
    """The fields a node marks ``"sensitive": [...]`` in its context, as the audit keeps them:
    each key with the sha256 of its value's canonical JSON (never the value)."""
    if not isinstance(context, dict) or not isinstance(context.get("sensitive"), list):
        return {}
    return {"sensitive": {str(key): digest(context.get(str(key)))
                          for key in context["sensitive"]}}


def _keys(data: Any) -> list[str]:
    return sorted(str(k) for k in data) if isinstance(data, dict) else []


def _pick(p: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: p[n] for n in names if p.get(n) is not None}


def apply(tx: Tx, env: EventEnvelope) -> None:
    event = EVENTS.get(env.event_type)
    if event is None:
        return
    p = env.payload
    request_id = p.get("request_id")
    node = p.get("node_name")
    kind = p.get("interaction_type")
    action = p.get("action")
    responder = p.get("responder")
    data_keys: list[str] = []
    digest = None
    code = reason = key = None
    by_timeout = False
    detail: dict[str, Any] = {}
    moment = p.get("timestamp") or env.occurred_at
    if event == "requested":
        request_id = p["id"]
        moment = p.get("created_at") or env.occurred_at
        digest = shown_digest(p.get("prompt", ""), p.get("context") or {}, p.get("options") or ())
        detail = _pick(p, "assignees", "timeout_seconds", "deadline", "on_timeout")
        detail.update(_sensitive(p.get("context")))
        if p.get("batch_size", 1) != 1:
            detail.update(batch_index=p.get("batch_index", 0), batch_size=p["batch_size"])
        tx.execute("INSERT INTO audit_requests (request_id, node_name, interaction_type, digest)"
                   " VALUES (?,?,?,?) ON CONFLICT DO NOTHING", (request_id, node, kind, digest))
    elif event == "accepted":
        data_keys = _keys(p.get("data"))
        by_timeout = bool(p.get("by_timeout"))
        key = p.get("idempotency_key")
        detail = _pick(p, "route")
    elif event == "rejected":
        data_keys = [str(k) for k in p.get("data_keys") or ()]
        code, reason, key = p.get("code"), p.get("reason"), p.get("idempotency_key")
    elif event == "timed_out":
        by_timeout = True
        reason = p.get("detail")
        detail = _pick(p, "policy", "step", "deadline")
    elif event == "cancelled":
        reason = p.get("reason")
    elif event == "reminded":
        detail = _pick(p, "step", "reminder", "of", "assignees", "deadline")
    elif event == "escalated":
        detail = _pick(p, "step", "from_assignees", "assignees", "deadline")
    elif event == "refused":  # a command refused before it could act (CommandRefused)
        code, reason, action = p.get("code"), p.get("reason"), p.get("command")
    else:  # decided / fallback: a node of the workflow answered in a person's place
        node = p.get("node")
        data_keys = _keys(p.get("data"))
        reason = p.get("error")
        detail = _pick(p, "expression", "result", "reason", "route", "next_node")
    at, at_ts = when(moment)
    tx.execute(_INSERT, (
        env.service, env.position, at_ts, at, event, env.event_type, env.thread_id,
        request_id, node, request_id, kind, request_id, action, responder, dumps(data_keys),
        1 if by_timeout else 0, code, ERASED if isinstance(reason, dict) else reason, key,
        digest, request_id, dumps(detail),
    ))


# -- queries ------------------------------------------------------------------------------------

_FILTERS = ("thread_id", "node_name", "responder", "action", "interaction_type", "request_id",
            "event")


def _entry(row: Row) -> AuditEntry:
    return AuditEntry(
        at=row["at"], event=row["event"], event_type=row["event_type"], service=row["service"],
        position=row["position"], thread_id=row["thread_id"], request_id=row["request_id"],
        node_name=row["node_name"], interaction_type=row["interaction_type"],
        action=row["action"], responder=row["responder"],
        data_keys=json.loads(row["data_keys"]), by_timeout=bool(row["by_timeout"]),
        code=row["code"], reason=row["reason"], idempotency_key=row["idempotency_key"],
        digest=row["digest"], detail=json.loads(row["detail"]),
    )


def entries(db: ViewDatabase, query: AuditQuery,
            max_bytes: int = MAX_PAGE_BYTES) -> tuple[list[AuditEntry], Cursor | None]:
    """One page of matching entries, oldest first, and the cursor of the next page (or None)."""
    clauses: list[str] = []
    params: list[Any] = []
    for name in _FILTERS:
        value = getattr(query, name)
        if value is not None:
            clauses.append(f"{name} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append("at_ts >= ?")
        params.append(epoch(query.since))
    if query.until is not None:
        clauses.append("at_ts < ?")
        params.append(epoch(query.until))
    if query.after is not None:
        clauses.append("(at_ts, service, position) > (?, ?, ?)")
        params += [query.after.at_ts, query.after.service, query.after.position]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = db.query("SELECT * FROM audit_trail" + where +  # noqa: S608 - names from _FILTERS
                    " ORDER BY at_ts, service, position LIMIT ?", (*params, query.limit + 1))
    stamps = {(r["service"], r["position"]): r["at_ts"] for r in rows}
    page, more = fill_page([_entry(r) for r in rows], query.limit, max_bytes)
    if not more:
        return page, None
    last = page[-1]
    return page, Cursor(at_ts=stamps[(last.service, last.position)], service=last.service,
                        position=last.position)
