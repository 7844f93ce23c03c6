"""Time travel: a thread as it stood at any event, from its events alone (CLI and HTTP)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi.testclient import TestClient

from hitlflow.gateway import create_app
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from tests.conftest import example
from tests.helpers import cli, cli_json, wait_for

APPROVAL = example("approval.csv") + "::ApprovalFlow"


def _answered_thread(hitl: HitlTestStack) -> tuple[str, list[dict[str, Any]]]:
    """An approval thread: paused, one refused answer, approved, completed; its timeline."""
    thread = f"tt-{uuid.uuid4().hex[:8]}"
    hitl.assert_paused(hitl.start(APPROVAL, {"user_request": "Buy 3 laptops"},
                                  thread_id=thread))
    hitl.assert_refused(hitl.resume(thread, "choose", {"choice": 1}, on_behalf_of="mallory"))
    hitl.assert_completed(hitl.resume(thread, "approve", {"reason": "ok"}, on_behalf_of="alice"))

    def settled() -> list[dict[str, Any]] | None:  # the timeout service clears its deadline last
        code, data, stderr = cli_json(hitl.nats_url, "show", thread)
        assert code == 0, stderr
        events: list[dict[str, Any]] = data["events"]
        return events if any(e["event_type"] == "DeadlineCleared" for e in events) else None

    return thread, wait_for(settled, 20, "the thread's last event")


def _number(events: list[dict[str, Any]], event_type: str) -> int:
    return next(i for i, e in enumerate(events, 1) if e["event_type"] == event_type)


def test_show_at_an_event_gives_the_thread_as_it_stood_then(hitl: HitlTestStack) -> None:
    thread, events = _answered_thread(hitl)
    asked = _number(events, "InteractionRequested")
    code, then, stderr = cli_json(hitl.nats_url, "show", thread, "--at", str(asked))
    assert code == 0, stderr
    assert then["event_number"] == asked and then["events_total"] == len(events)
    assert then["status"] == "paused" and then["current_node"] == "approve_gate"
    assert then["state"]["user_request"] == "Buy 3 laptops"
    assert then["state"]["request_data"] == "Buy 3 laptops"
    assert "validation_result" in then["state"] and "final_result" not in then["state"]
    [request] = then["pending"]
    requested = events[asked - 1]["payload"]
    assert request["prompt"] == requested["prompt"]
    assert request["context"] == requested["context"]
    # the digest the audit trail keeps for the same request
    audit = json.loads(cli(hitl.nats_url, "audit", "--thread", thread, "--event", "requested",
                           "--format", "json").stdout)
    assert request["digest"] == audit[0]["digest"]
    assert then["answers"] == [] and then["rejected"] == []

    code, end, stderr = cli_json(hitl.nats_url, "show", thread, "--at", str(len(events)))
    assert code == 0, stderr
    assert end["status"] == "completed" and end["pending"] == []
    assert "final_result" in end["state"]  # written by the process node
    assert [(a["action"], a["responder"]) for a in end["answers"]] == [("approve", "alice")]
    assert [(r["responder"], r["code"]) for r in end["rejected"]] == [
        ("mallory", "invalid_response")]
    assert end["requests"][0]["status"] == "answered"

    text = cli(hitl.nats_url, "show", thread, "--at", str(asked))
    assert text.exit_code == 0, text.stderr
    assert "Please approve this request" in text.stdout and "status paused" in text.stdout


def test_show_at_a_moment_and_the_diff_between_two_points(hitl: HitlTestStack) -> None:
    thread, events = _answered_thread(hitl)
    asked = _number(events, "InteractionRequested")
    moment = events[asked - 1]["at"]
    code, then, stderr = cli_json(hitl.nats_url, "show", thread, "--at", moment)
    assert code == 0, stderr
    assert then["event_number"] >= asked and then["status"] == "paused"

    code, changes, stderr = cli_json(hitl.nats_url, "show", thread, "--diff", str(asked),
                                     str(len(events)))
    assert code == 0, stderr
    assert changes["status"] == {"from": "paused", "to": "completed"}
    assert "final_result" in changes["state"] and "added" in changes["state"]["final_result"]
    assert [a["action"] for a in changes["answers"]] == ["approve"]
    assert changes["closed"][0]["status"] == "answered"
    # either order gives the same change
    code, again, _ = cli_json(hitl.nats_url, "show", thread, "--diff", str(len(events)),
                              str(asked))
    assert code == 0 and again == changes
    text = cli(hitl.nats_url, "show", thread, "--diff", "1", str(len(events)))
    assert text.exit_code == 0, text.stderr
    assert "state.final_result" in text.stdout


def test_bad_points_in_time_are_clear_errors(hitl: HitlTestStack) -> None:
    thread, events = _answered_thread(hitl)
    total = len(events)
    for at, words in (("0", "before the first event"),
                      (str(total + 1), f"beyond the last event: thread {thread!r} has {total}"),
                      ("yesterday", "neither an event number"),
                      ("2001-01-01T00:00:00Z", "before the first event")):
        result = cli(hitl.nats_url, "show", thread, "--at", at)
        assert result.exit_code == 2, (at, result.stdout)
        assert words in result.stderr, (at, result.stderr)
        assert "Traceback" not in result.stderr
    result = cli(hitl.nats_url, "show", thread, "--diff", "1", str(total + 5))
    assert result.exit_code == 2 and "beyond the last event" in result.stderr
    result = cli(hitl.nats_url, "show", "no-such-thread", "--at", "1")
    assert result.exit_code == 1 and "unknown thread 'no-such-thread'" in result.stderr


def test_http_thread_at(hitl: HitlTestStack) -> None:
    thread, events = _answered_thread(hitl)
    asked = _number(events, "InteractionRequested")
    settings = Settings(home=hitl.data_dir, nats_url=hitl.nats_url, auth=False,
                        gateway_user="auditor")  # a stack without users (the hitl fixture's)
    with TestClient(create_app(settings)) as http:
        then = http.get(f"/threads/{thread}", params={"at": asked})
        assert then.status_code == 200, then.text
        assert then.json()["status"] == "paused" and len(then.json()["pending"]) == 1
        now = http.get(f"/threads/{thread}")
        assert now.json()["status"] == "completed"
        beyond = http.get(f"/threads/{thread}", params={"at": len(events) + 1})
        assert beyond.status_code == 400 and "beyond the last event" in beyond.text
        unknown = http.get("/threads/nobody-here", params={"at": 1})
        assert unknown.status_code == 404


def test_thread_at_is_the_live_state_at_the_end(hitl: HitlTestStack) -> None:
    """Folding every event gives the state the workflow service holds."""
    thread, events = _answered_thread(hitl)
    code, end, _ = cli_json(hitl.nats_url, "show", thread, "--at", str(len(events)))
    assert code == 0
    assert end["state"] == hitl.state(thread)
    later = events[-1]["at"]
    code, same, _ = cli_json(hitl.nats_url, "show", thread, "--at", later)
    assert code == 0 and same["event_number"] == len(events)
