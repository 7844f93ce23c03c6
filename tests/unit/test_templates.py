"""Templates: ``{field}`` and ``{field|default}`` filled from the thread state, a marker for a
field the state lacks (never the placeholder itself), other braces left as text; and what the
Thread aggregate records when a prompt had to show the marker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.workflow.agents import AgentRegistry
from services.workflow.definition import parse_workflow
from services.workflow.domain import Graph, Thread
from services.workflow.templates import Placeholder, fields_of, fill, placeholders, render


@pytest.mark.parametrize(("template", "state", "text", "missing"), [
    ("Request completed: {final_result}", {"final_result": "done"},
     "Request completed: done", ()),
    ("Request completed: {final_result}", {}, "Request completed: (no final_result)",
     ("final_result",)),
    ("Request completed: {final_result|no result}", {}, "Request completed: no result", ()),
    ("Request completed: {final_result|no result}", {"final_result": "ok"},
     "Request completed: ok", ()),
    ("{a|}{b}", {}, "(no b)", ("b",)),                                   # an empty default
    ("{a} and {a} and {b}", {}, "(no a) and (no a) and (no b)", ("a", "b")),  # once each
    ("Total: {n}, items: {items}, flag: {flag}, none: {v}",
     {"n": 3, "items": ["x", "é"], "flag": True, "v": None},
     'Total: 3, items: ["x", "é"], flag: true, none: null', ()),          # non-text as JSON
    ("{x|a default, with: punctuation!}", {}, "a default, with: punctuation!", ()),
    ("{x|{y}}", {"y": "Y"}, "{x|Y}", ()),             # no nesting: {y} is a field, the rest text
])
def test_render_fills_fields_defaults_and_marks_what_is_missing(
        template: str, state: dict[str, Any], text: str, missing: tuple[str, ...]) -> None:
    rendered = fill(template, state)
    assert rendered.text == text
    assert rendered.missing == missing
    assert render(template, state) == text


@pytest.mark.parametrize("template", [
    'Reply with JSON like {"amount": 10, "currency": "EUR"}',
    "Braces with spaces { name } or {name.attr} or {items[0]} or {0} or {x:>10} or {}",
    "A set {1, 2} and a lone { and }",
    "Format spec {amount!r}",
])
def test_braces_that_are_not_fields_are_left_alone(template: str) -> None:
    rendered = fill(template, {"name": "N", "amount": 5, "items": [1], "x": "X"})
    assert rendered.text == template
    assert rendered.missing == ()
    assert fields_of(template) == []


def test_a_value_is_not_filled_again() -> None:
    """A value holding braces is put in as it is: it is never read as a template."""
    assert render("Said: {text}", {"text": "{secret} and {text}"}) == "Said: {secret} and {text}"


def test_fields_of_gives_plain_names_and_placeholders_their_defaults() -> None:
    template = "{a} {b|none yet} {a|x} {c|}"
    assert fields_of(template) == ["a", "b", "a", "c"]
    assert placeholders(template) == [Placeholder("a"), Placeholder("b", "none yet"),
                                      Placeholder("a", "x"), Placeholder("c", "")]


# -- what the thread records --------------------------------------------------------------------

HEADER = ("graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,input_fields,"
          "output_field,context\n")


def run(body: str, state: dict[str, Any]) -> Thread:
    spec = parse_workflow(HEADER + body, "G", AgentRegistry())
    thread = Thread(thread_id="t-templates", graph_name="G", workflow_digest="d", inputs=state,
                    started_by="test", start_node=spec.nodes[0].name)
    thread.advance(Graph(spec), AgentRegistry(), lambda: datetime(2026, 1, 1, tzinfo=UTC))
    return thread


def completions(thread: Thread) -> dict[str, dict[str, Any]]:
    """Each node's (latest) NodeCompleted event of the thread, as a dict."""
    return {e.node: vars(e) for e in thread.collect_events()
            if type(e).__name__ == "NodeCompleted"}


def test_an_output_node_records_the_fields_its_text_lacked() -> None:
    thread = run("G,start,input,done,,,request,request,\n"
                 "G,done,output,,,Done: {request} / {result} / {note|no note},,out,\n",
                 {"request": "r"})
    assert thread.status == "completed"
    assert thread.output == "Done: r / (no result) / no note"
    events = completions(thread)
    assert events["done"]["details"] == {"missing_fields": ["result"]}
    assert events["start"]["details"] is None  # no prompt, nothing missing


def test_an_agent_keeps_its_own_details_beside_the_missing_fields() -> None:
    thread = run("G,start,input,check,,,request,request,\n"
                 "G,check,branching,done,,Check {request} against {policy},request,ok,\n"
                 "G,done,output,,,Done,,out,\n", {"request": {"success": True}})
    assert completions(thread)["check"]["details"] == {"missing_fields": ["policy"]}


def test_a_request_shows_the_marker_and_names_the_missing_fields_in_its_context() -> None:
    thread = run('G,start,input,ask,,,request,request,\n'
                 'G,ask,approval_interaction,done,,Approve {request} for {owner}?,request,'
                 'answer,"{""department"": ""IT""}"\n'
                 "G,done,output,,,Done,,out,\n", {"request": "laptops"})
    (spec,) = thread.pending.values()
    assert spec["prompt"] == "Approve laptops for (no owner)?"
    assert spec["context"] == {"department": "IT", "request": "laptops",
                               "missing_fields": ["owner"]}


def test_a_complete_request_has_no_missing_fields() -> None:
    thread = run("G,start,input,ask,,,request,request,\n"
                 "G,ask,approval_interaction,done,,Approve {request}?,request,answer,\n"
                 "G,done,output,,,Done,,out,\n", {"request": "laptops"})
    (spec,) = thread.pending.values()
    assert "missing_fields" not in spec["context"]


def test_each_batch_request_names_what_its_own_prompt_lacked() -> None:
    thread = run('G,start,input,review,,,items,items,\n'
                 'G,review,approval_interaction,done,,Batch {batch_number} of {total_batches} '
                 'for {reviewer},items,reviews,"{""batch"": 2}"\n'
                 "G,done,output,,,Done,,out,\n", {"items": [1, 2, 3]})
    specs = sorted(thread.pending.values(), key=lambda s: s["batch_index"])
    assert [s["prompt"] for s in specs] == ["Batch 1 of 2 for (no reviewer)",
                                            "Batch 2 of 2 for (no reviewer)"]
    assert [s["context"]["missing_fields"] for s in specs] == [["reviewer"], ["reviewer"]]
