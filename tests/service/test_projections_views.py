"""The views on their own: events (shaped by the wire contracts) folded into a real views
database, SQLite and PostgreSQL. Every audit filter, paging, the digest, redelivery, unknown and
malformed events, and the same final state whatever order the services' events interleave in."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.events import PAYLOADS, EventEnvelope
from contracts.queries import AuditQuery, Cursor
from projections import audit_trail, thread_status
from projections.db import ViewDatabase
from projections.projector import VIEWS, Projector
from tests.conftest import POSTGRES_DSN

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def open_db(backend: str, tmp_path: Path, name: str = "views") -> ViewDatabase:
    if backend == "postgres":
        if not POSTGRES_DSN:
            pytest.skip("PostgreSQL backend: set HITLFLOW_TEST_POSTGRES_DSN to run it")
        return ViewDatabase.postgres(POSTGRES_DSN, f"v_{uuid.uuid4().hex[:12]}")
    return ViewDatabase.sqlite(tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.sqlite")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(backend: str, tmp_path: Path) -> Iterator[ViewDatabase]:
    database = open_db(backend, tmp_path)
    yield database
    database.close()


def dump(db: ViewDatabase) -> dict[str, list[str]]:
    """Every row of every view table, in a comparable form."""
    return {table: sorted(json.dumps(row, sort_keys=True, default=str)
                          for row in db.query(f"SELECT * FROM {table}"))
            for view in VIEWS.values() for table in view.tables}


class Log:
    """Envelopes as the services' relays publish them: positions per service, chosen times."""

    def __init__(self) -> None:
        self.positions = {"workflow": 0, "interaction": 0, "timeout": 0}
        self.versions: dict[str, int] = {}
        self.envelopes: list[EventEnvelope] = []
        self.clock = T0

    def add(self, service: str, event_type: str, thread: str, *, aggregate: str | None = None,
            seconds: float = 1.0, raw: dict[str, Any] | None = None,
            **fields: Any) -> EventEnvelope:
        self.positions[service] += 1
        self.clock += timedelta(seconds=seconds)
        key = aggregate or f"{service}:{thread}"
        self.versions[key] = self.versions.get(key, 0) + 1
        payload = raw if raw is not None else PAYLOADS[event_type].model_validate(
            fields).model_dump(mode="json", exclude={"schema_version"})
        envelope = EventEnvelope(
            event_type=event_type, service=service, thread_id=thread,  # type: ignore[arg-type]
            event_id=str(uuid.uuid4()), aggregate_id=key, aggregate_version=self.versions[key],
            position=self.positions[service], occurred_at=self.clock, payload=payload)
        self.envelopes.append(envelope)
        return envelope

    def thread(self, thread: str, kind: str, node: str, **context: Any) -> str:
        """Start a thread and pause it on one request; returns the request id."""
        rid = str(uuid.uuid4())
        spec = {"id": rid, "thread_id": thread, "node_name": node, "interaction_type": kind,
                "prompt": f"Please look at {thread}", "context": context,
                "options": ["A", "B"] if kind == "choice" else []}
        self.add("workflow", "ThreadStarted", thread, graph_name="G", workflow_digest="d" * 64,
                 inputs={}, started_by="ops")
        self.add("workflow", "NodeCompleted", thread, node="start", next_node=node,
                 route="success")
        self.add("workflow", "ThreadPaused", thread, node=node, interactions=[spec])
        self.add("interaction", "InteractionRequested", thread, aggregate=rid,
                 created_at=self.clock, **spec)
        return rid

    def answer(self, thread: str, rid: str, kind: str, node: str, action: str,
               responder: str, data: dict[str, Any] | None = None) -> None:
        self.add("interaction", "ResponseAccepted", thread, aggregate=rid, request_id=rid,
                 node_name=node, interaction_type=kind, action=action, data=data,
                 route="success", timestamp=self.clock + timedelta(seconds=1),
                 responder=responder, idempotency_key=str(uuid.uuid4()))
        self.add("workflow", "ThreadResumed", thread, node=node, interaction_id=rid,
                 action=action, data=data, responder=responder)
        self.add("workflow", "NodeCompleted", thread, node=node, next_node=None,
                 route="success", output=action)
        self.add("workflow", "ThreadCompleted", thread, node=node, output=action)

    def reject(self, thread: str, rid: str | None, action: str, responder: str,
               keys: tuple[str, ...] = ()) -> None:
        self.add("interaction", "ResponseRejected", thread, aggregate=f"inbox:{thread}",
                 request_id=rid, action=action, data_keys=keys, responder=responder,
                 idempotency_key=str(uuid.uuid4()), code="invalid_response",
                 reason=f"{action!r} is not valid", timestamp=self.clock)


