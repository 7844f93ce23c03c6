"""Property: any CSV that ``validate`` accepts (no errors) loads, starts and runs on without a
crash — every pause answered with a valid response, until it ends or a bounded number of rounds.

The graphs are random: node names, agent types (built-ins, interaction agents, the examples'
user agents, unknown ones), links (existing, missing, loops), prompts, input and output fields,
and contexts mixing valid and invalid interaction settings (conditions, batches, fallbacks,
schemas, options). The workflow service runs in process on a real SQLite store.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from contracts.commands import StartThread
from hitlflow.settings import Settings
from services.common.responses import decide
from services.workflow import domain
from services.workflow.agents import AgentRegistry
from services.workflow.application import WorkflowService
from services.workflow.definition import check_workflow, load_workflow, parse_workflow
from services.workflow.domain import Thread, thread_uuid

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = AgentRegistry.load([str(ROOT / "examples" / "agents.py")])
NAMES = ["start", "a", "b", "c", "d", "end"]
AGENTS = [
    "input", "output", "echo", "default", "branching", "approval_interaction",
    "edit_interaction", "choice_interaction", "text_input_interaction",
    "conversation_interaction", "human", "validation_agent", "processing_agent",
    "content_generator", "analysis_agent", "implementation_agent", "refinement_agent",
    "conversation_agent", "summary_agent", "no_such_agent",
]
FIELDS = ["x", "request", "items", "amount", "y"]
FRAGMENTS: list[dict[str, Any]] = [
    {"options": ["One", "Two", "Three"]},
    {"options": []},
    {"interaction_type": "choice"},
    {"interaction_type": "approval"},
    {"interaction_type": "conversation"},
    {"interaction_type": "nope"},
    {"condition": "amount > 10"},
    {"condition": "len(items) > 2 and x != 'stop'"},
    {"condition": "missing_name == 1"},
    {"condition": "amount >"},
    {"otherwise": {"action": "choose", "data": {"choice": 2}}},
    {"otherwise": {"action": "respond", "data": {"text": "auto"}}},
    {"otherwise": {"action": "end"}},
    {"batch": 2},
    {"batch": {"items": "items", "size": 3}},
    {"batch": {"items": "x"}},
    {"batch": 0},
    {"fallback": {"to": "end"}},
    {"fallback": {"to": "a", "when": "always"}},
    {"fallback": {"action": "approve"}},
    {"fallback": {"action": "reject", "when": "always"}},
    {"response_schema": {"type": "object"}},
    {"response_schema": {"type": "object", "required": ["reason"]}},
    {"response_schema": {"type": "wrong"}},
    {"timeout_seconds": 30},
    {"department": "Engineering"},
]
#: A valid answer per interaction type (the property is about crashes, not about the answer).
ANSWERS = {
    "approval": ("approve", {"reason": "fine"}),
    "edit": ("approve", {}),
    "choice": ("choose", {"choice": 1}),
    "text_input": ("respond", {"text": "more requirements", "reason": "x"}),
    "conversation": ("end", {"reason": "done"}),
}
MAX_ROUNDS = 8


VALID_AGENTS = [a for a in AGENTS if a != "no_such_agent"]
BROKEN_FRAGMENTS = [{"options": []}, {"interaction_type": "nope"}, {"condition": "amount >"},
                    {"batch": 0}, {"response_schema": {"type": "wrong"}}]


def context(draw: st.DrawFn, agent_type: str) -> str:
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from(["{not json", "[1]"]))
    interactive = agent_type.endswith("_interaction") or agent_type == "human"
    if not interactive and draw(st.integers(0, 10)) > 0:  # control keys need interaction nodes
        return draw(st.sampled_from(["", '{"department": "Engineering"}', '{"max_turns": 2}']))
    parts = draw(st.lists(st.sampled_from(FRAGMENTS), max_size=3))
    merged = {k: v for part in parts for k, v in part.items()}
    if agent_type == "choice_interaction" and draw(st.booleans()):
        merged.setdefault("options", ["One", "Two", "Three"])
        if not merged["options"]:
            merged["options"] = ["Only"]
    if agent_type == "human" and draw(st.integers(0, 4)) > 0:
        merged.setdefault("interaction_type", draw(st.sampled_from(
            ["approval", "edit", "text_input", "conversation"])))
    return json.dumps(merged) if merged else ""


@st.composite
def rows(draw: st.DrawFn) -> list[list[str]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    if draw(st.integers(0, 20)) == 0:  # now and then a duplicate node
        names.append(names[-1])
    links = st.sampled_from([*names, "", "", "ghost" if draw(st.integers(0, 20)) == 0 else ""])
    body = []
    for name in names:
        agent_type = draw(st.sampled_from(AGENTS if draw(st.integers(0, 25)) == 0
                                          else VALID_AGENTS))
        body.append(["G", name, agent_type, draw(links), draw(links),
                     draw(st.sampled_from(["", "Hello {x}", "About {request}", "{nothing}",
                                           "Batch {batch_number} of {total_batches}"])),
                     "|".join(draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True))),
                     draw(st.sampled_from(["", *FIELDS])), context(draw, agent_type)])
    return body


def states() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "x": st.sampled_from(["hello", "stop", ""]),
        "request": st.sampled_from(["Buy 3 laptops", "", "Refactor the checkout"]),
        "items": st.lists(st.integers(0, 99), max_size=7),
        "amount": st.integers(-5, 50),
    })


def write(path: Path, body: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["graph_name", "node_name", "agent_type", "next_on_success",
                         "next_on_failure", "prompt", "input_fields", "output_field", "context"])
        writer.writerows(body)


def answer_pending(app: WorkflowService, thread: Thread) -> None:
    for request_id, spec in list(thread.pending.items()):
        action, data = ANSWERS[spec["interaction_type"]]
        schema = spec.get("response_schema") or {}
        if schema.get("required"):
            data = {**data, **{k: "given" for k in schema["required"]}}
        decision = decide(spec["interaction_type"], spec["options"], spec["context"], action,
                          data)
        thread.resume(request_id, action, data, decision.value, decision.route, "property")
    thread.advance(app._graph_of(thread), app.agents, app.clock.now)
    app.save(thread)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(body=rows(), state=states())
def test_whatever_validate_accepts_starts_and_runs_without_a_crash(
    tmp_path: Path, body: list[list[str]], state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a graph looping through automatic nodes fails at the step limit: the same way after 40
    # steps as after 1,000, for a fortieth of the events to write and read back
    monkeypatch.setattr(domain, "MAX_STEPS_PER_ADVANCE", 40)
    path = tmp_path / "random.csv"
    write(path, body)
    report = check_workflow(path, registry=REGISTRY)
    assume(not report.errors)

    spec = load_workflow(path, registry=REGISTRY)  # accepted by validate → loads
    app = _app(tmp_path)
    thread_id = f"p{next(_ids)}"
    reply = app.start_thread(StartThread(thread_id=thread_id, workflow=spec, state=state), "t",
                             next(_positions))
    if not reply.ok:  # a refusal with a reason is fine (e.g. state lacks a start input)
        assert reply.code == "missing_input" and reply.error
        event("refused: missing input")
        return
    for _ in range(MAX_ROUNDS):
        thread: Thread = app.repository.get(thread_uuid(thread_id))
        assert thread.status in ("paused", "completed", "failed"), thread.status
        if thread.status != "paused":
            break
        assert thread.pending
        answer_pending(app, thread)
    event(f"ended {thread.status} after {thread.pause_count} pause(s)")
    if thread.status == "failed":
        assert thread.error  # failures say why


_ids = itertools.count()
_positions = itertools.count(1)
_apps: dict[Path, WorkflowService] = {}


def _app(tmp_path: Path) -> WorkflowService:
    # one store per test run (hypothesis shares tmp_path across examples)
    if tmp_path not in _apps:
        _apps[tmp_path] = WorkflowService(Settings(home=tmp_path).store_env("workflow"),
                                          agents=REGISTRY)
    return _apps[tmp_path]


def run_loop(tmp_path: Path, registry: AgentRegistry, rows: str) -> Thread:
    """Start the graph ``Loop`` (its rows, without the header) with ``text`` = "ab" on a
    workflow store of its own; the thread as it ended."""
    header = ("graph_name,node_name,agent_type,input_fields,output_field,next_on_success,"
              "next_on_failure,prompt,context\n")
    spec = parse_workflow(header + rows, "Loop", registry)
    app = WorkflowService(Settings(home=tmp_path).store_env("workflow"), agents=registry)
    try:
        reply = app.start_thread(StartThread(thread_id="loop-1", workflow=spec,
                                             state={"text": "ab"}), "t", 1)
        assert reply.ok, reply.error
        thread: Thread = app.repository.get(thread_uuid("loop-1"))
        return thread
    finally:
        app.close()


def test_a_loop_that_feeds_a_node_its_own_growing_output_fails_the_thread(
        tmp_path: Path) -> None:
    """Each pass doubles the text: the node fails once its output passes the size limit,
    instead of the service running out of memory."""
    registry = AgentRegistry({"double": lambda inputs, ctx: str(inputs["text"]) * 2})
    thread = run_loop(tmp_path, registry, "Loop,start,input,text,text,grow,,,\n"
                                          "Loop,grow,double,text,text,grow,,,\n")
    assert thread.status == "failed"
    assert "more than the 524,288 bytes (512 KiB) allowed" in str(thread.error)


def test_a_loop_of_automatic_nodes_fails_the_thread_at_the_step_limit(tmp_path: Path) -> None:
    """Nodes that pass the same value round and round never pause: the thread fails after
    ``MAX_STEPS_PER_ADVANCE`` steps, saying why, instead of looping for ever."""
    registry = AgentRegistry({"same": lambda inputs, ctx: inputs["text"]})
    thread = run_loop(tmp_path, registry, "Loop,start,input,text,text,a,,,\n"
                                          "Loop,a,same,text,text,b,,,\n"
                                          "Loop,b,same,text,text,a,,,\n")
    assert thread.status == "failed"
    assert f"more than {domain.MAX_STEPS_PER_ADVANCE} steps without a pause" in str(thread.error)


def test_a_graph_checked_once_is_still_checked_for_each_start_s_own_state(
        tmp_path: Path) -> None:
    """A workflow version's graph checks are done once (they hold for every start of it); the
    state each start brings, and another graph's checks, are not skipped because of it."""
    registry = AgentRegistry({"echo": lambda inputs, ctx: inputs["text"]})
    header = ("graph_name,node_name,agent_type,input_fields,output_field,next_on_success,"
              "next_on_failure,prompt,context\n")
    good = parse_workflow(header + "Echo,start,input,text,text,echo,,,\n"
                          "Echo,echo,echo,text,out,,,,\n", "Echo", registry)
    app = WorkflowService(Settings(home=tmp_path).store_env("workflow"), agents=registry)
    try:
        def start(thread_id: str, spec: Any, state: dict[str, Any], position: int) -> Any:
            return app.start_thread(StartThread(thread_id=thread_id, workflow=spec,
                                                state=state), "t", position)

        assert start("ok-1", good, {"text": "a"}, 1).ok
        missing = start("no-text", good, {}, 2)
        assert (missing.ok, missing.code) == (False, "missing_input")
        assert "'text'" in str(missing.error)
        assert start("ok-2", good, {"text": "b"}, 3).ok
        # the same graph with an agent this service does not know is another version
        unknown = good.model_copy(update={"nodes": (
            good.nodes[0], good.nodes[1].model_copy(update={"agent_type": "nowhere"}))})
        assert unknown.digest != good.digest
        refused = start("unknown", unknown, {"text": "c"}, 4)
        assert (refused.ok, refused.code) == (False, "unknown_agent")
        assert start("ok-3", good, {"text": "d"}, 5).ok
    finally:
        app.close()
