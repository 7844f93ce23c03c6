"""Projections benchmark: rebuild rate and live projection lag (prints figures; not a test).

    .venv/bin/python -m bench.projections                     # 1,000,000 events, 20 s of lag
    .venv/bin/python -m bench.projections --events 100000 --lag-seconds 10

1. **Rebuild.** Event stores holding ``--events`` published events are generated once (by the
   services' own application code, no NATS: approval threads started, answered — some after a
   refused attempt — and completed) and kept under ``--data`` for the next run. Then every view
   is rebuilt from them into a fresh views database, as ``hitlflow projections rebuild`` does:
   events replayed per second. Target: ≥ 20,000 events/s on 2 cores.
2. **Lag.** The embedded stack (nats-server, every service, SQLite) runs approval cycles at a
   steady ``--rate`` events per second for ``--lag-seconds``. For every event the projections
   apply, lag = commit of the view transaction − the moment the event was stored. Target: p99
   under 100 ms at 200 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.events import EventEnvelope
from hitlflow.settings import Settings
from projections.db import ViewDatabase
from projections.projector import VIEWS, Projector
from projections.rebuild import open_sources, rebuild
from services.common.clock import SystemClock
from services.interaction.application import InteractionService
from services.interaction.domain import Inbox, Interaction, InvalidResponseError
from services.workflow.agents import AgentRegistry
from services.workflow.application import WorkflowService
from services.workflow.definition import load_workflow
from services.workflow.domain import Graph, Thread

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = f"{ROOT / 'tests' / 'workflows' / 'types.csv'}::Approve"
MARKER = "generated.json"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def published_events(stores: Path) -> int:
    marker = stores / MARKER
    if not marker.exists():
        return 0
    return int(json.loads(marker.read_text())["published"])


def generate(stores: Path, target: int, batch: int = 500) -> dict[str, Any]:
    """Fill the workflow and interaction stores with at least ``target`` published events.

    The services' own aggregates make the events (so they are exactly what the services
    store); ``batch`` threads are saved per transaction to keep generation quick.
    """
    settings = Settings(home=stores.parent)
    workflow = WorkflowService(settings.store_env("workflow", stores))
    interaction = InteractionService(settings.store_env("interaction", stores))
    spec = load_workflow(WORKFLOW)
    graph, agents = Graph(spec), AgentRegistry()
    now = SystemClock().now
    started = time.perf_counter()
    published = threads = 0
    try:
        while published < target:
            saved_threads: list[Any] = []
            saved_requests: list[Any] = []
            for _ in range(batch):
                threads += 1
                thread = Thread(thread_id=f"bench-{threads}", graph_name=spec.graph_name,
                                workflow_digest=spec.digest,
                                inputs={"request": f"laptops #{threads}"}, started_by="bench",
                                start_node=spec.start)
                thread.advance(graph, agents, now)
                asked = next(iter(thread.pending.values()))
                request = Interaction(
                    request_id=asked["id"], thread_id=thread.thread_id,
                    node_name=asked["node_name"], interaction_type=asked["interaction_type"],
                    prompt=asked["prompt"], context=asked["context"], options=asked["options"],
                    timeout_seconds=None, on_timeout=None, assignees=[],
                    response_schema=None, batch_index=0, batch_size=1, created_at=now(),
                    deadline=None)
                published += 4  # ThreadStarted, NodeCompleted, ThreadPaused, InteractionRequested
                responder = ("alice", "bob", "carol")[threads % 3]
                if threads % 10 == 0:  # a refused attempt first, kept in the audit
                    inbox = Inbox(thread_id=thread.thread_id)
                    inbox.reject(request.request_id, "maybe", None, responder, "x",
                                 InvalidResponseError("action 'maybe' is not valid"), now())
                    saved_requests.append(inbox)
                    published += 1
                action = "approve" if threads % 3 else "reject"
                data = {"reason": "over budget"} if action == "reject" else None
                decision = request.respond(action, data, responder, f"key-{threads}", now())
                thread.resume(request.request_id, action, data, decision.value, decision.route,
                              responder)
                thread.advance(graph, agents, now)
                published += 5  # ResponseAccepted, ThreadResumed, NodeCompleted x2, Completed
                saved_threads.append(thread)
                saved_requests.append(request)
            workflow.save(*saved_threads)
            interaction.save(*saved_requests)
            if threads % (batch * 20) == 0:
                rate = published / (time.perf_counter() - started)
                print(f"  generated {published:,} events ({rate:,.0f}/s)", flush=True)
    finally:
        workflow.close()
        interaction.close()
    info = {"published": published, "threads": threads,
            "seconds": round(time.perf_counter() - started, 1)}
    (stores / MARKER).write_text(json.dumps(info))
    return info