def audit_log() -> tuple[Log, dict[str, str]]:
    log = Log()
    ids = {
        "a": log.thread("ta", "approval", "gate", amount=50000),
        "b": log.thread("tb", "choice", "pick"),
        "c": log.thread("tc", "approval", "gate", amount=10),
    }
    log.reject("ta", ids["a"], "choose", "bob", ("choice",))
    log.answer("ta", ids["a"], "approval", "gate", "approve", "alice", {"reason": "fine"})
    log.answer("tb", ids["b"], "choice", "pick", "choose", "bob", {"choice": 2})
    log.add("interaction", "InteractionTimedOut", "tc", aggregate=ids["c"],
            request_id=ids["c"], node_name="gate", policy="fail", timestamp=log.clock)
    log.add("workflow", "ThreadTimedOut", "tc", node="gate", interaction_id=ids["c"])
    log.reject("tc", None, "approve", "alice")  # the thread no longer waits: no request
    return log, ids


def entries(db: ViewDatabase, **query: Any) -> list[tuple[str, ...]]:
    found, _ = audit_trail.entries(db, AuditQuery(**query))
    return [(e.thread_id, e.event, e.action or "", e.responder or "") for e in found]


# -- the audit trail -----------------------------------------------------------------------------


def test_every_audit_filter(db: ViewDatabase) -> None:
    log, ids = audit_log()
    Projector(db).apply(log.envelopes)
    everything = entries(db)
    assert everything == [
        ("ta", "requested", "", ""), ("tb", "requested", "", ""), ("tc", "requested", "", ""),
        ("ta", "rejected", "choose", "bob"), ("ta", "accepted", "approve", "alice"),
        ("tb", "accepted", "choose", "bob"), ("tc", "timed_out", "", ""),
        ("tc", "rejected", "approve", "alice"),
    ]
    assert entries(db, thread_id="tb") == [("tb", "requested", "", ""),
                                           ("tb", "accepted", "choose", "bob")]
    assert [e[0] for e in entries(db, node_name="gate")] == ["ta", "tc", "ta", "ta", "tc"]
    assert entries(db, responder="bob") == [("ta", "rejected", "choose", "bob"),
                                            ("tb", "accepted", "choose", "bob")]
    assert entries(db, action="choose") == [("ta", "rejected", "choose", "bob"),
                                            ("tb", "accepted", "choose", "bob")]
    assert [e[:2] for e in entries(db, interaction_type="choice")] == [
        ("tb", "requested"), ("tb", "accepted")]
    assert entries(db, event="rejected") == [("ta", "rejected", "choose", "bob"),
                                             ("tc", "rejected", "approve", "alice")]
    assert [e[1] for e in entries(db, request_id=ids["c"])] == ["requested", "timed_out"]
    # time range: at or after since, before until
    rows, _ = audit_trail.entries(db, AuditQuery())
    middle = rows[3].at
    assert entries(db, since=middle) == everything[3:]
    assert entries(db, until=middle) == everything[:3]
    assert entries(db, since=rows[4].at, until=rows[6].at) == everything[4:6]
    # filters combine
    assert entries(db, node_name="gate", responder="alice", event="accepted") == [
        ("ta", "accepted", "approve", "alice")]
    assert entries(db, thread_id="nobody") == []


