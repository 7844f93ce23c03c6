"""The HTTP gateway against the real stack: start, answer, refuse, read. (On a stack without
authorization, requests are from HITLFLOW_GATEWAY_USER; tests/e2e/test_gateway_auth.py has
the stack with users, tokens and API keys.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hitlflow.gateway import create_app
from hitlflow.settings import Settings
from hitlflow.stack import EmbeddedNats
from hitlflow.testing import HitlTestStack
from tests.conftest import ROOT
from tests.helpers import stored_events

CSV = (ROOT / "tests" / "workflows" / "types.csv").read_text()


@pytest.fixture
def http(hitl: HitlTestStack) -> Iterator[TestClient]:
    settings = Settings(home=hitl.data_dir, nats_url=hitl.nats_url, auth=False,
                        gateway_user="ana")
    with TestClient(create_app(settings)) as client:
        yield client


def test_start_answer_and_read_over_http(http: TestClient, hitl: HitlTestStack) -> None:
    started = http.post("/threads", json={"csv": CSV, "graph": "Choice", "thread_id": "web-1",
                                          "state": {"app": "payment_service"}})
    assert started.status_code == 201, started.text
    body = started.json()
    assert body["status"] == "paused"
    assert body["pending"][0]["options"][1] == "Staging (us-west-2)"

    [request] = http.get("/pending", params={"thread_id": "web-1"}).json()
    assert request["node_name"] == "pick"

    answered = http.post("/threads/web-1/resume",
                         json={"action": "choose", "data": {"choice": 2},
                               "shown": request["shown"]},
                         headers={"Idempotency-Key": "web-answer-1"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["output"]["option"] == "Staging (us-west-2)"
    again = http.post("/threads/web-1/resume", json={"action": "choose", "data": {"choice": 2},
                                                     "shown": request["shown"]},
                      headers={"Idempotency-Key": "web-answer-1"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert http.get("/threads/web-1").json()["status"] == "completed"
    assert [t["thread_id"] for t in http.get("/threads", params={"status": "completed"}).json()
            ] == ["web-1"]
    [resumed] = hitl.events("web-1", "ThreadResumed")
    assert resumed["responder"] == "ana"  # the gateway's configured user


def test_refusals_carry_code_and_status(http: TestClient, hitl: HitlTestStack) -> None:
    started = http.post("/threads", json={"csv": CSV, "graph": "Approve", "thread_id": "web-2",
                                          "state": {"request": "r"}})
    assert started.status_code == 201
    shown = started.json()["pending"][0]["shown"]
    wrong = http.post("/threads/web-2/resume", json={"action": "choose", "shown": shown})
    assert wrong.status_code == 422
    assert wrong.json()["code"] == "invalid_response"
    assert "expected one of: approve, reject" in wrong.json()["error"]

    not_json = http.post("/threads/web-2/resume", content=b"{approve",
                         headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]

    # a lone surrogate (json.dumps spells it as an escape, \ud800; no message can carry it)
    for path, body, says in (
            ("/threads/web-2/resume", {"action": "approve", "shown": shown,
                                       "data": {"why": "\ud800"}}, "not valid Unicode"),
            ("/threads", {"csv": CSV, "graph": "Approve", "state": {"request": "\ud800"}},
             "not valid Unicode"),
            ("/threads/web-2/resume", {"action": "\udfff", "shown": shown},
             "action: Input should be a valid string, unable to parse raw data as a unicode")):
        not_text = http.post(path, content=json.dumps(body).encode(),
                             headers={"content-type": "application/json"})
        assert not_text.status_code == 422, not_text.text
        assert not_text.json()["code"] == "invalid_command"
        assert says in not_text.json()["error"]

    unknown = http.post("/threads/nobody/resume", json={"action": "approve", "shown": shown})
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_thread"

    duplicate = http.post("/threads", json={"csv": CSV, "graph": "Approve", "thread_id": "web-2",
                                            "state": {"request": "r"}})
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "thread_exists"

    broken = http.post("/threads", json={"csv": "graph_name,node_name\nG,a\n"})
    assert broken.status_code == 400
    assert "missing required column 'agent_type'" in broken.json()["detail"]["problems"][0]

    assert http.get("/threads/nobody").status_code == 404
    bogus = http.get("/threads", params={"status": "bogus"})
    assert bogus.status_code == 400 and "status: Input should be" in bogus.json()["error"]
    assert http.post("/threads/bad id/resume", json={"action": "approve", "shown": shown}
                     ).status_code == 400

    interaction = hitl.stack.runtimes["interaction"].app
    inbox = interaction.inbox("web-2")
    assert len([e for e in stored_events(interaction, "ResponseRejected")
                if e.originator_id == inbox.id]) == 2
    assert http.post("/threads/web-2/resume", json={"action": "approve", "shown": shown}).json()[
        "status"] == "completed"


def test_a_page_says_in_words_when_the_stack_does_not_answer(tmp_path: Path,
                                                             nats_server: EmbeddedNats) -> None:
    """NATS is up but no projections service answers: the API says 503 in JSON, the pages in
    a page."""
    settings = Settings(home=tmp_path, nats_url=nats_server.url, auth=False, gateway_user="ana",
                        reply_timeout=1.0)
    with TestClient(create_app(settings)) as client:
        page = client.get("/ui/inbox")
        assert page.status_code == 503
        assert page.headers["content-type"].startswith("text/html")
        assert "This page cannot be shown" in page.text
        assert "no projections service answers" in page.text
        api = client.get("/pending")
        assert api.status_code == 503 and "no projections service answers" in api.json()["error"]
