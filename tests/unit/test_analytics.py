"""Each analytics metric against values computed by hand, on events shaped exactly as the
services publish them (payloads built through the wire contracts), folded into a real views
database (SQLite, and PostgreSQL when HITLFLOW_TEST_POSTGRES_DSN is set)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts.events import PAYLOADS, EventEnvelope
from contracts.queries import AnalyticsQuery, AnalyticsReply
from projections import analytics
from projections.db import ViewDatabase
from projections.projector import Projector
from tests.conftest import POSTGRES_DSN

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
UNTIL = T0 + timedelta(seconds=1000)
DAY = 86400.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ViewDatabase]:
    if request.param == "postgres":
        if not POSTGRES_DSN:
            pytest.skip("PostgreSQL backend: set HITLFLOW_TEST_POSTGRES_DSN to run it")
        database = ViewDatabase.postgres(POSTGRES_DSN, f"v_{uuid.uuid4().hex[:12]}")
    else:
        database = ViewDatabase.sqlite(tmp_path / "views.sqlite")
    yield database
    database.close()


class Log:
    """Envelopes as the interaction service's relay publishes them, at chosen times."""

    def __init__(self) -> None:
        self.position = 0
        self.envelopes: list[EventEnvelope] = []

    def add(self, event_type: str, thread: str, at: datetime, **fields: Any) -> None:
        self.position += 1
        payload = PAYLOADS[event_type].model_validate(fields).model_dump(
            mode="json", exclude={"schema_version"})
        self.envelopes.append(EventEnvelope(
            event_type=event_type, service="interaction", thread_id=thread,
            event_id=str(uuid.uuid4()), aggregate_id=str(uuid.uuid4()), aggregate_version=1,
            position=self.position, occurred_at=at, payload=payload))

    def request(self, rid: str, kind: str, node: str, created: float) -> None:
        self.add("InteractionRequested", f"t-{rid}", T0 + timedelta(seconds=created), id=rid,
                 thread_id=f"t-{rid}", node_name=node, interaction_type=kind, prompt="?",
                 created_at=T0 + timedelta(seconds=created))

    def answer(self, rid: str, kind: str, node: str, action: str, at: float, *,
               by_timeout: bool = False, responder: str = "ann") -> None:
        self.add("ResponseAccepted", f"t-{rid}", T0 + timedelta(seconds=at), request_id=rid,
                 node_name=node, interaction_type=kind, action=action, route="success",
                 timestamp=T0 + timedelta(seconds=at), responder=responder,
                 idempotency_key=f"k-{rid}-{at}", by_timeout=by_timeout)

    def timed_out(self, rid: str, node: str, policy: str, at: float) -> None:
        self.add("InteractionTimedOut", f"t-{rid}", T0 + timedelta(seconds=at), request_id=rid,
                 node_name=node, policy=policy, timestamp=T0 + timedelta(seconds=at))


def scenario() -> Log:
    """r1..r9 (see each line); the window is [T0, T0 + 1000 s)."""
    log = Log()
    log.request("r8", "approval", "gate", -2 * DAY)  # before the window, still open
    log.request("r1", "approval", "gate", 0)
    log.add("ResponseRejected", "t-r1", T0 + timedelta(seconds=3), request_id="r1",
            action="maybe", responder="bob", idempotency_key="x1", code="invalid_response",
            reason="no", timestamp=T0 + timedelta(seconds=3))
    log.add("ResponseRejected", "t-r1", T0 + timedelta(seconds=4), request_id="r1",
            action="ok", responder="bob", idempotency_key="x2", code="invalid_response",
            reason="no", timestamp=T0 + timedelta(seconds=4))
    log.answer("r1", "approval", "gate", "approve", 10)  # 10 s
    log.request("r2", "approval", "gate", 100)
    log.answer("r2", "approval", "gate", "reject", 130)  # 30 s
    log.request("r3", "approval", "gate", 200)
    log.timed_out("r3", "gate", "fail", 260)  # timed out (the thread failed)
    log.request("r4", "choice", "pick", 300)
    log.answer("r4", "choice", "pick", "choose", 350)  # 50 s
    log.request("r5", "edit", "review", 400)  # open at the end of the window
    log.add("InteractionReminded", "t-r5", T0 + timedelta(seconds=450), request_id="r5",
            node_name="review", step=0, reminder=1, of=1, timestamp=T0 + timedelta(seconds=450),
            deadline=T0 + timedelta(seconds=900))
    log.add("InteractionEscalated", "t-r5", T0 + timedelta(seconds=900), request_id="r5",
            node_name="review", step=1, assignees=("lead",),
            timestamp=T0 + timedelta(seconds=900), deadline=T0 + timedelta(seconds=5000))
    log.request("r6", "approval", "gate", 500)
    log.timed_out("r6", "gate", "default", 560)  # a default answer in the person's place
    log.answer("r6", "approval", "gate", "reject", 560, by_timeout=True, responder="timeout")
    log.request("r7", "text_input", "ask", 600)
    log.add("InteractionCancelled", "t-r7", T0 + timedelta(seconds=700), request_id="r7",
            reason="thread cancelled")
    log.request("r9", "approval", "gate", 800)
    log.answer("r9", "approval", "gate", "approve", 1100)  # answered after the window ends
    return log


def report(db: ViewDatabase, **query: Any) -> AnalyticsReply:
    Projector(db).apply(scenario().envelopes)
    return analytics.report(db, AnalyticsQuery(**query), now=UNTIL + timedelta(days=365))


