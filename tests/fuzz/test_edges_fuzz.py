"""Fuzzing the edges through the real handlers: command JSON (well-formed, broken, oversized,
naming other threads), thread ids and subjects, and CSV workflows, sent to one real stack.

Every message must get a clear answer (a refusal with a known code and a reason, or a correct
result), no service may crash, no consumer may be left stuck, and a thread paused before the
fuzzing must still resume after it. ``HITLFLOW_FUZZ_EXAMPLES`` sets how many examples each
property tries (CI: the default, 800, well under a minute in all; ``make fuzz``: 20,000 each).
"""

from __future__ import annotations

import csv
import io
import json
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nats.js.api import ConsumerInfo

from contracts import subjects
from contracts.catalog import REFUSAL_CODES
from contracts.limits import MAX_COMMAND_BYTES
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from services.workflow.definition import WorkflowError, check_workflow, load_workflow
from tests.conftest import EXAMPLE_AGENTS, ROOT
from tests.helpers import wait_for

TYPES = str(ROOT / "tests" / "workflows" / "types.csv")
EXAMPLES = int(os.environ.get("HITLFLOW_FUZZ_EXAMPLES", "800"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
#: Threads the fuzzing may answer (one of each type, paused), and the one it must not touch.
TARGETS = {"fz-approve": "Approve", "fz-edit": "Edit", "fz-choice": "Choice",
           "fz-text": "Text", "fz-talk": "Talk"}
ANCHOR = "fz-anchor"
#: Stands for the ``shown`` of the request open when an answer is sent.
CURRENT = "<shown of the open request>"
REPLY_WAIT = 20.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HitlTestStack]:
    home = tmp_path_factory.mktemp("fuzz")
    # no users on this NATS: the fuzzing sends as any principal
    with HitlTestStack(home, agents=[EXAMPLE_AGENTS],
                       settings=Settings(home=home, auth=False)) as hitl:
        states = {"Approve": {"request": "r"}, "Edit": {"draft": "d"}, "Choice": {"app": "a"},
                  "Text": {"feature": "f"}, "Talk": {"topic": "t"}}
        for thread, graph in {**TARGETS, ANCHOR: "Approve"}.items():
            hitl.assert_paused(hitl.start(f"{TYPES}::{graph}", states[graph],
                                          thread_id=thread))
        yield hitl
        # after all the fuzzing: the anchor still resumes, a new thread runs through, and no
        # consumer holds a message it cannot get past
        hitl.assert_completed(hitl.resume(ANCHOR, "approve"), output="Approved: r")
        fresh = hitl.start(f"{TYPES}::Approve", {"request": "after"}, thread_id="fz-after")
        hitl.assert_paused(fresh)
        hitl.assert_completed(hitl.resume("fz-after", "approve"), output="Approved: after")
        try:
            wait_for(lambda: not stuck_consumers(hitl), timeout=30,
                     what="every consumer to have handled every message")
        except AssertionError as error:
            raise AssertionError(f"{error}: {stuck_consumers(hitl)}") from None


def stuck_consumers(hitl: HitlTestStack) -> list[str]:
    async def infos() -> list[ConsumerInfo]:
        js = hitl.client.nc.jetstream()
        found = []
        for stream in (subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM):
            found += await js.consumers_info(stream)
        return found

    return [f"{i.name}: {i.num_pending} pending, {i.num_ack_pending} unacknowledged"
            for i in hitl.call(infos()) if i.num_pending or i.num_ack_pending]


async def _send(hitl: HitlTestStack, subject: str, body: bytes) -> dict[str, Any]:
    nc = hitl.client.nc
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.jetstream().publish(subject, body, headers={subjects.REPLY_TO_HEADER: inbox})
        msg = await replies.next_msg(REPLY_WAIT)
    finally:
        await replies.unsubscribe()
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


def send(hitl: HitlTestStack, subject: str, body: bytes) -> dict[str, Any]:
    """Publish as another system would; the reply must come (a stuck consumer never answers)."""
    return hitl.call(_send(hitl, subject, body))  # type: ignore[no-any-return]


def assert_clear(reply: dict[str, Any], command: str) -> None:
    """A reply is a result, or a refusal with a known code and a reason in words."""
    assert reply["command"] == command
    if reply["ok"]:
        event(f"{command}: accepted")
        return
    assert reply["code"] in REFUSAL_CODES, reply
    assert isinstance(reply["error"], str) and len(reply["error"]) > 10, reply
    assert "Traceback" not in reply["error"]
    event(f"{command}: {reply['code']}")


# -- strategies -------------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                      st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
big_text = st.integers(min_value=0, max_value=400_000).map(lambda n: "x" * n)
thread_ids = st.one_of(st.sampled_from([*TARGETS, ANCHOR, "unknown-1"]),
                       st.text(alphabet=string.ascii_letters + string.digits + "_-",
                               min_size=1, max_size=140),
                       st.text(max_size=20))
actions = st.one_of(st.sampled_from(["approve", "reject", "edit", "choose", "respond", "end"]),
                    st.text(max_size=80))
answer_data = st.one_of(
    json_value,
    st.fixed_dictionaries({"reason": st.one_of(st.text(max_size=50), big_text)}),
    st.fixed_dictionaries({"edited": st.one_of(st.text(max_size=50), json_value)}),
    st.fixed_dictionaries({"choice": st.one_of(st.integers(-2, 6), st.text(max_size=30),
                                               json_value)}),
    st.fixed_dictionaries({"text": st.one_of(st.text(max_size=50), json_value)}),
    st.fixed_dictionaries({"message": st.one_of(st.text(max_size=50), big_text)}),
)


@st.composite
def resume_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A subject of a fuzz target and a body: a well-formed ResumeThread, one with fields
    missing, wrong, extra or oversized, one naming another thread, or not JSON at all."""
    subject_thread = draw(st.sampled_from(list(TARGETS)))
    shape = draw(st.sampled_from(["valid", "fields", "other_thread", "raw", "huge"]))
    body: dict[str, Any] = {
        "thread_id": subject_thread, "action": draw(actions), "data": draw(answer_data),
        "idempotency_key": draw(st.one_of(st.uuids().map(str), st.text(max_size=220))),
        # mostly the request as it is open now (filled in when sent), else anything
        "shown": draw(st.one_of(st.just(CURRENT), st.just(CURRENT), st.just("1:x"),
                                st.text(max_size=120))),
        "on_behalf_of": draw(st.one_of(st.none(), st.just("fuzz"), st.text(max_size=220))),
    }
    if shape == "fields":
        for key in draw(st.lists(st.sampled_from([*body, "request_id", "raw_data", "extra",
                                                  "schema_version", "groups", "principal"]),
                                 max_size=3)):
            if key in body and draw(st.booleans()):
                del body[key]
            else:
                body[key] = draw(json_value)
    elif shape == "other_thread":
        body["thread_id"] = draw(thread_ids)
    elif shape == "raw":
        return subject_thread, draw(st.binary(max_size=200))
    elif shape == "huge":
        body["data"] = {"reason": "h" * draw(st.integers(MAX_COMMAND_BYTES - 1000,
                                                         MAX_COMMAND_BYTES + 5000))}
    return subject_thread, json.dumps(body).encode()


@FUZZ
@given(message=resume_bodies())
def test_fuzzed_answers_get_a_clear_reply(stack: HitlTestStack,
                                         message: tuple[str, bytes]) -> None:
    thread, body = message
    if CURRENT.encode() in body:
        pending = stack.pending(thread)
        shown = pending[0].shown if pending else "-"
        body = body.replace(json.dumps(CURRENT).encode(), json.dumps(shown).encode())
    assert_clear(send(stack, subjects.resume_subject("erp", thread), body), "resume")


@st.composite
def start_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A StartThread of the guide's approval flow, mutated: its state, its nodes' fields (an
    unknown agent, a context that is not an object or asks for too much, a missing field),
    the thread it names, or a body that is barely one."""
    thread = "fx-" + draw(st.text(alphabet=string.ascii_letters + string.digits,
                                  min_size=1, max_size=12))
    spec = json.loads(WORKFLOW)
    body: dict[str, Any] = {"thread_id": thread, "workflow": spec,
                            "state": {"request": draw(st.text(max_size=30))}}
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(["state", "node", "thread", "drop", "prompt"]))
        node = draw(st.sampled_from(spec["nodes"]))
        if target == "state":
            body["state"] = draw(st.one_of(json_value, st.dictionaries(
                st.text(max_size=8), json_value, max_size=4)))
        elif target == "node":
            node[draw(st.sampled_from(["agent_type", "context", "next_on_success",
                                       "input_fields", "name"]))] = draw(json_value)
        elif target == "thread":
            body["thread_id"] = draw(thread_ids)
        elif target == "prompt":
            node["prompt"] = "{request}" * draw(st.integers(0, 20_000))
        else:
            node.pop(draw(st.sampled_from(["name", "agent_type", "prompt"])), None)
    return thread, json.dumps(body).encode()


