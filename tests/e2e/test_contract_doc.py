"""docs/contract.md is what the code generates, and every example in it works as written: each
is sent, in order, to a fresh stack exactly as the document shows it, and the reply checked."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from contracts import subjects
from hitlflow.contract_doc import render
from hitlflow.testing import HitlTestStack
from tests.conftest import ROOT

DOC = ROOT / "docs" / "contract.md"
EXAMPLE = re.compile(
    r'<!-- example subject="(?P<subject>[^"]+)" transport="(?P<transport>\w+)" -->\n'
    r".*?```json\n(?P<body>.*?)\n```\n.*?```json\n(?P<reply>.*?)\n```", re.DOTALL)


def test_the_document_is_what_the_code_generates() -> None:
    assert DOC.read_text() == render(), (
        "docs/contract.md is stale: run `hitlflow contract > docs/contract.md`")


def documented() -> list[tuple[str, str, bytes, dict[str, Any]]]:
    return [(m["subject"], m["transport"], m["body"].encode(), json.loads(m["reply"]))
            for m in EXAMPLE.finditer(DOC.read_text())]


def contains(actual: Any, expected: Any) -> bool:
    """Every key of ``expected`` is in ``actual`` with a value it contains (lists: item by
    item, in order, as many as ``expected`` has)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and contains(actual[key], value) for key, value in expected.items())
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(actual) >= len(expected)
                and all(contains(a, e) for a, e in zip(actual, expected, strict=False)))
    return bool(actual == expected)


async def send(hitl: HitlTestStack, subject: str, transport: str,
               body: bytes) -> dict[str, Any]:
    nc = hitl.client.nc
    if transport == "request":
        msg = await nc.request(subject, body, timeout=10)
    else:
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox, max_msgs=1)
        await nc.jetstream().publish(subject, body, headers={subjects.REPLY_TO_HEADER: inbox})
        msg = await replies.next_msg(20)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


@pytest.mark.parametrize("backend", ["sqlite"])
def test_every_example_gets_the_documented_reply(hitl: HitlTestStack) -> None:
    examples = documented()
    assert len(examples) >= 6
    for subject, transport, body, expected in examples:
        # queries read views that follow the events within moments: ask again until then
        deadline = time.monotonic() + (10 if transport == "request" else 0)
        while True:
            reply = hitl.call(send(hitl, subject, transport, body))
            if contains(reply, expected) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert contains(reply, expected), (subject, reply)
