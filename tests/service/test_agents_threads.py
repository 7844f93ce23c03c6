"""An agent not declared inline runs in a worker thread: while it waits, the workflow service
goes on with other threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from hitlflow.client import Outcome
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from services.workflow import agents as agents_module
from services.workflow.agents import AgentContext, agent
from tests.conftest import ROOT

TYPES = f"{ROOT / 'tests' / 'workflows' / 'types.csv'}::Approve"
GATED = "\n".join([
    "graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,input_fields,"
    "output_field,context",
    "Gated,start,input,wait,,,request,request,",
    "Gated,wait,gated_agent,,,,request,result,",
]) + "\n"


def test_a_waiting_agent_holds_up_no_other_thread(tmp_path: Path, settings: Settings,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents_module, "_registered", {})  # kept out of other tests
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()

    @agent("gated_agent")  # not inline: it waits on something outside
    def gated(inputs: dict[str, Any], ctx: AgentContext) -> str:
        entered.set()
        release.wait(30)
        returned.set()
        return f"through: {inputs['request']}"

    csv = tmp_path / "gated.csv"
    csv.write_text(GATED)
    with HitlTestStack(tmp_path / "stack", settings=settings) as hitl:
        other = hitl.start(TYPES, {"request": "b"}, thread_id="other")
        assert other.status == "paused"

        gated_outcome: list[Outcome] = []
        starting = threading.Thread(target=lambda: gated_outcome.append(
            hitl.start(f"{csv}::Gated", {"request": "a"}, thread_id="gated")))
        starting.start()
        try:
            assert entered.wait(20), "the gated agent never ran"
            done = hitl.resume("other", "approve")
            # answered and completed while the gated agent still waits
            assert not returned.is_set()
            assert done.status == "completed" and done.output == "Approved: b"
        finally:
            release.set()
            starting.join(30)
        assert gated_outcome[0].status == "completed"
        assert gated_outcome[0].output == "through: a"
