"""The same approval workload on LangGraph: interrupt() + Command(resume=...), SQLite checkpointer.

In process, as LangGraph is meant to be embedded. The nodes call the very agents hitlflow's
example uses (examples/agents.py), so both engines run the same user code. LangGraph's own
defaults are kept (durability ``"async"``: a checkpoint is written while the next step runs).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, TypedDict

from bench.workload import REQUEST, open_loop, prepare_paused, run_cycles
from examples.agents import process_request, validate_request
from hitlflow.agents import AgentContext, AgentResult


class ApprovalState(TypedDict, total=False):
    user_request: str
    request_data: Any
    validation_result: Any
    approval_response: Any
    final_result: Any
    completion_message: Any
    rejection_message: Any


def _ctx(node: str, agent_type: str, prompt: str, state: ApprovalState) -> AgentContext:
    return AgentContext(thread_id="", node_name=node, agent_type=agent_type, prompt=prompt,
                        context={}, state=dict(state))


def build_graph(checkpointer: Any) -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    def start(state: ApprovalState) -> ApprovalState:
        return {"request_data": state["user_request"]}

    def validate(state: ApprovalState) -> ApprovalState:
        result = validate_request({"request_data": state["request_data"]},
                                  _ctx("validate", "validation_agent", "Validate request", state))
        assert isinstance(result, AgentResult)
        return {"validation_result": result.value}

    def approve_gate(state: ApprovalState) -> ApprovalState:
        answer = interrupt({
            "interaction_type": "approval",
            "prompt": f"Please approve this request: {state['validation_result']}",
            "context": {"validation_result": state["validation_result"]},
        })
        data = answer.get("data") or {}
        return {"approval_response": {"approved": answer["action"] == "approve", **data}}

    def process(state: ApprovalState) -> ApprovalState:
        value = process_request({"request_data": state["request_data"]},
                                _ctx("process", "processing_agent", "Process approved request",
                                     state))
        return {"final_result": value}

    def end(state: ApprovalState) -> ApprovalState:
        return {"completion_message": f"Request completed: {state.get('final_result')}"}

    def reject(state: ApprovalState) -> ApprovalState:
        return {"rejection_message": "Request rejected due to validation failure"}

    graph = StateGraph(ApprovalState)
    for name, fn in (("start", start), ("validate", validate), ("approve_gate", approve_gate),
                     ("process", process), ("end", end), ("reject", reject)):
        graph.add_node(name, fn)
    graph.add_edge(START, "start")
    graph.add_edge("start", "validate")
    graph.add_conditional_edges(
        "validate", lambda s: "approve_gate" if s["validation_result"]["valid"] else "reject")
    graph.add_conditional_edges(
        "approve_gate", lambda s: "process" if s["approval_response"]["approved"] else "end")
    graph.add_edge("process", "end")
    graph.add_edge("end", END)
    graph.add_edge("reject", END)
    return graph.compile(checkpointer=checkpointer)


APPROVE = {"action": "approve", "data": None}


def _config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def _check_paused(result: Any, thread_id: str) -> None:
    if "__interrupt__" not in result:
        raise RuntimeError(f"thread {thread_id} did not pause")


def _check_completed(result: Any, thread_id: str) -> None:
    if "completion_message" not in result:
        raise RuntimeError(f"thread {thread_id} did not complete")


def sync_cycles(db: Path, duration: float, warmup: float) -> dict[str, Any]:
    """One thread in flight, the synchronous API and SqliteSaver."""
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.types import Command

    conn = sqlite3.connect(str(db), check_same_thread=False)
    try:
        graph = build_graph(SqliteSaver(conn))

        async def cycle(thread_id: str) -> tuple[float, float]:
            config = _config(thread_id)
            t0 = time.perf_counter()
            _check_paused(graph.invoke(dict(REQUEST), config), thread_id)
            t1 = time.perf_counter()
            _check_completed(graph.invoke(Command(resume=APPROVE), config), thread_id)
            return t1 - t0, time.perf_counter() - t1

        return asyncio.run(run_cycles(cycle, 1, duration, warmup, "lgs")).as_dict()
    finally:
        conn.close()


async def async_phases(db: Path, in_flights: list[int], duration: float, warmup: float,
                       rate: float, resumes: int) -> dict[str, Any]:
    """Cycles at each in-flight count, then resume latency at a steady rate (async API)."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.types import Command

    results: dict[str, Any] = {}
    async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
        graph = build_graph(saver)

        async def pause(thread_id: str) -> float:
            t0 = time.perf_counter()
            _check_paused(await graph.ainvoke(dict(REQUEST), _config(thread_id)), thread_id)
            return time.perf_counter() - t0

        async def resume(thread_id: str) -> float:
            t0 = time.perf_counter()
            _check_completed(await graph.ainvoke(Command(resume=APPROVE), _config(thread_id)),
                             thread_id)
            return time.perf_counter() - t0

        async def cycle(thread_id: str) -> tuple[float, float]:
            return await pause(thread_id), await resume(thread_id)

        for n in in_flights:
            result = await run_cycles(cycle, n, duration, warmup, f"lga{n}")
            results[f"cycles_{n}"] = result.as_dict()
        ids = [f"lgl-{i}" for i in range(resumes)]
        failed = await prepare_paused(pause, ids, 64)
        results["latency"] = {**await open_loop(resume, ids, rate), "prepare_failed": failed}
    return results


def run(workdir: Path, *, in_flights: list[int], duration: float, warmup: float, rate: float,
        resumes: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"engine": "langgraph", "checkpointer": "SqliteSaver / AsyncSqliteSaver",
                           "durability": "async (LangGraph's default)"}
    out["sync_cycles_1"] = sync_cycles(workdir / "lg-sync.sqlite", duration, warmup)
    out.update(asyncio.run(async_phases(workdir / "lg-async.sqlite", in_flights, duration,
                                        warmup, rate, resumes)))
    return out
