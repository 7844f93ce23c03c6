"""The same approval workload on LangGraph: interrupt() + Command(resume=...), with each of its
checkpointers: SQLite, PostgreSQL (its production saver) and in memory (no durability).

In process, as LangGraph is meant to be embedded. The nodes call the very agents hitlflow's
example uses (examples/agents.py), so both engines run the same user code. LangGraph's own
defaults are kept (durability ``"async"``: a checkpoint is written while the next step runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypedDict

from bench.host import Meter
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


#: The checkpointers measured: LangGraph's SQLite saver, its production PostgreSQL saver, and
#: its in-memory saver (the in-process ceiling: nothing is durable).
SAVERS = ("sqlite", "postgres", "memory")
#: Connections of the asynchronous PostgreSQL saver's pool (LangGraph's documented production
#: set-up: ``AsyncPostgresSaver`` over a psycopg ``AsyncConnectionPool``).
POOL_SIZE = 16
DESCRIPTION = {
    "sqlite": "SqliteSaver / AsyncSqliteSaver on a file",
    "postgres": f"PostgresSaver / AsyncPostgresSaver (AsyncConnectionPool of {POOL_SIZE})",
    "memory": "InMemorySaver (in process, not durable)",
}
_PG_KWARGS = {"autocommit": True, "prepare_threshold": 0}


@contextlib.contextmanager
def sync_saver(kind: str, workdir: Path, dsn: str | None) -> Iterator[Any]:
    if kind == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(str(workdir / "lg-sync.sqlite"), check_same_thread=False)
        try:
            yield SqliteSaver(conn)
        finally:
            conn.close()
    elif kind == "postgres":
        from langgraph.checkpoint.postgres import PostgresSaver

        assert dsn is not None
        with PostgresSaver.from_conn_string(dsn) as saver:
            saver.setup()
            yield saver
    else:
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()


@contextlib.asynccontextmanager
async def async_saver(kind: str, workdir: Path, dsn: str | None) -> AsyncIterator[Any]:
    if kind == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(str(workdir / "lg-async.sqlite")) as saver:
            yield saver
    elif kind == "postgres":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        assert dsn is not None
        async with AsyncConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False,
                                       kwargs={**_PG_KWARGS, "row_factory": dict_row}) as pool:
            saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
            await saver.setup()
            yield saver
    else:
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()


def sync_cycles(kind: str, workdir: Path, dsn: str | None, duration: float,
                warmup: float) -> dict[str, Any]:
    """One thread in flight, the synchronous API."""
    from langgraph.types import Command

    with sync_saver(kind, workdir, dsn) as saver:
        graph = build_graph(saver)

        async def cycle(thread_id: str) -> tuple[float, float]:
            config = _config(thread_id)
            t0 = time.perf_counter()
            _check_paused(graph.invoke(dict(REQUEST), config), thread_id)
            t1 = time.perf_counter()
            _check_completed(graph.invoke(Command(resume=APPROVE), config), thread_id)
            return t1 - t0, time.perf_counter() - t1

        return asyncio.run(run_cycles(cycle, 1, duration, warmup, "lgs")).as_dict()


async def async_phases(kind: str, workdir: Path, dsn: str | None, in_flights: list[int],
                       duration: float, warmup: float, rate: float,
                       resumes: int) -> dict[str, Any]:
    """Cycles at each in-flight count, then resume latency at a steady rate (async API)."""
    from langgraph.types import Command

    results: dict[str, Any] = {}
    async with async_saver(kind, workdir, dsn) as saver:
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
            meter = Meter()
            cpu0 = _own_cpu()
            result = (await run_cycles(cycle, n, duration, warmup, f"lga{n}")).as_dict()
            result["cpu_ms_per_cycle"] = {"load_generator": round(
                (_own_cpu() - cpu0) * 1000 / max(result["cycles_all"], 1), 3)}
            result.update(meter.reading())
            results[f"cycles_{n}"] = result
        ids = [f"lgl-{i}" for i in range(resumes)]
        failed = await prepare_paused(pause, ids, 64)
        meter = Meter()
        results["latency"] = {**await open_loop(resume, ids, rate), "prepare_failed": failed,
                              **meter.reading()}
    return results


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def run(kind: str, workdir: Path, *, dsn: str | None, in_flights: list[int], duration: float,
        warmup: float, rate: float, resumes: int) -> dict[str, Any]:
    """Every LangGraph phase with one checkpointer (``kind``: one of :data:`SAVERS`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"engine": "langgraph", "saver": kind,
                           "checkpointer": DESCRIPTION[kind],
                           "durability": ("none (in memory)" if kind == "memory"
                                          else "async (LangGraph's default)")}
    meter = Meter()
    out["sync_cycles_1"] = {**sync_cycles(kind, workdir, dsn, duration, warmup),
                            **meter.reading()}
    out.update(asyncio.run(async_phases(kind, workdir, dsn, in_flights, duration, warmup, rate,
                                        resumes)))
    return out