def test_answers_carry_the_digest_of_what_was_shown(db: ViewDatabase) -> None:
    log, _ = audit_log()
    Projector(db).apply(log.envelopes)
    rows, _ = audit_trail.entries(db, AuditQuery(thread_id="ta"))
    shown = json.dumps({"context": {"amount": 50000}, "options": [],
                        "prompt": "Please look at ta"}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(shown.encode()).hexdigest()
    assert [(r.event, r.digest) for r in rows] == [("requested", digest), ("rejected", digest),
                                                   ("accepted", digest)]
    rejected, accepted = rows[1], rows[2]
    assert (rejected.data_keys, rejected.code, rejected.node_name) == (
        ["choice"], "invalid_response", "gate")
    assert (accepted.data_keys, accepted.idempotency_key is not None) == (["reason"], True)
    other, _ = audit_trail.entries(db, AuditQuery(thread_id="tb", event="requested"))
    assert other[0].digest != digest
    unknown, _ = audit_trail.entries(db, AuditQuery(thread_id="tc", event="rejected"))
    assert (unknown[0].request_id, unknown[0].digest, unknown[0].node_name) == (None, None, None)


def test_audit_pages_follow_each_other(db: ViewDatabase) -> None:
    log, _ = audit_log()
    Projector(db).apply(log.envelopes)
    everything, last = audit_trail.entries(db, AuditQuery())
    assert last is None
    seen, cursor = [], None
    while True:
        page, cursor = audit_trail.entries(db, AuditQuery(limit=3, after=cursor))
        seen += page
        if cursor is None:
            break
    assert seen == everything
    # a page also ends early when it would grow too large for one NATS message
    page, cursor = audit_trail.entries(db, AuditQuery(), max_bytes=600)
    assert 1 <= len(page) < len(everything) and cursor is not None


# -- thread status -------------------------------------------------------------------------------


def test_thread_status_and_timeline(db: ViewDatabase) -> None:
    log, ids = audit_log()
    log.add("workflow", "ThreadStarted", "tx", graph_name="G", workflow_digest="e" * 64,
            inputs={}, started_by="ops")
    log.add("workflow", "NodeFailed", "tx", node="start", error="boom")
    log.add("workflow", "ThreadFailed", "tx", node="start", error="node 'start' failed: boom")
    Projector(db).apply(log.envelopes)
    ta = thread_status.thread(db, "ta")
    assert ta is not None and (ta.status, ta.current_node, ta.output) == (
        "completed", None, "approve")
    assert ta.completed_at is not None and ta.started_at < ta.completed_at
    tc = thread_status.thread(db, "tc")
    assert tc is not None and (tc.status, tc.current_node) == ("timed_out", "gate")
    assert tc.error is not None and "timed out" in tc.error
    tx = thread_status.thread(db, "tx")
    assert tx is not None and (tx.status, tx.error) == ("failed", "node 'start' failed: boom")
    completed, more = thread_status.threads(db, status="completed")
    assert [t.thread_id for t in completed] == ["tb", "ta"] and more is None
    first, cursor = thread_status.threads(db, status="completed", limit=1)
    assert [t.thread_id for t in first] == ["tb"] and cursor is not None
    second, end = thread_status.threads(db, status="completed", limit=1, after=cursor)
    assert [t.thread_id for t in second] == ["ta"] and end is None
    events, _ = thread_status.timeline(db, "ta")
    assert [e.event_type for e in events] == [
        "ThreadStarted", "NodeCompleted", "ThreadPaused", "InteractionRequested",
        "ResponseRejected", "ResponseAccepted", "ThreadResumed", "NodeCompleted",
        "ThreadCompleted"]
    assert events[2].payload["interactions"][0]["id"] == ids["a"]
    first_page, following = thread_status.timeline(db, "ta", limit=4)
    assert following == Cursor(at_ts=first_page[-1].at_ts, service=first_page[-1].service,
                               position=first_page[-1].position)
    rest, end = thread_status.timeline(db, "ta", following)
    assert first_page + rest == events and end is None


def test_a_batch_stays_paused_until_its_last_answer(db: ViewDatabase) -> None:
    log = Log()
    log.add("workflow", "ThreadStarted", "tb", graph_name="G", workflow_digest="d" * 64,
            inputs={}, started_by="ops")
    specs = [{"id": f"r{i}", "thread_id": "tb", "node_name": "review", "prompt": f"item {i}",
              "interaction_type": "approval", "batch_index": i, "batch_size": 2}
             for i in range(2)]
    log.add("workflow", "ThreadPaused", "tb", node="review", interactions=specs)
    for spec in specs:
        log.add("interaction", "InteractionRequested", "tb", aggregate=spec["id"],
                created_at=log.clock, **spec)
    log.add("interaction", "ResponseAccepted", "tb", aggregate="r0", request_id="r0",
            node_name="review", interaction_type="approval", action="approve", route="success",
            timestamp=log.clock, responder="ann", idempotency_key="k0")
    log.add("workflow", "ThreadResumed", "tb", node="review", interaction_id="r0",
            action="approve", responder="ann", waiting_on=1)
    Projector(db).apply(log.envelopes)
    view = thread_status.thread(db, "tb")
    assert view is not None and view.status == "paused"
    assert [p.id for p in view.pending] == ["r1"]
    assert [(p.batch_index, p.batch_size) for p in view.pending] == [(1, 2)]


def test_reminders_and_escalations_move_the_request(db: ViewDatabase) -> None:
    log = Log()
    rid = log.thread("te", "approval", "gate")
    log.add("interaction", "InteractionReminded", "te", aggregate=rid, request_id=rid,
            node_name="gate", step=0, reminder=1, of=1, assignees=("ann",), timestamp=log.clock,
            deadline=T0 + timedelta(hours=2))
    log.add("interaction", "InteractionEscalated", "te", aggregate=rid, request_id=rid,
            node_name="gate", step=1, from_assignees=("ann",), assignees=("lead",),
            timestamp=log.clock, deadline=T0 + timedelta(hours=5))
    Projector(db).apply(log.envelopes)
    [pending] = thread_status.pending(db, "te")
    assert pending.assignees == ["lead"] and pending.deadline == T0 + timedelta(hours=5)
    events = [e.event for e in audit_trail.entries(db, AuditQuery(thread_id="te"))[0]]
    assert events == ["requested", "reminded", "escalated"]


# -- exactly once, whatever arrives --------------------------------------------------------------


def test_redelivered_and_republished_events_change_nothing(db: ViewDatabase) -> None:
    log, _ = audit_log()
    projector = Projector(db)
    assert projector.apply(log.envelopes[:10]) == 10
    before = dump(db)
    assert projector.apply(log.envelopes[:10]) == 0
    assert dump(db) == before
    projector.apply(log.envelopes[10:])
    after = dump(db)
    projector.apply(list(reversed(log.envelopes)))  # a relay publishing everything again
    assert dump(db) == after


def test_unknown_event_types_reach_only_the_timeline(db: ViewDatabase) -> None:
    log, _ = audit_log()
    Projector(db).apply(log.envelopes)
    before = {t: rows for t, rows in dump(db).items() if t != "thread_timeline"}
    future = log.add("timeout", "DeadlineMovedToMars", "ta", raw={"request_id": "x", "n": 1})
    Projector(db).apply([future])
    assert {t: rows for t, rows in dump(db).items() if t != "thread_timeline"} == before
    assert thread_status.timeline(db, "ta")[0][-1].event_type == "DeadlineMovedToMars"


def test_an_event_a_view_cannot_fold_is_skipped_alone(db: ViewDatabase, backend: str,
                                                      tmp_path: Path) -> None:
    log, _ = audit_log()
    bad = log.add("interaction", "InteractionRequested", "tz", raw={"id": "broken"})
    log.add("workflow", "ThreadStarted", "tz", graph_name="G", workflow_digest="f" * 64,
            inputs={}, started_by="ops")
    Projector(db).apply(log.envelopes)  # one batch: the broken event must not sink it
    assert thread_status.thread(db, "tz") is not None
    assert db.one("SELECT COUNT(*) AS n FROM audit_trail WHERE position = ? AND service = ?",
                  (bad.position, bad.service))["n"] == 0  # type: ignore[index]
    replayed = open_db(backend, tmp_path, "replayed")
    projector = Projector(replayed)
    with replayed.transaction() as tx:
        projector.replay(tx, log.envelopes, list(VIEWS.values()))
    assert dump(replayed) == dump(db)
    replayed.close()


# -- the order of the services' events does not matter -------------------------------------------


def workload(draw: Any) -> Log:
    log = Log()
    for n in range(draw(st.integers(1, 4))):
        thread = f"w{n}"
        kind = draw(st.sampled_from(["approval", "choice", "edit"]))
        rid = log.thread(thread, kind, f"node-{kind}")
        for _ in range(draw(st.integers(0, 2))):
            log.reject(thread, rid, "nope", draw(st.sampled_from(["ann", "bob"])), ("x",))
        ending = draw(st.sampled_from(["answer", "timeout", "cancel", "open", "escalate"]))
        if ending == "answer":
            action = {"approval": draw(st.sampled_from(["approve", "reject"])),
                      "choice": "choose", "edit": "edit"}[kind]
            log.answer(thread, rid, kind, f"node-{kind}", action,
                       draw(st.sampled_from(["ann", "bob"])), {"k": 1})
        elif ending == "timeout":
            log.add("interaction", "InteractionTimedOut", thread, aggregate=rid,
                    request_id=rid, node_name=f"node-{kind}", policy="fail",
                    timestamp=log.clock)
            log.add("workflow", "ThreadTimedOut", thread, node=f"node-{kind}",
                    interaction_id=rid)
        elif ending == "cancel":
            log.add("workflow", "ThreadCancelled", thread, reason="r", requested_by="ops")
            log.add("interaction", "InteractionCancelled", thread, aggregate=rid,
                    request_id=rid, reason="thread cancelled")
        elif ending == "escalate":
            log.add("interaction", "InteractionEscalated", thread, aggregate=rid,
                    request_id=rid, node_name=f"node-{kind}", step=0, assignees=("lead",),
                    timestamp=log.clock, deadline=log.clock + timedelta(hours=1))
    return log


@st.composite
def arrivals(draw: Any) -> tuple[Log, list[list[EventEnvelope]]]:
    """A workload, and the batches the projector receives it in: the services' streams
    interleaved (each kept in order, and each event after the one that caused it), with
    some batches delivered twice."""
    log = workload(draw)
    by_service: dict[str, list[EventEnvelope]] = {}
    for env in log.envelopes:
        by_service.setdefault(env.service, []).append(env)
    order: list[EventEnvelope] = []
    cursors = dict.fromkeys(by_service, 0)
    while any(cursors[s] < len(by_service[s]) for s in by_service):
        ready = [s for s in by_service if cursors[s] < len(by_service[s])]
        service = draw(st.sampled_from(sorted(ready)))
        order.append(by_service[service][cursors[service]])
        cursors[service] += 1
    batches: list[list[EventEnvelope]] = []
    start = 0
    while start < len(order):
        size = draw(st.integers(1, 6))
        batches.append(order[start:start + size])
        if draw(st.booleans()):
            batches.append(order[start:start + size])  # redelivered
        start += size
    return log, batches


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals())
def test_any_arrival_order_gives_the_replayed_views(tmp_path: Path,
                                                    case: tuple[Log, list[list[EventEnvelope]]]
                                                    ) -> None:
    log, batches = case
    live = ViewDatabase.sqlite(tmp_path / f"live-{uuid.uuid4().hex[:8]}.sqlite")
    replayed = ViewDatabase.sqlite(tmp_path / f"replayed-{uuid.uuid4().hex[:8]}.sqlite")
    try:
        projector = Projector(live)
        for batch in batches:
            projector.apply(batch)
        other = Projector(replayed)
        with replayed.transaction() as tx:
            other.replay(tx, log.envelopes, list(VIEWS.values()))
        assert dump(live) == dump(replayed)
    finally:
        live.close()
        replayed.close()


def test_a_batch_that_must_not_wait_gives_way_to_another_writer(tmp_path: Path) -> None:
    """The service applies live batches on its event loop without waiting (``wait=False``):
    while another process writes the SQLite views (an offline rebuild), such a batch fails at
    once with an error worth a retry, and applies in full once that writer is done."""
    db = open_db("sqlite", tmp_path)
    projector = Projector(db)
    log = Log()
    log.thread("busy-1", "approval", "gate")
    other = sqlite3.connect(str(db.dialect.path), isolation_level=None)  # type: ignore[attr-defined]
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError) as refused:
            projector.apply(log.envelopes, wait=False)
        assert db.is_transient(refused.value)
        assert time.monotonic() - started < 5  # at once, not after the 30 s busy timeout
        other.execute("ROLLBACK")
        assert projector.apply(log.envelopes) == len(log.envelopes)
        assert db.one("SELECT status FROM thread_status WHERE thread_id = ?",
                      ("busy-1",)) == {"status": "paused"}
    finally:
        other.close()
        db.close()
