"""Property: whatever people and timers do — starts of every interaction type, valid answers of
every kind, refused answers, cancellations, deadlines that fail a thread or answer in a
person's place — the live views equal views freshly rebuilt from the event stores, and equal
a model computed here, independently, from the stored events.

Drives the real stack (nats-server, every service, SQLite or PostgreSQL) on a fake clock, so
deadlines pass when the test says; ``hitlflow timeouts check`` fires them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts.events import EventEnvelope
from contracts.queries import AnalyticsQuery
from contracts.workflow import NodeSpec, WorkflowSpec
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from projections import analytics
from projections import projector as projector_module
from projections import rebuild as rebuild_module
from projections import rows as rows_module
from projections.db import ViewDatabase
from projections.projector import Projector
from projections.rebuild import merged, open_sources, rebuild_from_stores
from services.common.clock import FakeClock
from tests.conftest import POSTGRES_DSN, ROOT
from tests.helpers import cli_json
from tests.service.test_projections import dump, fresh_rebuild, gate_flow, quiesce, views_db

TYPES = str(ROOT / "tests" / "workflows" / "types.csv")
OPTIONS = ["Production (us-east-1)", "Staging (us-west-2)", "Development (local)"]
GRAPHS = ("Approve", "Edit", "Choice", "Text", "Talk", "GateFails", "PickDefault")
VALID = {
    "approval": [("approve", None), ("reject", {"reason": "no budget"})],
    "edit": [("edit", {"edited": "better", "changes": ["tone"]}), ("approve", None),
             ("reject", None)],
    "choice": [("choose", {"choice": 2}), ("choose", {"choice": "Development (local)"})],
    "text_input": [("respond", {"text": "more tests"}),
                   # an integer past 64 bits: orjson would read it back as a float
                   ("respond", {"response": "x", "priority": "high", "estimate": 2**70})],
    "conversation": [("respond", {"message": "go on"}), ("end", None)],
}
ENDINGS = {"ThreadCompleted": "completed", "ThreadFailed": "failed",
           "ThreadTimedOut": "timed_out", "ThreadCancelled": "cancelled"}
ids = itertools.count()
#: Always tried: both timeout policies fire, beside a refusal, an answer and a cancellation.
TIMEOUTS = [("start", "GateFails"), ("start", "PickDefault"), ("start", "Approve"),
            ("answer", 2, False, 1), ("wait", 61), ("answer", 0, True, 0), ("cancel", 2),
            ("start", "Talk"), ("answer", 3, True, 0)]


def pick_default() -> WorkflowSpec:
    return WorkflowSpec(graph_name="PickDefault", nodes=(
        NodeSpec(name="start", agent_type="input", next_on_success="pick",
                 input_fields=("app",), output_field="app"),
        NodeSpec(name="pick", agent_type="choice_interaction", next_on_success="deploy",
                 prompt="Where does {app} go?", input_fields=("app",), output_field="target",
                 context={"interaction_type": "choice", "options": OPTIONS,
                          "timeout_seconds": 60, "on_timeout": {
                              "policy": "default", "action": "choose", "data": {"choice": 3}}}),
        NodeSpec(name="deploy", agent_type="echo", input_fields=("target",),
                 output_field="result"),
    ))


# -- the workload --------------------------------------------------------------------------------

operation = st.one_of(
    st.tuples(st.just("start"), st.sampled_from(GRAPHS)),
    st.tuples(st.just("answer"), st.integers(0, 7), st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("wait"), st.sampled_from([30, 61])),
)


def run(hitl: HitlTestStack, clock: FakeClock, ops: list[tuple[Any, ...]]) -> None:
    threads: list[str] = []
    for op in ops:
        if op[0] == "start":
            thread = f"pp-{next(ids)}"
            graph = op[1]
            target: Any = (gate_flow({"timeout_seconds": 60}) if graph == "GateFails"
                           else pick_default() if graph == "PickDefault"
                           else f"{TYPES}::{graph}")
            state = {"request": thread, "draft": "text", "app": "pay", "feature": "f",
                     "topic": "t"}
            hitl.start(target, state, thread_id=thread)
            threads.append(thread)
        elif op[0] == "answer" and threads:
            thread = threads[op[1] % len(threads)]
            pending = hitl.pending(thread)
            if op[2] and pending:
                choices = VALID[pending[0].interaction_type]
                action, data = choices[op[3] % len(choices)]
            else:  # refused: an action no type has (or no request open)
                action, data = "shrug", {"why": "because"}
            hitl.resume(thread, action, data, on_behalf_of=("ann", "bob", "cy")[op[3]])
        elif op[0] == "cancel" and threads:
            hitl.cancel(threads[op[1] % len(threads)], "not needed")
        elif op[0] == "erase" and threads:  # refused unless the thread has ended
            cli_json(hitl.nats_url, "erase", "--thread", threads[op[1] % len(threads)])
        elif op[0] == "wait":
            clock.advance(op[1])
            code, _, stderr = cli_json(hitl.nats_url, "timeouts", "check")
            assert code == 0, stderr


# -- the model, straight from the stored events --------------------------------------------------


def stored_events(hitl: HitlTestStack) -> list[EventEnvelope]:
    sources = open_sources(hitl.settings, hitl.data_dir / "stores", parallel=False)
    try:
        return list(merged(sources))
    finally:
        for source in sources:
            source.close()


def digest(request: dict[str, Any]) -> str:
    shown = {"prompt": request["prompt"], "context": request["context"],
             "options": request["options"]}
    text = json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def model_threads(events: list[EventEnvelope]) -> dict[str, tuple[Any, ...]]:
    threads: dict[str, dict[str, Any]] = {}
    for env in events:
        p, t = env.payload, threads.get(env.thread_id)
        if env.event_type == "ThreadStarted":
            threads[env.thread_id] = {"graph": p["graph_name"], "status": "running",
                                      "node": None, "ended": False}
        elif t is None:
            continue
        elif env.event_type in ("NodeCompleted", "NodeFailed"):
            t["node"] = p.get("next_node")
        elif env.event_type == "ThreadPaused":
            t["status"], t["node"] = "paused", p["node"]
        elif env.event_type == "ThreadResumed":
            t["status"] = "paused" if p.get("waiting_on") else "running"
        elif env.event_type in ENDINGS:
            t["status"], t["ended"] = ENDINGS[env.event_type], True
            if env.event_type == "ThreadCompleted":
                t["node"] = None
            elif p.get("node"):
                t["node"] = p["node"]
    return {k: (v["graph"], v["status"], v["node"], v["ended"]) for k, v in threads.items()}


def model_requests(events: list[EventEnvelope]) -> dict[str, dict[str, Any]]:
    requests: dict[str, dict[str, Any]] = {}
    for env in events:
        p = env.payload
        if env.event_type == "InteractionRequested":
            requests[p["id"]] = {**p, "status": "pending", "closed": None, "answered": None,
                                 "by_timeout": False, "timed_out": False, "action": None,
                                 "responder": None, "rejected": 0}
            continue
        r = requests.get(p.get("request_id") or "")
        if r is None:
            continue
        if env.event_type == "ResponseAccepted":
            r.update(status="answered", action=p["action"], responder=p["responder"],
                     answered=p["timestamp"], by_timeout=p["by_timeout"])
            r["timed_out"] = r["timed_out"] or p["by_timeout"]
            r["closed"] = r["closed"] or p["timestamp"]
        elif env.event_type == "InteractionTimedOut":
            r["timed_out"] = True
            r["closed"] = r["closed"] or p["timestamp"]
            if r["status"] == "pending":
                r["status"] = "timed_out"
        elif env.event_type == "InteractionCancelled" and r["closed"] is None:
            r["status"], r["closed"] = "cancelled", env.occurred_at
        elif env.event_type == "ResponseRejected":
            r["rejected"] += 1
    return requests


def model_audit(events: list[EventEnvelope]) -> set[tuple[Any, ...]]:
    kinds = {"InteractionRequested": "requested", "ResponseAccepted": "accepted",
             "ResponseRejected": "rejected", "InteractionTimedOut": "timed_out",
             "InteractionCancelled": "cancelled", "InteractionReminded": "reminded",
             "InteractionEscalated": "escalated", "NodeDecided": "decided",
             "FallbackTaken": "fallback"}
    shown: dict[str, dict[str, Any]] = {}
    rows = set()
    for env in events:
        if env.event_type not in kinds:
            continue
        p = env.payload
        rid = p["id"] if env.event_type == "InteractionRequested" else p.get("request_id")
        if env.event_type == "InteractionRequested":
            shown[rid] = p
        request = shown.get(rid or "")
        keys = sorted(p["data"]) if isinstance(p.get("data"), dict) else list(
            p.get("data_keys") or [])
        rows.add((env.service, env.position, kinds[env.event_type], rid,
                  p.get("node_name") or p.get("node") or (request or {}).get("node_name"),
                  p.get("action"), p.get("responder"), tuple(keys),
                  digest(request) if request else None,
                  env.event_type == "InteractionTimedOut" or bool(p.get("by_timeout"))))
    return rows


def ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# -- the property --------------------------------------------------------------------------------


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=8))
@example(ops=TIMEOUTS)
def test_live_views_equal_rebuilt_views_and_the_model(faked: HitlTestStack, clock: FakeClock,
                                                      settings: Settings,
                                                      ops: list[tuple[Any, ...]]) -> None:
    run(faked, clock, ops)
    quiesce(faked)
    db = views_db(faked)
    live = dump(db)

    # 1. a rebuild from the stores, into a new database and in place, gives the same rows
    assert fresh_rebuild(faked, settings) == live
    code, reply, stderr = cli_json(faked.nats_url, "projections", "rebuild")
    assert code == 0 and reply["ok"], stderr
    assert dump(db) == live

    # 2. the views say what the events say
    events = stored_events(faked)
    if ops == TIMEOUTS:
        assert {"InteractionTimedOut", "ThreadTimedOut", "ResponseRejected",
                "InteractionCancelled"} <= {e.event_type for e in events}
        assert any(e.payload.get("by_timeout") for e in events)
    threads = {r["thread_id"]: (r["graph_name"], r["status"], r["current_node"],
                                r["completed_at"] is not None)
               for r in db.query("SELECT * FROM thread_status")}
    assert threads == model_threads(events)
    requests = model_requests(events)
    assert {r["id"]: (r["status"], r["action"], r["responder"])
            for r in db.query("SELECT * FROM thread_requests")} == {
        rid: (r["status"], r["action"], r["responder"]) for rid, r in requests.items()}
    assert {(r["service"], r["position"], r["event"], r["request_id"], r["node_name"],
             r["action"], r["responder"], tuple(json.loads(r["data_keys"])), r["digest"],
             bool(r["by_timeout"])) for r in db.query("SELECT * FROM audit_trail")} == (
        model_audit(events))
    timeline = [(r["service"], r["position"]) for r in db.query(
        "SELECT service, position FROM thread_timeline ORDER BY at_ts, service, position")]
    assert timeline == [(e.service, e.position) for e in sorted(
        events, key=lambda e: (e.occurred_at.timestamp(), e.service, e.position))]

    # 3. analytics over everything, as it stands
    now = clock.now() + timedelta(days=1)
    report = analytics.report(db, AnalyticsQuery(days=30), now=now)
    rows = list(requests.values())
    by_person = [r for r in rows if r["answered"] and not r["by_timeout"]]
    times = sorted((datetime.fromisoformat(r["answered"]) -
                    datetime.fromisoformat(r["created_at"])).total_seconds() for r in by_person)
    decided = [r for r in by_person if r["interaction_type"] == "approval"]
    o = report.overall
    assert report.total_interactions == len(rows)
    assert report.by_type == {k: sum(r["interaction_type"] == k for r in rows)
                              for k in {r["interaction_type"] for r in rows}}
    assert (o.answered, o.timed_out, o.pending) == (
        len(by_person), sum(r["timed_out"] for r in rows),
        sum(r["closed"] is None for r in rows))
    assert o.cancelled == sum(r["status"] == "cancelled" for r in rows)
    assert o.rejected_attempts == sum(r["rejected"] for r in rows)
    assert report.timeout_rate == ratio(o.timed_out, len(rows))
    assert report.approval_rate == ratio(sum(r["action"] == "approve" for r in decided),
                                         len(decided))
    if times:
        assert o.avg_response_time_s == pytest.approx(sum(times) / len(times))
        assert o.p95_response_time_s == pytest.approx(
            times[max(1, math.ceil(0.95 * len(times))) - 1])
    else:
        assert o.avg_response_time_s is None and o.p50_response_time_s is None


# -- the bulk rebuild against the live fold -----------------------------------------------------

ERASE = [("start", "Approve"), ("answer", 0, True, 0), ("erase", 0), ("start", "Text"),
         ("answer", 1, False, 2), ("answer", 1, True, 1), ("start", "Talk"), ("cancel", 2)]


def views_and_chains(db: ViewDatabase) -> dict[str, list[str]]:
    """Every view row and every chain link (digests included)."""
    return {**dump(db), "audit_chain": sorted(
        json.dumps(row, sort_keys=True, default=str)
        for row in db.query("SELECT * FROM audit_chain"))}


@contextmanager
def new_views(hitl: HitlTestStack, settings: Settings, name: str) -> Iterator[ViewDatabase]:
    """A brand-new views database beside the stack's (a schema of its own on PostgreSQL)."""
    if settings.persistence != "postgres":
        db = ViewDatabase.sqlite(hitl.data_dir / f"{name}-{uuid.uuid4().hex[:6]}.sqlite")
        try:
            yield db
        finally:
            db.close()
        return
    assert POSTGRES_DSN
    schema = f"{settings.postgres_schema}_{name}"
    db = ViewDatabase.postgres(POSTGRES_DSN, schema)
    try:
        yield db
    finally:
        db.close()
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(operation, st.tuples(st.just("erase"), st.integers(0, 7))),
                    min_size=1, max_size=8))
