"""Notifications of new interaction requests: NATS ``hitl.notify.<thread>``, webhooks with
retries (a real HTTP server on 127.0.0.1 in the test), and the log sink."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from contracts import subjects
from contracts.events import InteractionRequested
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from services.interaction.notifications import (
    WebhookDeliveryError,
    WebhookSink,
    notification_from,
)
from tests.conftest import EXAMPLE_AGENTS, example
from tests.helpers import wait_for

#: The durable consumer that announces the requests (``services/interaction/handlers.py``).
NOTIFY_DURABLE = "interaction-notify"


class Hook:
    """A local webhook receiver: answers each POST with the next scripted status (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.lock:
                    hook.attempts += 1
                    status = hook.statuses.pop(0) if hook.statuses else 200
                    if status == 200:
                        hook.received.append({"body": json.loads(body),
                                              "id": self.headers["Hitl-Notification-Id"],
                                              "type": self.headers["Content-Type"]})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    with Hook(statuses=[503]) as receiver:  # the first POST fails: it must be retried
        yield receiver


@pytest.fixture
def notifying(tmp_path: Path, hook: Hook) -> Iterator[HitlTestStack]:
    settings = Settings(home=tmp_path, notify_webhook_url=hook.url, notify_webhook_retries=3,
                        notify_webhook_backoff=0.01, timeout_approval=None)  # no default timeout
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings) as stack:
        yield stack


def test_every_request_is_notified_on_nats_and_the_webhook(notifying: HitlTestStack,
                                                           hook: Hook) -> None:
    run = notifying.start(example("approval.csv") + "::ApprovalFlow",
                          {"user_request": "Buy 3 laptops"}, thread_id="notify-1")
    request = notifying.assert_paused(run, node="approve_gate")

    [on_nats] = notifying.notifications("notify-1", count=1)
    assert on_nats.id == request["id"]
    assert on_nats.title == "Human input required: approve_gate"
    assert on_nats.prompt == request["prompt"]
    assert (on_nats.thread_id, on_nats.node_name) == ("notify-1", "approve_gate")
    assert on_nats.urgency == "normal"  # no timeout
    assert on_nats.respond_with == "hitlflow resume notify-1 approve"

    [posted] = wait_for(lambda: hook.received, what="the webhook notification")
    assert hook.attempts == 2  # 503 first, then delivered on the retry
    assert posted["id"] == request["id"]
    assert posted["type"] == "application/json"
    assert posted["body"]["title"] == "Human input required: approve_gate"
    assert posted["body"]["prompt"].startswith("Please approve this request:")
    assert posted["body"]["thread_id"] == "notify-1"
    assert posted["body"]["node_name"] == "approve_gate"
    assert posted["body"]["urgency"] == "normal"


def test_a_request_with_a_timeout_is_urgent(notifying: HitlTestStack, hook: Hook,
                                            tmp_path: Path) -> None:
    flow = tmp_path / "urgent.csv"
    flow.write_text(
        "graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,input_fields,"
        "output_field,context\n"
        "Urgent,start,input,ask,,,request,request,\n"
        'Urgent,ask,approval_interaction,done,done,Approve {request} today,request,decision,'
        '"{""timeout_seconds"": 86400, ""assignees"": [""ops""]}"\n'
        "Urgent,done,output,,,Done,decision,result,\n")
    notifying.start(str(flow) + "::Urgent", {"request": "the hotfix"}, thread_id="notify-2")
    [note] = notifying.notifications("notify-2", count=1)
    assert note.urgency == "high"
    assert note.timeout_seconds == 86400 and note.assignees == ("ops",)
    posted = wait_for(lambda: [r for r in hook.received if r["body"]["thread_id"] == "notify-2"],
                      what="the urgent webhook notification")
    assert posted[0]["body"]["urgency"] == "high"
    assert posted[0]["body"]["prompt"] == "Approve the hotfix today"


def test_a_consumer_made_anew_announces_again_only_the_requests_still_open(
        notifying: HitlTestStack, hook: Hook) -> None:
    """The notifications' durable consumer is deleted while the stack runs. Made again, it
    reads the stream from its start: the request answered meanwhile is not announced again,
    the one still open is (delivery is at least once)."""
    def posted(thread_id: str) -> list[dict[str, Any]]:
        with hook.lock:
            return [r for r in hook.received if r["body"]["thread_id"] == thread_id]

    flow = example("approval.csv") + "::ApprovalFlow"
    notifying.assert_paused(notifying.start(flow, {"user_request": "a desk"},
                                            thread_id="answered"))
    # (answered before its turn came, it would not be announced at all)
    wait_for(lambda: posted("answered"), what="the first request announced")
    assert notifying.resume("answered", "approve").status == "completed"
    notifying.assert_paused(notifying.start(flow, {"user_request": "a chair"},
                                            thread_id="open"))
    wait_for(lambda: posted("open"), what="the second request announced")
    js = notifying.client.nc.jetstream()
    notifying.call(js.delete_consumer(subjects.EVENTS_STREAM, NOTIFY_DURABLE))

    wait_for(lambda: len(posted("open")) == 2, what="the open request announced again")

    async def replayed() -> bool:  # the remade consumer has handled the whole stream
        info = await js.consumer_info(subjects.EVENTS_STREAM, NOTIFY_DURABLE)
        return info.num_pending == 0 and info.num_ack_pending == 0

    wait_for(lambda: notifying.call(replayed()), what="the replay's end")
    assert len(posted("answered")) == 1
    assert len(notifying.notifications("answered")) == 1
    assert len(notifying.notifications("open", count=2)) == 2


# -- the webhook sink alone -------------------------------------------------------------------


def a_notification() -> Any:
    return notification_from(InteractionRequested(
        id="7d4f2a7e-2d0e-4c11-8a55-0f2b1c2d3e4f", thread_id="t-1", node_name="gate",
        interaction_type="approval", prompt="Approve?", created_at=datetime.now(UTC)))


def test_webhook_gives_up_after_its_retries() -> None:
    with Hook(statuses=[500, 502, 503]) as receiver:
        sink = WebhookSink([receiver.url], retries=2, backoff=0.0)
        with pytest.raises(WebhookDeliveryError, match=r"failed 3 times \(last: HTTP 503\)"):
            asyncio.run(sink.send(a_notification()))
        assert receiver.attempts == 3 and receiver.received == []


def test_webhook_does_not_retry_a_refusal() -> None:
    with Hook(statuses=[400]) as receiver:
        sink = WebhookSink([receiver.url], retries=5, backoff=0.0)
        with pytest.raises(WebhookDeliveryError, match="refused the notification"):
            asyncio.run(sink.send(a_notification()))
        assert receiver.attempts == 1
