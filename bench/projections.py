"""Projections benchmark: rebuild rate and live projection lag (prints figures; not a test).

    .venv/bin/python -m bench.projections                     # 1,000,000 events, 20 s of lag
    .venv/bin/python -m bench.projections --events 100000 --lag-seconds 10

1. **Rebuild.** Event stores holding ``--events`` published events are generated once (by the
   services' own application code, no NATS: approval threads started, answered — some after a
   refused attempt — and completed) and kept under ``--data`` for the next run. Then every view
   is rebuilt from them, as ``hitlflow projections rebuild`` does, twice in the same views
   database: first into a fresh one (the views database was lost: every event's link of the
   audit hash chain is computed and anchored too), then again (as on a running install: the
   chains are anchored already, and their links are not computed again). Events replayed per
   second, each time (``--postgres-dsn``: into views on PostgreSQL, in a schema of its own,
   dropped afterwards). Target: ≥ 50,000 events/s on 2 cores.
2. **Lag.** The embedded stack (nats-server, every service, SQLite) runs approval cycles at a
   steady ``--rate`` events per second for ``--lag-seconds``. For every event the projections
   apply, lag = commit of the view transaction minus the moment the event was stored. Target: p99
   under 100 ms at 200 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import host
from bench.host import Meter
from contracts.events import EventEnvelope, shown_digest, shown_token
from hitlflow.auth import OPERATOR_USER
from hitlflow.client import HitlClient
from hitlflow.settings import Settings
from hitlflow.stack import BackgroundStack, Stack, free_port
from projections.db import ViewDatabase
from projections.projector import Projector
from projections.rebuild import rebuild_from_stores
from services.common.clock import SystemClock
from services.common.identity import Identity
from services.common.logging import configure_logging
from services.common.messaging import NatsAuth
from services.common.responses import InvalidResponseError
from services.interaction.application import InteractionService
from services.interaction.domain import Inbox, Interaction
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
                    response_schema=None, sensitive=[], batch_index=0, batch_size=1,
                    created_at=now(), deadline=None, candidate_groups=[], quorum=None,
                    shown=shown_token(1, shown_digest(asked["prompt"], asked["context"],
                                                      list(asked["options"]))))
                saved_threads.append(thread)
                saved_requests.append(request)
                published += 4  # ThreadStarted, NodeCompleted, ThreadPaused, InteractionRequested
                responder = ("alice", "bob", "carol")[threads % 3]
                identity = Identity(principal=responder, verified=False)
                if threads % 10 == 0:  # a refused attempt first, kept in the audit
                    inbox = Inbox(thread_id=thread.thread_id)
                    inbox.reject(request.request_id, "maybe", None, identity, "x",
                                 InvalidResponseError("action 'maybe' is not valid"), now())
                    saved_requests.append(inbox)
                    published += 1
                action = "approve" if threads % 3 else "reject"
                data = {"reason": "over budget"} if action == "reject" else None
                decision = request.respond(action, data, identity, f"key-{threads}", now(),
                                           request.shown)
                assert decision is not None
                thread.resume(request.request_id, action, data, decision.value, decision.route,
                              responder)
                thread.advance(graph, agents, now)
                published += 5  # ResponseAccepted, ThreadResumed, NodeCompleted x2, Completed
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


def bench_rebuild(data: Path, events: int, postgres_dsn: str | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Both rebuilds of the module's docstring: ``{"fresh": …, "anchored": …}``."""
    stores = data / "stores"
    if published_events(stores) < events:
        shutil.rmtree(stores, ignore_errors=True)
        stores.mkdir(parents=True)
        print(f"generating event stores with {events:,} events in {stores} (kept for next time)")
        print(f"  done: {generate(stores, events)}")
    schema = f"bench_views_{os.getpid()}"
    if postgres_dsn:
        db = ViewDatabase.postgres(postgres_dsn, schema)
    else:
        views = data / "views.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{views}{suffix}").unlink(missing_ok=True)
        db = ViewDatabase.sqlite(views)
    results: dict[str, dict[str, Any]] = {}
    try:
        for case in ("fresh", "anchored"):
            meter = Meter()
            before = _cpu()
            result = rebuild_from_stores(db, Projector(db), Settings(home=data),
                                         data_dir=stores)
            main_cpu, workers_cpu = (now - then for now, then in zip(_cpu(), before,
                                                                      strict=True))
            results[case] = {
                "events": result.events, "notifications_read": result.read,
                "seconds": round(result.seconds, 2), "events_per_second": round(result.rate),
                "views": "postgres" if postgres_dsn else "sqlite",
                "audit_chains": "computed and anchored" if case == "fresh"
                                else "anchored already",
                "cpu_seconds": {"main": round(main_cpu, 1), "workers": round(workers_cpu, 1)},
                "host": meter.reading(),
                "target_events_per_second": 50_000,
            }
    finally:
        db.close()
        if postgres_dsn:
            import psycopg

            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return results


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


