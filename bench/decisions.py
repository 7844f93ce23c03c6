"""What one approval cycle's decisions and saves cost, in process, without NATS.

    python -m bench.decisions [--cycles 300] [--part cycle|start] [--postgres-dsn DSN]
                              [--profile tottime|cumulative]

Runs the workflow and interaction services' jobs for the bench's approval cycle (start → pause
→ answer → complete) as their consumers would: each command decoded from JSON, each job run as
a batch of its own (one transaction, synced), and the events converted to envelopes as the
relays publish them and decoded as the next service receives them. ``--part start`` runs only
the workflow service's start job. Prints the CPU per cycle (or per start). Against the
services' CPU per cycle that ``make bench`` prints, this is the part that is not messaging.

CPU time moves with what else the machine does; instruction counts do not. For a figure to
compare two versions by, count instructions with callgrind for two sizes and take the
difference::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.decisions --part start --cycles 250     # then --cycles 50
    # (instructions at 250 - instructions at 50) / 200 = instructions per start
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from bench.workload import AGENTS, REQUEST, WORKFLOW
from contracts.commands import ResumeThread, StartThread
from contracts.events import EventEnvelope, ResponseAccepted
from hitlflow.settings import Settings
from services.common.consumer import decode_envelope, decode_payload
from services.common.integration import envelope_factory
from services.interaction.application import THREAD_EVENTS, InteractionService
from services.interaction.published import ENVELOPE_ALIASES
from services.interaction.published import PUBLISHED as INTERACTION_PUBLISHED
from services.workflow.agents import AgentRegistry
from services.workflow.application import WorkflowService
from services.workflow.definition import load_workflow
from services.workflow.published import PUBLISHED as WORKFLOW_PUBLISHED


class Services:
    """The workflow and interaction services on stores of their own, and what each saved."""

    def __init__(self, settings: Settings) -> None:
        registry = AgentRegistry.load([AGENTS])
        self.workflow = WorkflowService(settings.store_env("workflow"), agents=registry)
        self.interaction = InteractionService(settings.store_env("interaction"))
        self.spec = load_workflow(WORKFLOW, registry=registry)
        self._saved: dict[str, list[tuple[int, Any]]] = {"workflow": [], "interaction": []}
        self.workflow.on_saved(self._saved["workflow"].extend)
        self.interaction.on_saved(self._saved["interaction"].extend)
        self._envelope = {
            "workflow": envelope_factory(self.workflow, "workflow", set(WORKFLOW_PUBLISHED)),
            "interaction": envelope_factory(self.interaction, "interaction",
                                            set(INTERACTION_PUBLISHED), ENVELOPE_ALIASES),
        }
        self._position = 0

    def close(self) -> None:
        self.workflow.close()
        self.interaction.close()

    def _next_position(self) -> int:
        self._position += 1
        return self._position

    def published(self, service: str) -> list[EventEnvelope]:
        """What the service saved since last asked, as the next service receives it."""
        saved = list(self._saved[service])
        self._saved[service].clear()
        convert = self._envelope[service]
        envelopes = [convert(event, position) for position, event in saved]
        return [decode_envelope(e.model_dump_json().encode()) for e in envelopes if e]

    def start(self, thread_id: str) -> None:
        wire = StartThread(thread_id=thread_id, workflow=self.spec, state=dict(REQUEST))
        command = StartThread.model_validate_json(wire.model_dump_json())
        job = self.workflow.start_job(command, "bench", self._next_position())
        self.workflow.run_jobs([job])
        reply = self.workflow.start_reply(command, job)
        assert reply.ok, reply.error

    def cycle(self, thread_id: str) -> None:
        self.start(thread_id)
        opened = [e for e in self.published("workflow") if e.event_type in THREAD_EVENTS]
        self.interaction.run_jobs([
            self.interaction.thread_event_job(e.thread_id, e.event_type, e.payload, e.service,
                                              e.position) for e in opened])
        requested = next(e for e in self.published("interaction")
                         if e.event_type == "InteractionRequested")
        wire = ResumeThread(thread_id=thread_id, action="approve",
                            shown=requested.payload["shown"], idempotency_key=f"bench-{thread_id}")
        answer = ResumeThread.model_validate_json(wire.model_dump_json())
        job = self.interaction.respond_job(answer, "bench")
        self.interaction.run_jobs([job])
        assert job.result.ok, job.result
        accepted = next(e for e in self.published("interaction")
                        if e.event_type == "ResponseAccepted")
        self.workflow.run_jobs([self.workflow.answer_job(
            thread_id, decode_payload(accepted, ResponseAccepted), accepted.service,
            accepted.position)])
        ended = [e.event_type for e in self.published("workflow")]
        assert "ThreadCompleted" in ended, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--part", choices=("cycle", "start"), default="cycle")
    parser.add_argument("--postgres-dsn", help="PostgreSQL stores (a schema of the run's own)")
    parser.add_argument("--profile", choices=("tottime", "cumulative"),
                        help="print cProfile's 30 most costly functions, sorted so")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    with tempfile.TemporaryDirectory() as home:
        settings = (Settings(home=Path(home), auth=False, persistence="postgres",
                             postgres_dsn=args.postgres_dsn,
                             postgres_schema=f"bench_{uuid.uuid4().hex[:10]}")
                    if args.postgres_dsn else Settings(home=Path(home), auth=False))
        services = Services(settings)
        try:
            one: Callable[[str], None] = (services.cycle if args.part == "cycle"
                                          else services.start)
            for number in range(20):  # caches, the workflow version stored
                one(f"warm-{number}")
            profile = cProfile.Profile() if args.profile else None
            cpu, wall = time.process_time(), time.perf_counter()
            if profile is not None:
                profile.enable()
            for number in range(args.cycles):
                one(f"t-{number}")
            if profile is not None:
                profile.disable()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            services.close()
    print(f"{args.part}, {'PostgreSQL' if args.postgres_dsn else 'SQLite'} stores: "
          f"{cpu / args.cycles * 1000:.3f} ms CPU, {wall / args.cycles * 1000:.3f} ms wall "
          f"per {args.part} ({args.cycles})")
    if profile is not None:
        pstats.Stats(profile).sort_stats(args.profile).print_stats(30)


if __name__ == "__main__":
    main()