def test_the_guides_metrics(db: ViewDatabase) -> None:
    result = report(db, since=T0, until=UNTIL)
    assert result.total_interactions == 8  # r1-r7 and r9; r8 is older
    assert result.by_type == {"approval": 5, "choice": 1, "edit": 1, "text_input": 1}
    assert result.avg_response_time == pytest.approx(30.0)  # (10 + 30 + 50) / 3
    assert result.timeout_rate == pytest.approx(2 / 8)  # r3 failed, r6 took the default
    assert result.approval_rate == pytest.approx(1 / 2)  # r1 approve, r2 reject (people only)


def test_counts_percentiles_and_backlog(db: ViewDatabase) -> None:
    o = report(db, since=T0, until=UNTIL).overall
    assert (o.total, o.answered, o.timed_out, o.cancelled) == (8, 3, 2, 1)
    assert (o.rejected_attempts, o.reminders, o.escalations) == (2, 1, 1)
    # nearest rank of [10, 30, 50]: p50 = rank 2, p95 = rank 3
    assert (o.p50_response_time_s, o.p95_response_time_s) == (pytest.approx(30.0),
                                                               pytest.approx(50.0))
    # open at UNTIL: r5 (created +400), r8 (created two days before T0), r9 (answered later)
    assert o.pending == 3
    assert o.oldest_pending_age_s == pytest.approx(1000 + 2 * DAY)


def test_per_type_and_per_node(db: ViewDatabase) -> None:
    result = report(db, since=T0, until=UNTIL)
    approval = result.per_type["approval"]
    assert (approval.total, approval.answered, approval.timed_out) == (5, 2, 2)
    assert approval.avg_response_time_s == pytest.approx(20.0)
    assert (approval.p50_response_time_s, approval.p95_response_time_s) == (
        pytest.approx(10.0), pytest.approx(30.0))  # ranks 1 and 2 of [10, 30]
    assert approval.timeout_rate == pytest.approx(2 / 5)
    assert approval.approval_rate == pytest.approx(0.5)
    assert (approval.pending, approval.oldest_pending_age_s) == (2, pytest.approx(1000 + 2 * DAY))
    choice = result.per_type["choice"]
    assert (choice.total, choice.answered, choice.approval_rate) == (1, 1, None)
    assert choice.p50_response_time_s == choice.p95_response_time_s == pytest.approx(50.0)
    edit = result.per_type["edit"]
    assert (edit.pending, edit.oldest_pending_age_s) == (1, pytest.approx(600.0))
    assert (edit.reminders, edit.escalations, edit.avg_response_time_s) == (1, 1, None)
    assert result.per_type["text_input"].cancelled == 1
    assert result.per_node["gate"] == approval
    assert set(result.per_node) == {"gate", "pick", "review", "ask"}


def test_bottlenecks_are_nodes_over_the_threshold(db: ViewDatabase) -> None:
    four = report(db, since=T0, until=UNTIL, bottleneck_threshold=4)
    assert [(b.node, b.interaction_count, b.type) for b in four.bottlenecks] == [
        ("gate", 5, "high_interaction_volume")]
    five = analytics.report(db, AnalyticsQuery(since=T0, until=UNTIL, bottleneck_threshold=5),
                            now=UNTIL)
    assert five.bottlenecks == []  # more than the threshold, as the guide counts
    everyone = analytics.report(db, AnalyticsQuery(since=T0, until=UNTIL,
                                                   bottleneck_threshold=0), now=UNTIL)
    assert [b.node for b in everyone.bottlenecks] == ["gate", "ask", "pick", "review"]


def test_the_window_moves_with_since_until_and_days(db: ViewDatabase) -> None:
    later = report(db, since=T0 + timedelta(seconds=250), until=UNTIL)
    assert later.total_interactions == 5  # r4, r5, r6, r7, r9
    assert later.overall.answered == 1 and later.avg_response_time == pytest.approx(50.0)
    # a window ending before r2 was answered: r1 answered, r2 still open then
    early = analytics.report(db, AnalyticsQuery(since=T0, until=T0 + timedelta(seconds=120)),
                             now=UNTIL)
    assert early.total_interactions == 2 and early.overall.answered == 1
    assert early.overall.pending == 2  # r2, and r8 from before
    assert early.overall.oldest_pending_age_s == pytest.approx(120 + 2 * DAY)
    # --days counts back from until; the default until is now
    three_days = analytics.report(db, AnalyticsQuery(days=3, until=UNTIL), now=UNTIL)
    assert three_days.total_interactions == 9
    assert three_days.since == UNTIL - timedelta(days=3)
    default = analytics.report(db, AnalyticsQuery(), now=UNTIL)
    assert (default.since, default.until) == (UNTIL - timedelta(days=30), UNTIL)
    assert default.total_interactions == 9


def test_an_empty_window_has_no_rates(db: ViewDatabase) -> None:
    empty = report(db, since=T0 - timedelta(days=30), until=T0 - timedelta(days=29))
    assert empty.total_interactions == 0 and empty.by_type == {}
    assert (empty.avg_response_time, empty.timeout_rate, empty.approval_rate) == (None,) * 3
    assert empty.per_type == {} and empty.bottlenecks == []


def test_a_window_needs_since_or_days_not_both() -> None:
    with pytest.raises(ValueError, match="either since or days"):
        AnalyticsQuery(since=T0, days=2)
    with pytest.raises(ValueError, match="must be before until"):
        AnalyticsQuery(since=UNTIL, until=T0)
