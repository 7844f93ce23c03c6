"""The web pages' rules, without a browser: the inbox's order and filters, forms as answers,
the edit diff, the conversation's transcript, the dashboard's charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.queries import AnalyticsReply, Metrics, PendingInteraction, TimelineEvent
from hitlflow.web import views

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def request(kind: str = "approval", *, minutes_ago: float = 1, deadline_in: float | None = None,
            thread: str = "t", schema: dict[str, Any] | None = None, **extra: Any,
            ) -> PendingInteraction:
    return PendingInteraction(
        id=f"{thread}-r", thread_id=thread, node_name="gate", interaction_type=kind,
        prompt="?", context={}, options=extra.pop("options", []),
        assignees=extra.pop("assignees", []),
        timeout_seconds=None, created_at=NOW - timedelta(minutes=minutes_ago),
        deadline=None if deadline_in is None else NOW + timedelta(minutes=deadline_in),
        response_schema=schema, **extra)


def test_the_most_urgent_come_first_then_the_newest() -> None:
    items = [request(thread="old", minutes_ago=50), request(thread="soon", deadline_in=5),
             request(thread="new", minutes_ago=0.5), request(thread="late", deadline_in=-2),
             request(thread="later", deadline_in=60)]
    rows = views.inbox_rows(items, {}, views.InboxFilter(), NOW)
    assert [r.request.thread_id for r in rows] == ["late", "soon", "later", "new", "old"]
    assert (rows[0].left, rows[0].overdue) == ("overdue by 2m 00s", True)
    assert (rows[1].left, rows[1].overdue) == ("5m 00s left", False)
    assert rows[4].waiting == "50m 00s"
    newest = views.inbox_rows(items, {}, views.InboxFilter(sort="newest"), NOW)
    assert newest[0].request.thread_id == "new"


def test_filters_by_type_graph_and_assignee() -> None:
    items = [request("approval", thread="a"), request("choice", thread="b", options=["x"]),
             request("approval", thread="c", assignees=["alice"]),
             request("approval", thread="d", claimed_by="alice")]
    graphs = {"a": "Pay", "b": "Pay", "c": "Hire", "d": "Hire"}
    only = views.InboxFilter.of({"type": "approval", "graph": "Hire"})
    assert [r.request.thread_id for r in views.inbox_rows(items, graphs, only, NOW)] == ["c",
                                                                                          "d"]
    mine = views.InboxFilter.of({"assignee": "alice"})
    assert {r.request.thread_id for r in views.inbox_rows(items, graphs, mine, NOW)} == {"c",
                                                                                         "d"}
    # unknown values are dropped, not errors
    assert views.InboxFilter.of({"type": "nonsense", "sort": "sideways"}) == views.InboxFilter()


def test_each_types_form_becomes_its_answer() -> None:
    assert views.answer_from_form(request("approval"), {"action": "reject",
                                                        "reason": " too dear "}) == (
        "reject", {"reason": "too dear"})
    assert views.answer_from_form(request("approval"), {"action": "approve", "reason": ""}) == (
        "approve", {})
    assert views.answer_from_form(request("edit"), {"action": "edit",
                                                    "edited": "a\r\nb"}) == (
        "edit", {"edited": "a\nb"})  # a browser's CRLF is the text's LF
    assert views.answer_from_form(request("choice", options=["x", "y"]),
                                  {"action": "choose", "choice": "2", "justification": "y!"}) == (
        "choose", {"choice": 2, "justification": "y!"})
    assert views.answer_from_form(request("text_input"), {"action": "respond",
                                                          "text": "words"}) == (
        "respond", {"text": "words"})
    assert views.answer_from_form(request("conversation"), {"action": "end"}) == ("end", {})
    with pytest.raises(views.FormError, match="a approval request takes approve, reject"):
        views.answer_from_form(request("approval"), {"action": "choose"})
    with pytest.raises(views.FormError, match="choose one of the options"):
        views.answer_from_form(request("choice", options=["x"]), {"action": "choose"})


SCHEMA = {"type": "object", "required": ["response", "amount"],
          "properties": {"amount": {"type": "number", "minimum": 0},
                         "seats": {"type": "integer", "title": "Seats"},
                         "currency": {"enum": ["EUR", "USD", 3]},
                         "recurring": {"type": "boolean"},
                         "tags": {"type": "array"}}}


def test_a_response_schema_becomes_a_form_and_back() -> None:
    fields = views.schema_fields(SCHEMA)
    assert [(f.name, f.kind, f.required) for f in fields] == [
        ("response", "textarea", True), ("amount", "number", True), ("seats", "integer", False),
        ("currency", "select", False), ("recurring", "checkbox", False),
        ("tags", "json", False)]
    assert fields[3].options == ("EUR", "USD", "3")
    item = request("text_input", schema=SCHEMA)
    _, data = views.answer_from_form(item, {
        "action": "respond", "field.response": "two people", "field.amount": "1200.50",
        "field.seats": "", "field.currency": "3", "field.recurring": "on",
        "field.tags": '["a", "b"]'})
    assert data == {"response": "two people", "amount": 1200.5, "currency": 3,
                    "recurring": True, "tags": ["a", "b"]}
    with pytest.raises(views.FormError, match="Amount: expected a number, got 'lots'"):
        views.answer_from_form(item, {"action": "respond", "field.amount": "lots"})
    with pytest.raises(views.FormError, match="Seats: expected a whole number"):
        views.answer_from_form(item, {"action": "respond", "field.seats": "1.5"})
    with pytest.raises(views.FormError, match="Tags: expected JSON"):
        views.answer_from_form(item, {"action": "respond", "field.tags": "[a"})
    with pytest.raises(views.FormError, match="expected a finite number"):
        views.answer_from_form(item, {"action": "respond", "field.amount": "nan"})
    assert views.schema_fields({"type": "object"}) == []  # no properties: plain text


def test_an_answer_over_its_limit_is_refused_before_it_is_sent() -> None:
    with pytest.raises(views.FormError, match="the most an answer may carry is 262,144 bytes"):
        views.answer_from_form(request("text_input"), {"action": "respond",
                                                       "text": "x" * 300_000})


@given(st.text(max_size=60), st.text(max_size=60))
def test_the_diff_holds_both_texts(original: str, edited: str) -> None:
    lines = views.diff_lines(original, edited)
    assert [ln.text for ln in lines if ln.kind != "added"] == original.splitlines()
    assert [ln.text for ln in lines if ln.kind != "removed"] == edited.splitlines()


def event(kind: str, **payload: Any) -> TimelineEvent:
    return TimelineEvent(at=NOW, at_ts=NOW.timestamp(), service="workflow", position=1,
                         event_type=kind, aggregate_version=1, payload=payload)


def test_the_transcript_is_the_last_completions_history() -> None:
    first = {"prompt": "Talk?", "action": "respond", "message": "hi", "responder": "ana"}
    second = {"prompt": "More?", "action": "respond", "message": "yes", "responder": "bo"}
    events = [event("NodeCompleted", node="talk", output={"message": "hi", "history": [first]}),
              event("NodeCompleted", node="other", output={"history": ["x"]}),
              event("NodeCompleted", node="talk",
                    output={"message": "yes", "history": [first, second]})]
    assert views.transcript(events, "talk") == [first, second]
    assert views.transcript(events[:1], "nowhere") == []


def test_the_dashboards_charts_come_from_the_analytics_reply() -> None:
    reply = AnalyticsReply(
        overall=Metrics(total=5), per_type={"approval": Metrics(total=4, timeout_rate=0.25),
                                            "choice": Metrics(total=1)},
        per_node={"gate": Metrics(total=4, pending=2, p50_response_time_s=3.0),
                  "pick": Metrics(total=1)})
    board = views.dashboard(reply)
    by_type = board.charts[0]
    assert [(b.label, b.value, b.width, b.text) for b in by_type.bars] == [
        ("approval", 4, 100.0, "4"), ("choice", 1, 25.0, "1")]
    p50 = board.charts[2]
    assert [(b.label, b.text) for b in p50.bars] == [("gate", "3.0s")]  # pick: no answer yet
    timeouts = board.charts[6]
    assert [(b.label, b.text) for b in timeouts.bars] == [("approval", "25.0%")]
    assert [name for name, _ in board.by_node] == ["gate", "pick"]
