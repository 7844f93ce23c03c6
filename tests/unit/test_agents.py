"""Agents declared inline, and what the workflow service makes of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from hitlflow.settings import Settings
from services.workflow import agents as agents_module
from services.workflow.agents import INLINE_BUDGET_MS, AgentContext, AgentRegistry, agent
from services.workflow.application import WorkflowService

CTX = AgentContext(thread_id="t-1", node_name="work", agent_type="x", prompt="", context={},
                   state={})


@pytest.fixture(autouse=True)
def own_registrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents registered here stay out of every other test's registry."""
    monkeypatch.setattr(agents_module, "_registered", {})


def test_builtins_and_agents_declared_inline_are_all_inline() -> None:
    @agent("tally", inline=True)
    def tally(inputs: dict[str, Any], ctx: AgentContext) -> int:
        return len(inputs)

    @agent("scorer", inline=True)
    class Scorer:
        def __call__(self, inputs: dict[str, Any], ctx: AgentContext) -> int:
            return 7

    registry = AgentRegistry()
    assert registry.all_inline and registry.not_inline == []
    assert registry.get("tally")({"a": 1}, CTX) == 1
    assert registry.get("scorer")({}, CTX) == 7


def test_one_agent_not_declared_inline_is_named() -> None:
    agent("fast", inline=True)(lambda inputs, ctx: 1)
    agent("calls_a_model")(lambda inputs, ctx: 2)
    registry = AgentRegistry({"from_extra": lambda inputs, ctx: 3})
    assert not registry.all_inline
    assert registry.not_inline == ["calls_a_model", "from_extra"]


def test_an_inline_agent_that_overruns_is_reported_and_its_value_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Timed on a clock the agent moves itself: a busy machine cannot make the quick run slow."""
    clock = [100.0]
    monkeypatch.setattr(agents_module.time, "perf_counter", lambda: clock[0])

    @agent("dawdler", inline=True)
    def dawdler(inputs: dict[str, Any], ctx: AgentContext) -> str:
        clock[0] += inputs["ms"] / 1000
        return "done"

    run = AgentRegistry().get("dawdler")
    with capture_logs() as quick:
        assert run({"ms": INLINE_BUDGET_MS / 2}, CTX) == "done"
    assert quick == []
    with capture_logs() as slow:
        assert run({"ms": INLINE_BUDGET_MS * 3}, CTX) == "done"
    [entry] = slow
    assert entry["event"] == "inline_agent_overran" and entry["log_level"] == "warning"
    assert entry["agent_type"] == "dawdler" and entry["node"] == "work"
    assert entry["duration_ms"] == INLINE_BUDGET_MS * 3


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    return Settings(home=tmp_path).store_env("workflow")


def test_the_workflow_service_decides_on_its_loop_only_when_every_agent_is_inline(
        store_env: dict[str, str]) -> None:
    agent("fast", inline=True)(lambda inputs, ctx: 1)
    with capture_logs() as logs:
        inline = WorkflowService(store_env, agents=AgentRegistry())
    assert inline.decides_in_loop
    assert {"event": "workflow_decisions", "on_event_loop": True, "agents_not_inline": [],
            "log_level": "info"} in logs

    agent("calls_a_model")(lambda inputs, ctx: 2)
    with capture_logs() as logs:
        mixed = WorkflowService(store_env, agents=AgentRegistry())
    assert not mixed.decides_in_loop
    assert {"event": "workflow_decisions", "on_event_loop": False,
            "agents_not_inline": ["calls_a_model"], "log_level": "info"} in logs
    inline.close()
    mixed.close()
