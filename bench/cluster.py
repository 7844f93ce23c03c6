"""hitlflow on a 3-node NATS cluster with replicated streams, PostgreSQL stores and views, and
several replicas of each service, under steady load; optionally one NATS node and one replica
of each service are killed (SIGKILL) and brought back while the load runs.

    .venv/bin/python -m bench.cluster                          # the full run (bench/README.md)
    .venv/bin/python -m bench.cluster --threads 300 --replicas 1 --no-faults

Needs PostgreSQL (``--dsn``, default HITLFLOW_TEST_POSTGRES_DSN or the local one); each run uses
a schema of its own. The load generator keeps ``--in-flight`` threads going: it starts a thread
(the guide's approval gate: start → approval → done), answers it once the views show its
request, and starts the next once the views show it ended; one thread in ``--timed-every`` is
never answered, so its deadline (``--deadline`` seconds) fires and ends it. Commands are
JetStream publishes with a ``Nats-Msg-Id`` (a publish that gets no acknowledgement, e.g. while a
node is down, is sent again: the stream keeps one) and a fixed idempotency key per answer.

At the end every thread is checked in the event stores themselves (not the views): started
once, ended once (completed, or timed out when unanswered), one accepted answer per answered
request and no other (none doubled, none refused), one timeout per unanswered request, one
deadline fired per unanswered request and none for the answered ones. The figures: threads
completed per second over the run and in windows before, during and after the faults, the
longest time no thread ended, how late deadlines fired, and recovery times.

``tests/e2e/test_cluster.py`` runs the same trial, smaller, in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from contracts import subjects
from contracts.commands import ResumeThread, StartThread
from contracts.workflow import NodeSpec, WorkflowSpec
from hitlflow.cluster import NatsCluster, ServiceReplicas, unique_schema
from hitlflow.settings import Settings
from services.common.keyring import new_key

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVICES = ("workflow", "interaction", "timeout", "projections")


@dataclass
class Plan:
    threads: int = 1000
    in_flight: int = 32
    #: One thread in this many is never answered: its deadline ends it.
    timed_every: int = 5
    deadline: float = 5.0
    replicas: int = 2
    faults: bool = True
    #: Seconds after the first thread ends that the faults happen, and how long they last.
    fault_after: float = 10.0
    down_for: float = 10.0
    #: Longest the whole run may take (seconds).
    limit: float = 600.0
    #: Seconds a consumer's server waits before delivering again what a killed replica held.
    ack_wait: float = 5.0
    lease_ttl: float = 3.0
    sweep_interval: float = 2.0
    prefix: str = "c"


@dataclass
class Result:
    plan: dict[str, Any]
    elapsed: float = 0.0
    completed: int = 0
    timed_out: int = 0
    unfinished: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    throughput: float = 0.0
    windows: dict[str, float] = field(default_factory=dict)
    longest_stall: float = 0.0
    deadline_lateness_max: float = 0.0
    deadline_lateness_p50: float = 0.0
    publish_retries: int = 0
    recovery: dict[str, float] = field(default_factory=dict)
    readyz: dict[str, int] = field(default_factory=dict)
    log_lines_with_correlation: int = 0


def workflow(timeout_seconds: float) -> WorkflowSpec:
    return WorkflowSpec(graph_name="ClusterGate", nodes=(
        NodeSpec(name="start", agent_type="input", next_on_success="gate",
                 input_fields=("request",), output_field="request"),
        NodeSpec(name="gate", agent_type="approval_interaction", next_on_success="done",
                 next_on_failure="refused", prompt="Please approve: {request}",
                 input_fields=("request",), output_field="decision",
                 context={"interaction_type": "approval", "timeout_seconds": timeout_seconds,
                          "on_timeout": "fail"}),
        NodeSpec(name="done", agent_type="output", prompt="Approved: {request}",
                 input_fields=("decision",), output_field="result"),
        NodeSpec(name="refused", agent_type="output", prompt="Refused: {request}",
                 input_fields=("decision",), output_field="result"),
    ))


class Load:
    """The load generator: commands over NATS, progress read from the views (PostgreSQL)."""

    def __init__(self, plan: Plan, nats_url: str, dsn: str, schema: str) -> None:
        self.plan = plan
        self.nats_url = nats_url
        self.dsn = dsn
        self.schema = schema
        self.names = [f"{plan.prefix}-{i:05d}" for i in range(plan.threads)]
        self.timed = {n for i, n in enumerate(self.names) if i % plan.timed_every
                      == plan.timed_every - 1}
        self.started: dict[str, float] = {}
        self.answered: set[str] = set()
        self.ended: dict[str, tuple[str, float]] = {}
        self.retries = 0
        self._nc: Any = None
        self._db: Any = None

    async def publish(self, subject: str, body: bytes, msg_id: str) -> None:
        """Until the stream acknowledges it (the same Nats-Msg-Id: stored once)."""
        while True:
            try:
                await self._nc.jetstream().publish(subject, body, timeout=2.0,
                                                   headers={"Nats-Msg-Id": msg_id})
                return
            except Exception:
                self.retries += 1
                await asyncio.sleep(0.2)

    def _poll(self) -> list[dict[str, Any]]:
        """The threads not seen ending yet: status, and the open request if any."""
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row

        if self._db is None or self._db.closed:
            self._db = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
            self._db.execute(sql.SQL("SET search_path TO {}").format(
                sql.Identifier(self.schema)))
        try:
            return list(self._db.execute(
                "SELECT s.thread_id, s.status, r.id AS request, r.shown FROM thread_status s"
                " LEFT JOIN thread_requests r ON r.thread_id = s.thread_id"
                " AND r.status = 'pending' WHERE s.thread_id = ANY(%s)",
                ([n for n in self.started if n not in self.ended],)).fetchall())
        except psycopg.errors.UndefinedTable:  # the projections have not created it yet
            return []
        except psycopg.OperationalError:
            self._db = None
            return []

    async def run(self, on_first_end: Any = None) -> None:
        from services.common.messaging import connect

        self._nc = await connect(self.nats_url, name="hitlflow-cluster-load")
        try:
            await self._drive(on_first_end)
        finally:
            await self._nc.close()
            if self._db is not None:
                self._db.close()

    async def _drive(self, on_first_end: Any) -> None:
        plan = self.plan
        answered_spec = workflow(3600.0)
        timed_spec = workflow(plan.deadline)
        queue = list(self.names)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + plan.limit
        while len(self.ended) < len(self.names) and loop.time() < deadline:
            while queue and len(self.started) - len(self.ended) < plan.in_flight:
                name = queue.pop(0)
                spec = timed_spec if name in self.timed else answered_spec
                command = StartThread(thread_id=name, workflow=spec, state={"request": name})
                await self.publish(subjects.start_subject("cluster-load", name),
                                   command.model_dump_json().encode(), f"start:{name}")
                self.started[name] = time.time()
            for row in await asyncio.to_thread(self._poll):
                name, status = row["thread_id"], row["status"]
                if status not in ("running", "paused") and name not in self.ended:
                    self.ended[name] = (status, time.time())
                    if on_first_end is not None and len(self.ended) == 1:
                        on_first_end()
                elif (status == "paused" and row["request"] and name not in self.timed
                      and name not in self.answered):
                    answer = ResumeThread(thread_id=name, action="approve",
                                          request_id=row["request"], shown=row["shown"],
                                          idempotency_key=f"answer-{name}")
                    await self.publish(subjects.resume_subject("cluster-load", name),
                                       answer.model_dump_json().encode(), f"resume:{name}")
                    self.answered.add(name)
            await asyncio.sleep(0.1)


def _events(app: Any, aggregate_id: UUID) -> list[Any]:
    return list(app.events.get(aggregate_id))


def check_stores(settings: Settings, load: Load) -> tuple[list[str], list[float]]:
    """Every thread in the event stores: what must have happened exactly once did; and how
    late each fired deadline was (seconds)."""
    from services.interaction.application import InteractionService
    from services.interaction.domain import inbox_uuid
    from services.timeout.application import TimeoutService
    from services.timeout.domain import deadline_uuid
    from services.workflow.application import WorkflowService
    from services.workflow.domain import thread_uuid

    problems: list[str] = []
    lateness: list[float] = []
    workflow_app = WorkflowService(settings.store_env("workflow"))
    interaction_app = InteractionService(settings.store_env("interaction"))
    timeout_app = TimeoutService(settings.store_env("timeout"))
    try:
        for name in load.names:
            timed = name in load.timed
            kinds = Counter(type(e).__name__ for e in _events(workflow_app, thread_uuid(name)))
            ending = "ThreadTimedOut" if timed else "ThreadCompleted"
            endings = {k: kinds[k] for k in ("ThreadCompleted", "ThreadTimedOut", "ThreadFailed",
                                             "ThreadCancelled") if kinds[k]}
            if kinds["ThreadStarted"] != 1 or endings != {ending: 1}:
                problems.append(f"{name}: started {kinds['ThreadStarted']} times, ended "
                                f"{endings or 'never'} (expected {ending} once)")
            if kinds["ThreadResumed"] != (0 if timed else 1):
                problems.append(f"{name}: resumed {kinds['ThreadResumed']} times")
            inbox = interaction_app.repository.get(inbox_uuid(name))
            inbox_kinds = Counter(type(e).__name__ for e in _events(interaction_app,
                                                                    inbox_uuid(name)))
            if inbox_kinds["ResponseRejected"]:
                problems.append(f"{name}: {inbox_kinds['ResponseRejected']} answer(s) refused")
            requests = [*inbox.open, *inbox.closed]
            if len(requests) != 1:
                problems.append(f"{name}: {len(requests)} requests (expected 1)")
            for request in requests:
                r_kinds = Counter(type(e).__name__ for e in _events(interaction_app,
                                                                    UUID(request)))
                want = (0, 1) if timed else (1, 0)
                got = (r_kinds["ResponseAccepted"], r_kinds["InteractionTimedOut"])
                if got != want:
                    problems.append(f"{name}: request {request} accepted/timed out {got}, "
                                    f"expected {want}")
                d_events = _events(timeout_app, deadline_uuid(request))
                fired = [e for e in d_events if type(e).__name__ == "DeadlineFired"]
                if len(fired) != (1 if timed else 0):
                    problems.append(f"{name}: deadline fired {len(fired)} times")
                due = next((getattr(e, "due_at", None) for e in d_events
                            if type(e).__name__ == "DeadlineScheduled"), None)
                if fired and due is not None:
                    lateness.append((fired[0].timestamp - due).total_seconds())
    finally:
        for app in (workflow_app, interaction_app, timeout_app):
            with contextlib.suppress(Exception):
                app.close()
    return problems, lateness


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


async def _wait_ready(replicas: ServiceReplicas, timeout: float = 60.0) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    states: dict[str, int] = {}
    while loop.time() < deadline:
        states = {r.name: await asyncio.to_thread(_status, f"{r.health_url}/readyz")
                  for r in replicas.all()}
        if all(code == 200 for code in states.values()):
            break
        await asyncio.sleep(0.5)
    return states


def _windows(ends: list[float], fault_at: float | None, back_at: float | None) -> dict[str, float]:
    """Threads ended per second before the faults, while a node and replicas were down, and
    after they were back."""
    if fault_at is None or back_at is None or not ends:
        return {}
    first, last = min(ends), max(ends)

    def rate(start: float, end: float) -> float:
        span = end - start
        return round(sum(1 for t in ends if start <= t < end) / span, 2) if span > 0 else 0.0

    return {"before": rate(first, fault_at), "during": rate(fault_at, back_at),
            "after": rate(back_at, last + 1e-6)}


async def trial(plan: Plan, root: Path, dsn: str) -> Result:
    """Start the cluster and the replicas, run the load (with the faults), check, stop."""
    result = Result(plan=asdict(plan))
    schema = unique_schema(plan.prefix)
    store_key = new_key()  # one key ring for every replica (they read each other's events)
    settings = Settings(home=root / "check", persistence="postgres", postgres_dsn=dsn,
                        postgres_schema=schema, stream_replicas=3, postgres_pool_size=1,
                        postgres_max_overflow=1, cipher_keys=store_key)
    cluster = NatsCluster(root)
    cluster.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITLFLOW_")}
    env.update({
        "HITLFLOW_STREAM_REPLICAS": "3", "HITLFLOW_PERSISTENCE": "postgres",
        "HITLFLOW_POSTGRES_DSN": dsn, "HITLFLOW_POSTGRES_SCHEMA": schema,
        "HITLFLOW_LOG_FORMAT": "json", "HITLFLOW_ACK_WAIT": str(plan.ack_wait),
        "HITLFLOW_PROJECTIONS_LEASE_TTL": str(plan.lease_ttl),
        "HITLFLOW_TIMEOUT_SWEEP_INTERVAL": str(plan.sweep_interval),
        "HITLFLOW_HEALTH_INTERVAL": "1", "HITLFLOW_BACKGROUND_NICE": "0",
        "HITLFLOW_NOTIFY_LOG": "false", "HITLFLOW_REDELIVERY_DELAY": "0.5",
        # PostgreSQL's 100 connections are shared: 8 service processes and the checks fit
        "HITLFLOW_POSTGRES_POOL_SIZE": "2", "HITLFLOW_POSTGRES_MAX_OVERFLOW": "2",
        "HITLFLOW_CIPHER_KEYS": store_key,
    })
    replicas = ServiceReplicas(root, cluster.url, env, replicas=plan.replicas)
    load = Load(plan, cluster.url, dsn, schema)
    fault_task: asyncio.Task[None] | None = None
    marks: dict[str, float] = {}
    began = time.time()
    try:
        await cluster.create_streams(3)
        result.recovery["cluster_up"] = round(time.time() - began, 2)
        await replicas.start()
        result.recovery["replicas_up"] = round(time.time() - began, 2)

        async def faults() -> None:
            await asyncio.sleep(plan.fault_after)
            marks["fault_at"] = time.time()
            cluster.kill(1)  # one NATS node
            for service in SERVICES:  # one replica of each service
                replicas.kill(service, 0)
            await asyncio.sleep(plan.down_for)
            marks["restart_at"] = time.time()
            await asyncio.to_thread(cluster.restart, 1)
            await asyncio.gather(*(replicas.restart(s, 0) for s in SERVICES))
            marks["back_at"] = time.time()
            result.readyz = await _wait_ready(replicas)
            marks["ready_at"] = time.time()

        def first_end() -> None:
            nonlocal fault_task
            if plan.faults and plan.replicas > 1:
                fault_task = asyncio.get_running_loop().create_task(faults())

        started = time.time()
        await load.run(first_end)
        result.elapsed = round(time.time() - started, 2)
        if fault_task is not None:
            await fault_task
    finally:
        if fault_task is not None and not fault_task.done():
            fault_task.cancel()
        await replicas.stop()
        cluster.stop()
    ends = [t for _, t in load.ended.values()]
    statuses = Counter(status for status, _ in load.ended.values())
    result.completed, result.timed_out = statuses["completed"], statuses["timed_out"]
    result.unfinished = sorted(set(load.names) - set(load.ended))[:20]
    if ends:
        span = max(ends) - min(load.started.values())
        result.throughput = round(len(ends) / span, 2) if span > 0 else 0.0
        ordered = sorted(ends)
        result.longest_stall = round(max((b - a for a, b in itertools.pairwise(ordered)),
                                         default=0), 2)
    result.windows = _windows(ends, marks.get("fault_at"), marks.get("back_at"))
    if "fault_at" in marks:
        result.recovery.update({
            "restarted_within": round(marks["back_at"] - marks["restart_at"], 2),
            "all_ready_after_restart": round(
                marks.get("ready_at", marks["back_at"]) - marks["restart_at"], 2)})
    result.publish_retries = load.retries
    problems, lateness = await asyncio.to_thread(check_stores, settings, load)
    result.problems = problems
    if lateness:
        ordered_late = sorted(lateness)
        result.deadline_lateness_max = round(ordered_late[-1], 2)
        result.deadline_lateness_p50 = round(ordered_late[len(ordered_late) // 2], 2)
    result.log_lines_with_correlation = sum(
        r.log.read_text(errors="replace").count('"correlation_id"') for r in replicas.all()
        if r.log.exists())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=Plan.threads)
    parser.add_argument("--in-flight", type=int, default=Plan.in_flight)
    parser.add_argument("--replicas", type=int, default=None,
                        help="replicas of each service (default: one run with 1, one with 2, "
                             "one with 2 and the faults)")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--deadline", type=float, default=Plan.deadline)
    parser.add_argument("--fault-after", type=float, default=Plan.fault_after)
    parser.add_argument("--down-for", type=float, default=Plan.down_for)
    parser.add_argument("--dsn", default=os.environ.get("HITLFLOW_TEST_POSTGRES_DSN",
                                                        DEFAULT_DSN))
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    import tempfile

    runs: list[Plan] = []
    base = {"threads": args.threads, "in_flight": args.in_flight, "deadline": args.deadline,
            "fault_after": args.fault_after, "down_for": args.down_for}
    if args.replicas is None:
        runs = [Plan(**base, replicas=1, faults=False, prefix="r1"),
                Plan(**base, replicas=2, faults=False, prefix="r2"),
                Plan(**base, replicas=2, faults=not args.no_faults, prefix="f2")]
    else:
        runs = [Plan(**base, replicas=args.replicas, faults=not args.no_faults)]
    results = []
    for plan in runs:
        with tempfile.TemporaryDirectory(dir=args.root) as root:
            result = asyncio.run(trial(plan, Path(root), args.dsn))
        results.append(asdict(result))
        print(json.dumps({k: v for k, v in asdict(result).items() if k != "plan"}
                         | {"replicas": plan.replicas, "faults": plan.faults}), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv[1:], "cores": os.cpu_count(),
                                        "runs": results}, indent=2))


if __name__ == "__main__":
    main()
