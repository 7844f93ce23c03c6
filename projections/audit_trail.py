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

import json
from collections.abc import Callable
from typing import Any

from contracts.events import shown_digest
from contracts.limits import MAX_PAGE_BYTES
from contracts.queries import AuditEntry, AuditQuery, Cursor
from projections.chain import digest
from projections.db import Row, Tx, ViewDatabase, dumps, epoch, fill_page, when
from projections.event import Event, moment
from projections.rows import Keyed

NAME = "audit_trail"
VERSION = 2
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
        principal TEXT,
        on_behalf_of TEXT,
        shown TEXT,
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
    "CREATE INDEX IF NOT EXISTS audit_trail_by_principal ON audit_trail (principal, at_ts)",
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
    "InteractionClaimed": "claimed",
    "InteractionReleased": "released",
    "InteractionDelegated": "delegated",
    "InteractionReassigned": "reassigned",
    "VoteCast": "voted",
}

COLUMNS = ("at", "event", "thread_id", "request_id", "node_name", "interaction_type", "action",
           "responder", "principal", "on_behalf_of", "data_keys", "by_timeout", "code", "reason",
           "digest", "shown", "service", "position", "event_type", "idempotency_key", "detail")

_INSERT = (
    "INSERT INTO audit_trail (service, position, at_ts, at, event, event_type, thread_id,"
    " request_id, node_name, interaction_type, action, responder, principal, on_behalf_of,"
    " shown, data_keys, by_timeout, code, reason, idempotency_key, digest, detail)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
)
#: Each request's node, type and the digest of what it showed, for the rows about it.
REQUESTS = Keyed("audit_requests", ("request_id", "node_name", "interaction_type", "digest"))


def _keys(data: Any) -> list[str]:
    return sorted(str(k) for k in data) if isinstance(data, dict) else []


def _pick(p: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: p[n] for n in names if p.get(n) is not None}


#: What a free-text reason of an erased thread reads as.
ERASED = "(erased)"


def _erased(value: Any) -> bool:
    return isinstance(value, dict) and value.get("erased") is True


def _sensitive(context: Any, names: Any) -> dict[str, Any]:
    """The fields a node marks ``"sensitive": [...]``, as the audit keeps them: each key with
    the sha256 of its value's canonical JSON as shown (never the value)."""
    if not names or not isinstance(context, dict):
        return {}
    return {"sensitive": {str(key): digest(context.get(str(key))) for key in names}}


def _requested(p: dict[str, Any]) -> dict[str, Any]:
    detail = _pick(p, "assignees", "candidate_groups", "quorum", "timeout_seconds", "deadline",
                   "on_timeout")
    detail.update(_sensitive(p.get("context"), p.get("sensitive")))
    if p.get("batch_size", 1) != 1:
        detail.update(batch_index=p.get("batch_index", 0), batch_size=p["batch_size"])
    prompt, context, options = p.get("prompt", ""), p.get("context") or {}, p.get("options")
    if any(_erased(v) for v in (prompt, context, options)):  # the digest it carried
        shown = str(p.get("shown") or "")
        return {"request_id": p["id"], "moment": p.get("created_at"), "detail": detail,
                "digest": shown.rsplit(":", 1)[-1] if shown else None}
    return {"request_id": p["id"], "moment": p.get("created_at"), "detail": detail,
            "digest": shown_digest(prompt, context, options or ())}


def _task(p: dict[str, Any]) -> dict[str, Any]:
    return {"responder": p.get("claimed_by") or p.get("released_by") or p.get("from_person"),
            "detail": _pick(p, "to", "from_assignees", "assignees", "candidate_groups")}


def _in_place(p: dict[str, Any]) -> dict[str, Any]:
    return {"node": p.get("node"), "data_keys": _keys(p.get("data")), "reason": p.get("error"),
            "detail": _pick(p, "expression", "result", "reason", "route", "next_node")}