@example(ops=TIMEOUTS)
@example(ops=ERASE)
@example(ops=[("start", "Text"), ("answer", 0, True, 1)])
def test_the_bulk_rebuild_equals_the_live_fold_of_the_same_events(
        faked: HitlTestStack, clock: FakeClock, settings: Settings,
        monkeypatch: pytest.MonkeyPatch, ops: list[tuple[Any, ...]]) -> None:
    """The rebuild folds chunks of events in memory and writes each changed row once; the live
    projector folds batches from the stream. From the same stored events (encrypted at rest;
    refused answers, timeouts, cancellations, erased threads among them) both build the same
    rows and the same chain links, also when the rebuild takes many chunks, forgets rows
    between them and reads the stores in worker processes."""
    run(faked, clock, ops)
    quiesce(faked)
    events = stored_events(faked)
    assert events
    with new_views(faked, settings, "live") as live, \
            new_views(faked, settings, "bulk") as bulk:
        projector = Projector(live)
        for start in range(0, len(events), 5):  # as the stream delivers them, a batch each
            projector.apply(events[start:start + 5])
        monkeypatch.setattr(projector_module, "REPLAY_CHUNK", 4)  # many chunks
        monkeypatch.setattr(rows_module, "KEEP", 2)  # rows forgotten, read back
        monkeypatch.setattr(rebuild_module, "PAGE", 3)  # several workers a store, by turns
        result = rebuild_from_stores(bulk, Projector(bulk), settings,
                                     data_dir=faked.data_dir / "stores", parallel=True)
        assert result.events == len(events)
        assert views_and_chains(bulk) == views_and_chains(live)
