"""Conditions: the safe expression language, and what a conditional node does with it."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.workflow.agents import AgentRegistry
from services.workflow.conditions import ConditionError, parse
from services.workflow.definition import load_workflow
from services.workflow.domain import Graph, Thread

RISK = 'amount > 10000 or user_tier == "basic"'


@pytest.mark.parametrize(("state", "expected"), [
    ({"amount": 50_000, "user_tier": "gold"}, True),
    ({"amount": 500, "user_tier": "basic"}, True),
    ({"amount": 500, "user_tier": "gold"}, False),
    ({"amount": 10_000, "user_tier": "premium"}, False),
])
def test_the_guides_risk_rule(state: dict[str, Any], expected: bool) -> None:
    evaluation = parse(RISK).evaluate({**state, "unrelated": [1, 2]})
    assert evaluation.result is expected
    assert evaluation.inputs == state  # only what the expression reads is recorded
    assert evaluation.expression == RISK


def test_field_access_functions_and_literals() -> None:
    state = {"request": {"amount": 12, "tags": ["x", "urgent"]}, "items": [1, 2, 3]}
    assert parse('request.amount > 10 and "urgent" in request["tags"]').evaluate(state).result
    assert parse("len(items) >= 3 and max(items) == 3").evaluate(state).result
    assert parse('lower(request.tags[1]) in ["urgent", "high"]').evaluate(state).result
    assert not parse("not items or sum(items) > 100").evaluate(state).result


@pytest.mark.parametrize(("expression", "reason"), [
    ('__import__("os").system("true")', "only these functions may be called"),
    ("open('/etc/passwd')", "calls 'open'"),
    ("items.__class__", "names starting with '_'"),
    ("[x for x in items]", "comprehension"),
    ("lambda: 1", "lambda"),
    ("2 ** 100000000", "'**'"),
    ("amount >", "not a valid expression"),
    ("", "non-empty string"),
    ("(x := 1)", "':='"),
])
def test_unsafe_or_broken_expressions_are_refused(expression: str, reason: str) -> None:
    with pytest.raises(ConditionError) as error:
        parse(expression)
    assert reason in str(error.value)


def test_evaluation_errors_name_what_is_missing_or_wrong() -> None:
    with pytest.raises(ConditionError, match="reads 'user_tier', which the thread state does "
                                             "not have"):
        parse(RISK).evaluate({"amount": 1})
    with pytest.raises(ConditionError, match="TypeError"):
        parse("amount > 'x'").evaluate({"amount": 1})


# -- the node's behaviour (domain, no I/O) ----------------------------------------------------

ROWS = [
    ["Risk", "start", "input", "gate", "", "", "amount|user_tier", "request", ""],
    ["Risk", "gate", "approval_interaction", "done", "refused", "Approve {amount}?", "request",
     "decision", json.dumps({"condition": RISK})],
    ["Risk", "done", "output", "", "", "Approved", "decision", "result", ""],
    ["Risk", "refused", "output", "", "", "Refused", "decision", "result", ""],
]


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["graph_name", "node_name", "agent_type", "next_on_success",
                         "next_on_failure", "prompt", "input_fields", "output_field", "context"])
        writer.writerows(rows)
    return path


def started(tmp_path: Path, state: dict[str, Any]) -> Thread:
    path = write_csv(tmp_path / "risk.csv", ROWS)
    spec = load_workflow(path, registry=AgentRegistry())
    thread = Thread(thread_id="t1", graph_name=spec.graph_name, workflow_digest=spec.digest,
                    inputs=state, started_by="test", start_node=spec.start)
    thread.advance(Graph(spec), AgentRegistry(), lambda: datetime(2026, 1, 1, tzinfo=UTC))
    return thread


def test_condition_true_asks_a_person_and_says_why(tmp_path: Path) -> None:
    thread = started(tmp_path, {"amount": 50_000, "user_tier": "gold"})
    assert thread.status == "paused"
    [spec] = thread.pending.values()
    assert spec["context"]["asked_because"] == {
        "condition": RISK, "inputs": {"amount": 50_000, "user_tier": "gold"}, "result": True}
    assert "condition" not in spec["context"]


def test_condition_false_decides_and_records_why(tmp_path: Path) -> None:
    thread = started(tmp_path, {"amount": 500, "user_tier": "gold"})
    assert thread.status == "completed" and thread.output == "Approved"
    [decided] = [e for e in thread.collect_events() if type(e).__name__ == "NodeDecided"]
    assert decided.expression == RISK
    assert decided.inputs == {"amount": 500, "user_tier": "gold"}
    assert decided.result is False
    assert decided.action == "approve" and decided.route == "success"
    assert decided.value["approved"] is True


def test_a_condition_that_cannot_be_evaluated_asks_a_person(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "risk.csv", ROWS)
    spec = load_workflow(path, registry=AgentRegistry())
    thread = Thread(thread_id="t2", graph_name=spec.graph_name, workflow_digest=spec.digest,
                    inputs={"amount": "lots", "user_tier": "gold"}, started_by="test",
                    start_node=spec.start)
    thread.advance(Graph(spec), AgentRegistry(), lambda: datetime(2026, 1, 1, tzinfo=UTC))
    assert thread.status == "paused"
    [spec_] = thread.pending.values()
    assert "TypeError" in spec_["context"]["asked_because"]["error"]
