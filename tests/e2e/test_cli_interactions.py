"""Each interaction type, paused and resumed to completion through the ``hitlflow`` command,
with the guide's resume commands verbatim (``hitlflow`` in place of ``agentmap``)."""

from __future__ import annotations

import json

import pytest

from hitlflow.testing import HitlTestStack
from tests.conftest import ROOT
from tests.helpers import cli, cli_json

TYPES = str(ROOT / "tests" / "workflows" / "types.csv")


def start(hitl: HitlTestStack, graph: str, state: dict[str, object], thread_id: str) -> dict:
    code, data, stderr = cli_json(hitl.nats_url, "run", f"{TYPES}::{graph}",
                                  "--state", json.dumps(state), "--thread-id", thread_id)
    assert code == 0, stderr
    assert data["status"] == "paused"
    assert len(data["pending"]) == 1
    return data


def test_run_shows_the_request_the_way_the_guide_does(hitl: HitlTestStack) -> None:
    result = cli(hitl.nats_url, "run", f"{TYPES}::Approve", "--thread-id", "thread_12345",
                 "--state", '{"request": "Q1 budget: 50000"}')
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "status paused" in text
    assert "Please approve: Q1 budget: 50000" in text
    assert "department" in text and "Engineering" in text
    assert "hitlflow resume thread_12345 approve" in text
    assert """hitlflow resume thread_12345 reject --data '{"reason": "..."}'""" in text


def test_approval_approve_routes_to_success(hitl: HitlTestStack) -> None:
    start(hitl, "Approve", {"request": "laptops"}, "appr-1")
    code, data, stderr = cli_json(hitl.nats_url, "resume", "appr-1", "approve")
    assert code == 0, stderr
    assert data["ok"] and data["status"] == "completed"
    assert data["output"] == "Approved: laptops"


def test_approval_reject_with_reason_routes_to_failure(hitl: HitlTestStack) -> None:
    start(hitl, "Approve", {"request": "yacht"}, "appr-2")
    code, data, stderr = cli_json(hitl.nats_url, "resume", "appr-2", "reject", "--data",
                                  '{"reason": "Budget exceeds allocated amount"}')
    assert code == 0, stderr
    assert data["status"] == "completed" and data["output"] == "Refused: yacht"
    view = hitl.status("appr-2")
    assert view is not None and view.status == "completed"


def test_edit_hands_the_edited_content_on(hitl: HitlTestStack) -> None:
    start(hitl, "Edit", {"draft": "The system has detected an anomaly..."}, "edit-1")
    code, data, stderr = cli_json(hitl.nats_url, "resume", "edit-1", "edit", "--data", """{
  "edited": "The data processing pipeline has detected an anomaly that requires attention...",
  "changes": ["Added urgency indicator", "Clarified technical details"]
}""")
    assert code == 0, stderr
    assert data["status"] == "completed"
    assert data["output"].startswith("The data processing pipeline has detected")


def test_edit_approve_keeps_the_original(hitl: HitlTestStack) -> None:
    start(hitl, "Edit", {"draft": "Fine as it is."}, "edit-2")
    code, data, _ = cli_json(hitl.nats_url, "resume", "edit-2", "approve")
    assert code == 0 and data["output"] == "Fine as it is."


@pytest.mark.parametrize(("choice", "expected"), [
    ('{"choice": 1}', 1),
    ('{"choice": 2, "justification": "Staging first for additional testing"}', 2),
    ('{"choice": "Development (local)"}', 3),
])
def test_choice_by_number_or_exact_text(hitl: HitlTestStack, choice: str, expected: int) -> None:
    thread = f"choice-{expected}"
    data = start(hitl, "Choice", {"app": "payment_service"}, thread)
    assert data["pending"][0]["options"][3] == "Cancel deployment"
    code, done, stderr = cli_json(hitl.nats_url, "resume", thread, "choose", "--data", choice)
    assert code == 0, stderr
    assert done["status"] == "completed"
    assert done["output"]["choice"] == expected
    assert done["output"]["option"] == data["pending"][0]["options"][expected - 1]
    if expected == 2:
        assert done["output"]["justification"].startswith("Staging first")