#: The Approve graph as StartThread carries it.
WORKFLOW = load_workflow(f"{TYPES}::Approve").model_dump_json()


@FUZZ
@given(message=start_bodies())
def test_fuzzed_starts_get_a_clear_reply(stack: HitlTestStack,
                                         message: tuple[str, bytes]) -> None:
    thread, body = message
    assert_clear(send(stack, subjects.start_subject("erp", thread), body), "start")


@FUZZ
@given(thread=st.sampled_from([*TARGETS, "unknown-1"]),
       body=st.dictionaries(st.sampled_from(["thread_id", "reason", "requested_by", "extra"]),
                            st.one_of(json_value, big_text), max_size=4),
       same_thread=st.booleans())
def test_fuzzed_cancels_get_a_clear_reply(stack: HitlTestStack, thread: str,
                                          body: dict[str, Any], same_thread: bool) -> None:
    if same_thread:
        body["thread_id"] = thread
    assert_clear(send(stack, subjects.cancel_subject("erp", thread), json.dumps(body).encode()),
                 "cancel")


@FUZZ
@given(token=st.text(alphabet=st.characters(blacklist_characters=" \t\r\n.*>\x00",
                                            blacklist_categories=("Cs",)),
                     min_size=1, max_size=150))
def test_any_subject_token_is_answered(stack: HitlTestStack, token: str) -> None:
    """Thread ids come from the subject: whatever a publisher puts there is refused or used,
    never a crash, for commands and for queries."""
    body = json.dumps({"thread_id": token, "action": "approve", "idempotency_key": "k",
                       "shown": "1:x"})
    assert_clear(send(stack, f"hitl.cmd.resume.erp.{token}", body.encode()), "resume")
    reply = stack.call(stack.client._query(f"hitl.q.thread.{token}", {}, timeout=5))
    assert reply.get("thread") is not None or reply["error"]["code"] in REFUSAL_CODES


