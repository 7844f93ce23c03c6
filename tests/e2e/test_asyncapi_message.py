"""A system that knows only the AsyncAPI document (as the gateway serves it) resumes a thread:
subject, headers, body and reply are all read from the document."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from hitlflow.gateway import create_app
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from tests.conftest import example
from tests.helpers import wait_for


def schema_of(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    """A schema of the document, resolvable on its own (its refs point into the document)."""
    return {"$ref": ref, "components": doc["components"]}


def message_of(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    """A message reference (``#/channels/x/messages/y`` or ``#/components/...``), followed."""
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    while "$ref" in node:
        node = message_of(doc, node["$ref"])
    return dict(node)


def example_value(name: str, schema: dict[str, Any], wanted: dict[str, Any]) -> Any:
    if name in wanted:
        return wanted[name]
    kind = schema.get("type")
    return "x" if kind == "string" else 1 if kind == "integer" else {}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_message_built_from_the_document_alone_resumes_a_thread(hitl: HitlTestStack) -> None:
    thread = f"doc-{uuid.uuid4().hex[:8]}"
    hitl.assert_paused(hitl.start(example("approval.csv::ApprovalFlow"),
                                  {"user_request": "Buy 3 laptops"}, thread_id=thread))
    with TestClient(create_app(Settings(nats_url=hitl.nats_url))) as http:
        doc = http.get("/asyncapi").json()
        assert "ResumeThread" in http.get("/asyncapi.html").text

    # the operation that takes a ResumeThread, its channel, and how to reach it
    [(name, operation)] = [
        (name, op) for name, op in doc["operations"].items()
        if any(message_of(doc, m["$ref"])["name"] == "ResumeThread" for m in op["messages"])]
    channel = message_of(doc, operation["channel"]["$ref"])
    assert operation["action"] == "receive"  # hitlflow receives it: we send it
    subject = channel["address"]
    for parameter in channel["parameters"]:
        subject = subject.replace("{" + parameter + "}", thread)
    message = message_of(doc, operation["messages"][0]["$ref"])
    body_schema = schema_of(doc, message["payload"]["$ref"])
    properties = doc["components"]["schemas"]["ResumeThread"]["properties"]
    required = doc["components"]["schemas"]["ResumeThread"]["required"]
    wanted = {"thread_id": thread, "action": "approve",
              "idempotency_key": uuid.uuid4().hex, "responder": "doc-reader"}
    body = {key: example_value(key, properties[key], wanted)
            for key in [*required, "responder"]}
    jsonschema.validate(body, body_schema)
    reply_header = operation["reply"]["address"]["location"].split("#/", 1)[1]
    assert reply_header in message["headers"]["properties"]
    assert channel["x-hitlflow-transport"] == "jetstream"

    async def send() -> dict[str, Any]:
        nc = hitl.client.nc
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox, max_msgs=1)
        ack = await nc.jetstream().publish(subject, json.dumps(body).encode(),
                                           headers={reply_header: inbox})
        assert ack.stream == channel["x-hitlflow-stream"]
        reply: dict[str, Any] = json.loads((await replies.next_msg(20)).data)
        return reply

    reply = hitl.call(send())
    reply_message = message_of(doc, operation["reply"]["messages"][0]["$ref"])
    jsonschema.validate(reply, schema_of(doc, reply_message["payload"]["$ref"]))
    assert reply["ok"] is True and reply["action"] == "approve", reply
    wait_for(lambda: (view := hitl.status(thread)) is not None and view.status == "completed",
             what="the thread to complete")
    del name
