"""Tamper evidence: a hash chain over each thread's events, per service.

Every published event of a thread is an *audit record*: the canonical JSON (keys sorted, no
spaces, UTF-8) of its service, position in that service's log, thread, aggregate and version,
type, time, and payload, in which every value that may be personal data (prompts, contexts,
options, inputs, outputs, answer data, free-text reasons and errors: everything not in
:data:`PLAIN`) is replaced by its digest ``{"sha256": …}``. Link ``n`` of the chain of
``(thread, service)`` is ``sha256(link n-1 ‖ record n)`` (link 0 is the empty string), the
records taken in log order.

The digests keep the record the same once the personal values are erased (their digest is
kept with them), so an erased thread's chain still verifies.

The links are *anchored* in ``audit_chain`` (the views database), written by the projections
as the events arrive over NATS, and never rewritten: a rebuild only appends links for events
not anchored yet. ``hitlflow audit verify`` recomputes the chains from the stores and compares
them with the anchors (:mod:`projections.verify`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from contracts.jsontext import encoder
from projections.db import Tx, ViewDatabase, iso
from projections.event import Event, Replayed, moment

NAME = "audit_chain"

DDL = (
    """CREATE TABLE IF NOT EXISTS audit_chain (
        thread_id TEXT NOT NULL,
        service TEXT NOT NULL,
        seq BIGINT NOT NULL,
        position BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        aggregate_version BIGINT NOT NULL,
        at TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (thread_id, service, seq)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS audit_chain_event ON audit_chain (service, position)",
)

#: Payload fields kept as they are in an audit record: who, when, what kind, which action, ids,
#: routes, codes, steps. Every other value is kept as its digest.
PLAIN = frozenset({
    "action", "approvals", "assignees", "batch_index", "batch_size", "by_timeout",
    "candidate_groups", "claimed_by", "code", "command", "created_at", "data_keys", "deadline",
    "due_at", "duration_ms", "fired_at", "from_assignees", "from_person", "graph_name", "id",
    "idempotency_key", "interaction_id", "interaction_type", "next_node", "node", "node_name",
    "of", "on_behalf_of", "on_timeout", "output_field", "policy", "principal", "quorum",
    "rejections", "released_by", "reminder", "request_id", "requested_by", "responder",
    "result", "route", "schema_version", "sensitive", "shown", "started_by", "step", "thread_id",
    "timeout_seconds", "timestamp", "to", "via", "voter", "waiting_on", "workflow_digest",
})
#: Payload fields holding a list of requests, each kept by the same rule.
NESTED = frozenset({"interactions"})


#: The canonical JSON encoder, made once (the text of ``json.dumps`` with these options).
_canonical = encoder(sort_keys=True)


def canonical(value: Any) -> str:
    return _canonical(value)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: The digests of the values most personal fields hold when they hold nothing.
_NULL, _NO_ITEMS, _NO_FIELDS = _sha256("null"), _sha256("[]"), _sha256("{}")


def digest(value: Any) -> str:
    """sha256 (hex) of a value's canonical JSON; an erased value's kept digest."""
    if value is None:
        return _NULL
    if isinstance(value, dict):
        if not value:
            return _NO_FIELDS
        if value.get("erased") is True and "sha256" in value:
            return str(value["sha256"])
    elif not value and isinstance(value, list | tuple):
        return _NO_ITEMS
    return _sha256(canonical(value))


def digested(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload with every value that is not :data:`PLAIN` replaced by its digest."""
    kept: dict[str, Any] = {}
    for key, value in payload.items():
        if key in PLAIN:
            kept[key] = value
        elif key in NESTED and isinstance(value, list):
            kept[key] = [digested(item) if isinstance(item, dict) else {"sha256": digest(item)}
                         for item in value]
        else:
            kept[key] = {"sha256": digest(value)}
    return kept


def record(env: Event, at: str | None = None) -> str:
    """The audit record of an event (canonical JSON); ``at``: its time as :func:`iso` writes
    it, when the caller has it already."""
    return _canonical({
        "service": env.service, "position": env.position, "thread_id": env.thread_id,
        "aggregate_id": env.aggregate_id, "aggregate_version": env.aggregate_version,
        "event_type": env.event_type, "at": at or iso(env.occurred_at),
        "payload": digested(env.payload),
    })


def link(previous: str, env: Event, at: str | None = None) -> str:
    text = env.record if isinstance(env, Replayed) and env.record is not None else None
    return hashlib.sha256((previous + (text or record(env, at))).encode()).hexdigest()


def anchored(db: ViewDatabase) -> dict[str, int]:
    """The last position of each service's log anchored so far."""
    return {str(row["service"]): int(row["upto"]) for row in db.query(
        "SELECT service, MAX(position) AS upto FROM audit_chain GROUP BY service")
        if row["upto"] is not None}


def create(tx: Tx) -> None:
    for statement in DDL:
        tx.execute(statement)


_INSERT = ("INSERT INTO audit_chain (thread_id, service, seq, position, event_type,"
           " aggregate_version, at, hash) VALUES (?,?,?,?,?,?,?,?)")


class Anchoring:
    """Anchors links within one transaction: the last link of each chain it touched is kept
    in memory (no read back), and the new links are written together (:meth:`write`).

    ``fresh`` services have no anchor at all yet (a first rebuild): their chains need no read,
    and their links cannot meet a link written before, so they are written in bulk (``COPY``
    on PostgreSQL). (Writers take turns: none anchors while this transaction runs.)
    """

    def __init__(self, tx: Tx, fresh: frozenset[str] = frozenset()) -> None:
        self._tx = tx
        self._fresh = fresh
        self._last: dict[tuple[str, str], tuple[int, int, str]] = {}
        self._rows: list[tuple[Any, ...]] = []
        self._new: list[tuple[Any, ...]] = []  # of the fresh services

    def extend(self, env: Event) -> bool:
        """Anchor ``env`` as the next link of its thread's chain for its service; an event at
        or before the last anchored position changes nothing (anchors are never rewritten)."""
        key = (env.thread_id, env.service)
        last = self._last.get(key)
        if last is None and env.service not in self._fresh:
            row = self._tx.one("SELECT seq, position, hash FROM audit_chain WHERE thread_id = ?"
                               " AND service = ? ORDER BY seq DESC LIMIT 1", key)
            if row is not None:
                last = (int(row["seq"]), int(row["position"]), str(row["hash"]))
        if last is not None and last[1] >= env.position:
            return False
        seq = last[0] + 1 if last else 1
        at = moment(env)[0]
        hashed = link(last[2] if last else "", env, at)
        self._last[key] = (seq, env.position, hashed)
        (self._new if env.service in self._fresh else self._rows).append(
            (env.thread_id, env.service, seq, env.position, env.event_type,
             env.aggregate_version, at, hashed))
        return True

    def write(self) -> None:
        """Write the links anchored since the last write."""
        if self._new:
            self._tx.insert_all(_INSERT, self._new)
            self._new = []
        if self._rows:
            self._tx.executemany(_INSERT + " ON CONFLICT DO NOTHING", self._rows)
            self._rows = []


def extend(tx: Tx, env: Event) -> bool:
    """Anchor one event (see :class:`Anchoring`, which anchors many at less cost)."""
    anchoring = Anchoring(tx)
    anchored = anchoring.extend(env)
    anchoring.write()
    return anchored