COLUMNS = ["graph_name", "node_name", "agent_type", "next_on_success", "next_on_failure",
           "prompt", "input_fields", "output_field", "context"]
cells = st.one_of(
    st.sampled_from(["G", "start", "end", "a", "input", "output", "echo",
                     "approval_interaction", "choice_interaction", "human", "x", "y", "",
                     '{"interaction_type": "approval"}', '{"options": ["A", "B"]}',
                     '{"condition": "x >"}', "{bad json", "Please {x}", "{y|none}", "x,y"]),
    st.text(max_size=30))


@FUZZ
@given(header=st.one_of(st.just(COLUMNS), st.permutations(COLUMNS),
                        st.lists(st.sampled_from([*COLUMNS, "other"]), max_size=10)),
       body=st.lists(st.lists(cells, min_size=0, max_size=10), max_size=8),
       noise=st.one_of(st.just(""), st.text(max_size=50)))
def test_fuzzed_csv_is_refused_with_its_place_or_runs(stack: HitlTestStack, header: list[str],
                                                      body: list[list[str]],
                                                      noise: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(body)
    text = out.getvalue() + noise
    try:
        report = check_workflow(Path("fuzz.csv"), text=text, registry=stack.registry)
    except WorkflowError as error:
        assert error.problems and all(str(p).startswith("fuzz.csv") for p in error.problems)
        event("csv: refused")
        return
    if report.spec is None:
        assert report.errors
        event("csv: errors")
        return
    outcome = stack.call(stack.client.start(report.spec, {"x": 1}, wait=False))
    assert outcome.reply.ok or outcome.reply.code in REFUSAL_CODES, outcome.reply
    event("csv: started" if outcome.reply.ok else f"csv: {outcome.reply.code}")