def test_text_input_plain_and_structured(hitl: HitlTestStack, tmp_path) -> None:
    start(hitl, "Text", {"feature": "User Authentication"}, "text-1")
    code, data, _ = cli_json(hitl.nats_url, "resume", "text-1", "respond", "--data",
                             '{"text": "Add support for social login providers"}')
    assert code == 0 and data["output"] == "Add support for social login providers"

    start(hitl, "Text", {"feature": "User Authentication"}, "text-2")
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({
        "response": "Additional security requirements needed",
        "requirements": ["Social login integration", "Rate limiting"],
        "priority": "high",
    }))
    code, data, _ = cli_json(hitl.nats_url, "resume", "text-2", "respond",
                             "--data-file", str(answer))
    assert code == 0
    assert data["output"]["requirements"] == ["Social login integration", "Rate limiting"]
    assert data["output"]["priority"] == "high"


def test_conversation_continues_until_end(hitl: HitlTestStack) -> None:
    start(hitl, "Talk", {"topic": "microservices"}, "talk-1")
    code, data, _ = cli_json(hitl.nats_url, "resume", "talk-1", "respond", "--data", json.dumps({
        "message": "Start with user management, catalog and orders.",
        "follow_up_questions": ["What database strategy should we use?"],
    }))
    assert code == 0 and data["status"] == "paused"  # respond loops back for another turn
    code, data, _ = cli_json(hitl.nats_url, "resume", "talk-1", "respond", "--data",
                             '{"message": "One database per service."}')
    assert code == 0 and data["status"] == "paused"
    code, data, _ = cli_json(hitl.nats_url, "resume", "talk-1", "end")
    assert code == 0 and data["status"] == "completed"
    history = data["output"]["history"]
    assert [turn["message"] for turn in history] == [
        "Start with user management, catalog and orders.", "One database per service.", None,
    ]
    assert [turn["action"] for turn in history] == ["respond", "respond", "end"]


def test_status_and_pending_commands(hitl: HitlTestStack) -> None:
    start(hitl, "Approve", {"request": "a"}, "st-1")
    code, view, _ = cli_json(hitl.nats_url, "status", "st-1")
    assert code == 0 and view["status"] == "paused" and view["current_node"] == "gate"
    code, items, _ = cli_json(hitl.nats_url, "pending")
    assert code == 0 and [i["thread_id"] for i in items] == ["st-1"]
    result = cli(hitl.nats_url, "pending")
    assert "hitlflow resume st-1 approve" in result.stdout
    code, _, stderr = cli_json(hitl.nats_url, "status", "nope")
    assert code == 1 and "unknown thread 'nope'" in stderr


def test_thread_id_reuse_is_refused(hitl: HitlTestStack) -> None:
    start(hitl, "Approve", {"request": "a"}, "dup-1")
    result = cli(hitl.nats_url, "run", f"{TYPES}::Approve", "--thread-id", "dup-1",
                 "--state", '{"request": "b"}')
    assert result.exit_code == 1
    assert "thread id 'dup-1' is already in use" in result.stderr
    view = hitl.status("dup-1")
    assert view is not None and view.pending[0].prompt == "Please approve: a"


def test_bad_cli_input_exits_2_with_a_reason(hitl: HitlTestStack) -> None:
    result = cli(hitl.nats_url, "run", f"{TYPES}::Approve", "--state", "[1]")
    assert result.exit_code == 2 and "--state must be a JSON object" in result.stderr
    result = cli(hitl.nats_url, "run", f"{TYPES}::Nope")
    assert result.exit_code == 2 and "no graph named 'Nope'" in result.stderr
    result = cli(hitl.nats_url, "resume", "bad id!", "approve")
    assert result.exit_code == 2 and "invalid thread id" in result.stderr


def test_missing_input_is_refused_by_the_service(hitl: HitlTestStack) -> None:
    result = cli(hitl.nats_url, "run", f"{TYPES}::Approve", "--state", '{"other": 1}')
    assert result.exit_code == 1
    assert "state is missing 'request' needed by the start node 'start'" in result.stderr


def test_no_stack_exits_3(tmp_path) -> None:
    from hitlflow.stack import free_port

    result = cli(f"nats://127.0.0.1:{free_port()}", "status", "x")
    assert result.exit_code == 3 and "cannot reach NATS" in result.stderr
