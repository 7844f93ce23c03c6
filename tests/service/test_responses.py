"""Response rules through the real stack: refusals are explained, audited and harmless; the
first valid answer wins; an idempotency key repeats its outcome; threads keep their version."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from hitlflow.client import HitlClient
from hitlflow.testing import HitlTestStack
from tests.conftest import ROOT
from tests.helpers import stored_events, wait_for

TYPES = str(ROOT / "tests" / "workflows" / "types.csv")


def interaction_app(hitl: HitlTestStack):
    return hitl.stack.runtimes["interaction"].app


def rejections(hitl: HitlTestStack, thread_id: str) -> list:
    return [e for e in stored_events(interaction_app(hitl), "ResponseRejected")
            if e.originator_id == interaction_app(hitl).inbox(thread_id).id]


def paused(hitl: HitlTestStack, graph: str, state: dict, thread_id: str):
    outcome = hitl.start(f"{TYPES}::{graph}", state, thread_id=thread_id)
    assert outcome.status == "paused", outcome.as_dict()
    return outcome


INVALID = [
    # (graph, state, action, data, raw, expected code, words the reason must contain)
    ("Approve", {"request": "r"}, "choose", {"choice": 1}, None, "invalid_response",
     ["'choose' is not valid for an approval", "approve, reject"]),
    ("Edit", {"draft": "d"}, "edit", {"changes": ["x"]}, None, "invalid_response",
     ["needs 'edited'"]),
    ("Choice", {"app": "a"}, "choose", {"justification": "?"}, None, "invalid_response",
     ["needs 'choice'", "1-4"]),
    ("Choice", {"app": "a"}, "choose", {"choice": 7}, None, "invalid_response",
     ["choice 7 is out of range", "expected 1-4"]),
    ("Choice", {"app": "a"}, "choose", {"choice": 0}, None, "invalid_response",
     ["out of range"]),
    ("Choice", {"app": "a"}, "choose", {"choice": True}, None, "invalid_response",
     ["option number 1-4 or the exact option text", "got bool"]),
    ("Choice", {"app": "a"}, "choose", {"choice": 1.5}, None, "invalid_response",
     ["got float"]),
    ("Choice", {"app": "a"}, "choose", {"choice": "Prod"}, None, "invalid_response",
     ["'Prod' is not one of the options"]),
    ("Text", {"feature": "f"}, "respond", {"note": "x"}, None, "invalid_response",
     ["needs 'text'"]),
    ("Talk", {"topic": "t"}, "respond", {"text": "hi"}, None, "invalid_response",
     ["needs 'message'"]),
    ("Approve", {"request": "r"}, "approve", None, '{"reason": oops', "invalid_response",
     ["not valid JSON", "expected a JSON object"]),
    ("Approve", {"request": "r"}, "approve", ["a", "list"], None, "invalid_response",
     ["must be a JSON object, got list"]),
    ("Approve", {"request": "r"}, "reject", {"reason": 42}, None, "invalid_response",
     ["'reason' must be a string"]),
]


@pytest.mark.parametrize(("graph", "state", "action", "data", "raw", "code", "words"), INVALID)
def test_invalid_response_is_refused_audited_and_harmless(
    hitl: HitlTestStack, graph, state, action, data, raw, code, words
) -> None:
    before = paused(hitl, graph, state, "t-invalid")
    outcome = hitl.resume("t-invalid", action, data, raw_data=raw)
    assert not outcome.ok
    assert outcome.reply.code == code
    for word in words:
        assert word in outcome.reply.error
    rejected = rejections(hitl, "t-invalid")
    assert len(rejected) == 1 and rejected[0].code == code and rejected[0].action == action
    view = hitl.status("t-invalid")
    assert view.status == "paused"
    assert [p.id for p in view.pending] == [before.pending[0]["id"]]
    # ... and it can still be answered correctly.
    good = {"Approve": ("approve", None), "Edit": ("edit", {"edited": "x"}),
            "Choice": ("choose", {"choice": 2}), "Text": ("respond", {"text": "t"}),
            "Talk": ("end", None)}[graph]
    assert hitl.resume("t-invalid", *good).status == "completed"


def test_unknown_thread_and_ended_thread_are_refused_and_audited(hitl: HitlTestStack) -> None:
    outcome = hitl.resume("never-started", "approve")
    assert outcome.reply.code == "unknown_thread"
    assert "unknown thread 'never-started'" in outcome.reply.error
    assert len(rejections(hitl, "never-started")) == 1

    paused(hitl, "Approve", {"request": "r"}, "t-ended")
    assert hitl.resume("t-ended", "approve").status == "completed"
    late = hitl.resume("t-ended", "reject")
    assert late.reply.code == "thread_ended" and "is completed" in late.reply.error
    assert len(rejections(hitl, "t-ended")) == 1
    assert hitl.status("t-ended").output == "Approved: r"


def test_same_idempotency_key_is_accepted_once(hitl: HitlTestStack) -> None:
    paused(hitl, "Approve", {"request": "r"}, "t-idem")
    first = hitl.resume("t-idem", "approve", idempotency_key="key-1")
    again = hitl.resume("t-idem", "approve", idempotency_key="key-1")
    assert first.ok and again.ok
    assert not first.reply.duplicate and again.reply.duplicate
    assert again.reply.interaction_id == first.reply.interaction_id
    assert again.status == "completed"
    accepted = stored_events(interaction_app(hitl), "ResponseAccepted")
    assert len([e for e in accepted if e.request_id == first.reply.interaction_id]) == 1

    # A refused answer's key repeats the refusal, even once the thread has moved on.
    paused(hitl, "Approve", {"request": "r"}, "t-idem2")
    bad = hitl.resume("t-idem2", "choose", {"choice": 1}, idempotency_key="key-2")
    assert hitl.resume("t-idem2", "approve").ok
    repeat = hitl.resume("t-idem2", "choose", {"choice": 1}, idempotency_key="key-2")
    assert repeat.reply.duplicate and repeat.reply.code == bad.reply.code == "invalid_response"
    assert len(rejections(hitl, "t-idem2")) == 1


def test_a_different_second_answer_is_refused(hitl: HitlTestStack) -> None:
    paused(hitl, "Approve", {"request": "r"}, "t-second")
    request_id = hitl.pending("t-second")[0].id
    assert hitl.resume("t-second", "approve").ok
    second = hitl.resume("t-second", "reject", request_id=request_id)
    assert second.reply.code == "already_answered" or second.reply.code == "thread_ended"
    assert len(rejections(hitl, "t-second")) == 1


def test_ten_concurrent_resumes_exactly_one_wins(hitl: HitlTestStack) -> None:
    paused(hitl, "Approve", {"request": "r"}, "t-race")

    async def race() -> list:
        async with HitlClient(hitl.nats_url) as client:
            return await asyncio.gather(*(
                client.resume("t-race", "approve" if i % 2 else "reject",
                              {"reason": f"responder {i}"}, on_behalf_of=f"user-{i}")
                for i in range(10)
            ))

    outcomes = asyncio.run(race())
    winners = [o for o in outcomes if o.ok]
    assert len(winners) == 1
    losers = [o for o in outcomes if not o.ok]
    assert {o.reply.code for o in losers} <= {"already_answered", "not_waiting", "thread_ended"}
    assert len(rejections(hitl, "t-race")) == 9
    accepted = stored_events(interaction_app(hitl), "ResponseAccepted")
    assert len([e for e in accepted if e.request_id == winners[0].reply.interaction_id]) == 1
    expected = "Approved: r" if winners[0].reply.action == "approve" else "Refused: r"
    assert wait_for(lambda: (v := hitl.status("t-race")) and v.status == "completed" and v,
                    what="the race's winner to finish the thread").output == expected


def test_thread_resumes_on_the_version_it_started_with(hitl: HitlTestStack,
                                                       tmp_path: Path) -> None:
    flow = tmp_path / "flow.csv"
    shutil.copy(TYPES, flow)
    outcome = hitl.start(f"{flow}::Approve", {"request": "r"}, thread_id="t-version")
    assert outcome.status == "paused"
    # The file changes while the thread waits: the success route now says something else.
    flow.write_text(flow.read_text().replace("Approved: {request}", "CHANGED {request}"))
    changed = hitl.start(f"{flow}::Approve", {"request": "r"}, thread_id="t-version-2")
    done = hitl.resume("t-version", "approve")
    assert done.output == "Approved: r"
    assert hitl.resume("t-version-2", "approve").output == "CHANGED r"
    assert changed.status == "paused"