#: What each kind of audit row takes from its event, beyond what every row takes.
_FACTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "requested": _requested,
    "accepted": lambda p: {"data_keys": _keys(p.get("data")),
                           "by_timeout": bool(p.get("by_timeout")),
                           "key": p.get("idempotency_key"), "detail": _pick(p, "route", "votes")},
    "rejected": lambda p: {"data_keys": [str(k) for k in p.get("data_keys") or ()],
                           "code": p.get("code"), "reason": p.get("reason"),
                           "key": p.get("idempotency_key")},
    "timed_out": lambda p: {"by_timeout": True, "reason": p.get("detail"),
                            "detail": _pick(p, "policy", "step", "deadline")},
    "cancelled": lambda p: {"reason": p.get("reason")},
    "reminded": lambda p: {"detail": _pick(p, "step", "reminder", "of", "assignees",
                                           "deadline")},
    "escalated": lambda p: {"detail": _pick(p, "step", "from_assignees", "assignees",
                                            "deadline")},
    # a command refused before it could act (CommandRefused)
    "refused": lambda p: {"code": p.get("code"), "reason": p.get("reason"),
                          "action": p.get("command")},
    "claimed": lambda p: {**_task(p), "action": "claim"},
    "released": lambda p: {**_task(p), "action": "release"},
    "delegated": lambda p: {**_task(p), "action": "delegate"},
    "reassigned": lambda p: {**_task(p), "action": "reassign"},
    "voted": lambda p: {"responder": p.get("voter"),
                        "data_keys": [str(k) for k in p.get("data_keys") or ()],
                        "detail": _pick(p, "approvals", "rejections")},
    # decided / fallback: a node of the workflow answered in a person's place
    "decided": _in_place,
    "fallback": _in_place,
}


def apply(tx: Tx, env: Event) -> None:
    event = EVENTS.get(env.event_type)
    if event is None:
        return
    p = env.payload
    row: dict[str, Any] = {
        "request_id": p.get("request_id"), "node": p.get("node_name"),
        "kind": p.get("interaction_type"), "action": p.get("action"),
        "responder": p.get("responder"), "principal": p.get("principal"),
        "on_behalf_of": p.get("on_behalf_of"), "shown": p.get("shown") or None,
        "data_keys": [], "digest": None, "code": None, "reason": None, "key": None,
        "by_timeout": False, "detail": {}, "moment": p.get("timestamp"),
    }
    row.update(_FACTS[event](p))
    rows = tx.rows
    request_id = row["request_id"]
    if event == "requested":
        rows.add(REQUESTS, {"request_id": request_id, "node_name": row["node"],
                            "interaction_type": row["kind"], "digest": row["digest"]})
    at, at_ts = when(row["moment"]) if row["moment"] else moment(env)
    node, kind, digest_ = row["node"], row["kind"], row["digest"]
    if (node is None or kind is None or digest_ is None) and request_id is not None:
        # what the request showed, from its own row
        request = rows.get(REQUESTS, request_id)
        if request is not None:
            node = request["node_name"] if node is None else node
            kind = request["interaction_type"] if kind is None else kind
            digest_ = request["digest"] if digest_ is None else digest_
    # nothing reads the trail while events are folded: a rebuild writes it in bulk
    tx.defer(_INSERT, (
        env.service, env.position, at_ts, at, event, env.event_type, env.thread_id,
        request_id, node, kind, row["action"], row["responder"], row["principal"],
        row["on_behalf_of"], row["shown"], dumps(row["data_keys"]),
        1 if row["by_timeout"] else 0, row["code"],
        ERASED if _erased(row["reason"]) else row["reason"], row["key"], digest_,
        dumps(row["detail"]),
    ))


# -- queries ------------------------------------------------------------------------------------

_FILTERS = ("thread_id", "node_name", "action", "interaction_type", "request_id", "event")


def _entry(row: Row) -> AuditEntry:
    return AuditEntry(
        at=row["at"], event=row["event"], event_type=row["event_type"], service=row["service"],
        position=row["position"], thread_id=row["thread_id"], request_id=row["request_id"],
        node_name=row["node_name"], interaction_type=row["interaction_type"],
        action=row["action"], responder=row["responder"], principal=row["principal"],
        on_behalf_of=row["on_behalf_of"], shown=row["shown"],
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
    if query.responder is not None:  # who sent it, or the person it was sent for
        clauses.append("(principal = ? OR responder = ?)")
        params += [query.responder, query.responder]
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