async def _cycles(url: str, auth: NatsAuth, rate: float, seconds: float, warmup: float,
                  per_cycle: float) -> int:
    """Approval cycles (start, pause, approve, complete) started at a steady pace, sent as
    the stack's operator (authorization is on, as ``hitlflow up`` runs it)."""
    spec = load_workflow(WORKFLOW)
    interval = per_cycle / rate
    async with HitlClient(url, reply_timeout=30, auth=auth) as client:

        async def cycle(n: int) -> None:
            thread = f"lag-{n}"
            started = await client.start(spec, {"request": f"chairs #{n}"}, thread_id=thread)
            if started.status == "paused":
                await client.resume(thread, "approve")

        tasks = []
        loop = asyncio.get_running_loop()
        begin = loop.time()
        n = 0
        while loop.time() - begin < warmup + seconds:
            tasks.append(asyncio.create_task(cycle(n)))
            n += 1
            await asyncio.sleep(max(0.0, begin + n * interval - loop.time()))
        await asyncio.gather(*tasks)
        return n


def bench_lag(rate: float, seconds: float, warmup: float = 3.0) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="hitlflow-lag-"))
    settings = Settings(home=home, log_level="WARNING")
    configure_logging(settings.log_level)
    stack = Stack(settings, data_dir=home, port=free_port())
    applied: list[int] = []
    lags: list[float] = []
    window = {"from": math.inf, "to": math.inf}

    def on_applied(envelopes: Sequence[EventEnvelope], committed: float) -> None:
        applied.append(len(envelopes))
        if window["from"] <= committed <= window["to"]:
            lags.extend(committed - env.occurred_at.timestamp() for env in envelopes)

    try:
        with BackgroundStack(stack) as running:
            stack.runtimes["projections"].on_applied = on_applied
            auth = stack.settings_for(OPERATOR_USER).nats_auth()
            asyncio.run(_cycles(running.nats_url, auth, 1.0, 0.0, 0.0, 1.0))  # one cycle's events
            time.sleep(1.0)
            per_cycle = float(sum(applied)) or 11.0
            window["from"] = time.time() + warmup
            window["to"] = window["from"] + seconds
            cycles = asyncio.run(_cycles(running.nats_url, auth, rate, seconds, warmup,
                                         per_cycle))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "target_rate": rate, "events_per_cycle": per_cycle, "cycles": cycles,
        "events_measured": len(lags), "achieved_events_per_second": round(len(lags) / seconds),
        "lag_ms": {name: round(percentile(lags, q) * 1000, 2)
                   for name, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
        "target_p99_ms": 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="published events in the generated stores")
    parser.add_argument("--data", type=Path,
                        default=Path(tempfile.gettempdir()) / "hitlflow-bench-projections",
                        help="where the generated stores are kept between runs")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (lag)")
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--postgres-dsn", default=None,
                        help="rebuild into views on this PostgreSQL server (a schema of its own)")
    parser.add_argument("--skip-rebuild", action="store_true")
    parser.add_argument("--skip-lag", action="store_true")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"cpus": os.cpu_count(),
                               "host_at_start": host.probe(args.data)}
    print(f"the host: {_speed(results['host_at_start'])}", flush=True)
    if not args.skip_rebuild:
        results["rebuild"] = rebuilds = bench_rebuild(args.data, args.events,
                                                      args.postgres_dsn)
        for case, rebuild in rebuilds.items():
            print(f"rebuild, {case} ({rebuild['views']} views, audit chains "
                  f"{rebuild['audit_chains']}): {rebuild['events']:,} events in "
                  f"{rebuild['seconds']} s = {rebuild['events_per_second']:,} events/s (target "
                  f">= 50,000); CPU s: {rebuild['cpu_seconds']}; host "
                  f"{host.describe(rebuild['host'])}", flush=True)
    if not args.skip_lag:
        meter = Meter()
        results["lag"] = lag = bench_lag(args.rate, args.lag_seconds)
        lag["host"] = meter.reading()
        print(f"lag at {lag['achieved_events_per_second']} events/s over {args.lag_seconds:g} s "
              f"({lag['events_measured']:,} events): p50 {lag['lag_ms']['p50']} ms, "
              f"p95 {lag['lag_ms']['p95']} ms, p99 {lag['lag_ms']['p99']} ms, "
              f"max {lag['lag_ms']['max']} ms (target p99 < 100 ms); host "
              f"{host.describe(lag['host'])}", flush=True)
    results["host_at_end"] = host.probe(args.data)
    print(f"the host at the end: {_speed(results['host_at_end'])}", flush=True)
    print(json.dumps(results, indent=2))


def _speed(probe: dict[str, Any]) -> str:
    return (f"a million-step Python loop in {probe['python_loop_ms']:.1f} ms (best of 5), "
            f"a 4 KiB write and fsync in {probe['fsync_ms']['p50']:.2f} ms (p50)")


if __name__ == "__main__":
    main()
