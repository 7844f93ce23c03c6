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
    settings = Settings(home=hitl.data_dir, nats_url=hitl.nats_url, auth=False)
    with TestClient(create_app(settings)) as http:  # the documents need no credentials
        doc = http.get("/asyncapi").json()
        assert "ResumeThread" in http.get("/asyncapi.html").text

    def operation_taking(model: str) -> tuple[dict[str, Any], dict[str, Any]]:
        [operation] = [op for op in doc["operations"].values()
                       if any(message_of(doc, m["$ref"])["name"] == model
                              for m in op["messages"])]
        assert operation["action"] == "receive"  # hitlflow receives it: we send it
        return operation, message_of(doc, operation["channel"]["$ref"])

    def address(channel: dict[str, Any]) -> str:
        values = {"thread_id": thread, "principal": "doc-reader"}
        subject = channel["address"]
        for parameter in channel.get("parameters", {}):
            subject = subject.replace("{" + parameter + "}", values[parameter])
        return str(subject)

    # what the thread waits for (the answer names the version of the request it saw): the
    # request/reply channel that takes a ThreadQuery
    query_op, query_channel = operation_taking("ThreadQuery")
    assert query_channel["x-hitlflow-transport"] == "request"
    view = hitl.call(hitl.client.nc.request(address(query_channel), b"{}", timeout=10))
    seen = json.loads(view.data)
    query_reply = message_of(doc, query_op["reply"]["messages"][0]["$ref"])
    jsonschema.validate(seen, schema_of(doc, query_reply["payload"]["$ref"]))
    [waiting] = seen["thread"]["pending"]

    # the answer: the operation that takes a ResumeThread, its channel, and how to reach it
    operation, channel = operation_taking("ResumeThread")
    subject = address(channel)
    message = message_of(doc, operation["messages"][0]["$ref"])
    body_schema = schema_of(doc, message["payload"]["$ref"])
    properties = doc["components"]["schemas"]["ResumeThread"]["properties"]
    required = doc["components"]["schemas"]["ResumeThread"]["required"]
    wanted = {"thread_id": thread, "action": "approve", "request_id": waiting["id"],
              "shown": waiting["shown"], "idempotency_key": uuid.uuid4().hex}
    body = {key: example_value(key, properties[key], wanted)
            for key in dict.fromkeys([*required, *wanted]) if key in properties}
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
