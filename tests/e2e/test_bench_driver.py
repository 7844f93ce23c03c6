"""The benchmark's load generator against `hitlflow up` as the bench starts it: it connects as
a system user (authorization on, as `up` runs it), starts threads, answers each request with
its `shown`, and sees them complete, with no command refused. Figures are not checked here
(bench/README.md); that the bench still speaks the stack's contract is."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.decisions import Services
from bench.hitl_load import BENCH_USER, Driver, StackProcess, lone_cycles
from bench.workload import open_loop, prepare_paused, run_cycles
from hitlflow.settings import Settings
from services.workflow.domain import thread_uuid


def test_the_bench_drives_cycles_and_resumes_on_an_up_stack(tmp_path: Path) -> None:
    stack = StackProcess(tmp_path / "home", log_level="WARNING")
    stack.start()
    try:
        async def drive() -> None:
            driver = Driver(stack.nats_url, stack.nats_auth)
            await driver.connect()
            try:
                cycles = await run_cycles(driver.cycle, 2, duration=1.5, warmup=0.2,
                                          prefix="smoke")
                assert cycles.errors == 0
                assert cycles.cycles > 0 and len(cycles.to_pause) == cycles.cycles
                paused = [f"paused-{n}" for n in range(10)]
                assert await prepare_paused(driver.pause, paused, 5) == 0
                latency = await open_loop(driver.resume, paused, rate=50)
                assert latency["errors"] == 0 and latency["count"] == 10
                lone = await lone_cycles(driver, 3)
                assert lone["cycles"] == 3 and lone["resume_sent"]["count"] == 3
                rows = {(row["half"], row["event"]): row for row in lone["events"]}
                path = [("start", "workflow.ThreadPaused"),
                        ("start", "interaction.InteractionRequested"),
                        ("resume", "interaction.ResponseAccepted"),
                        ("resume", "workflow.ThreadCompleted")]
                assert all(rows[key]["per_cycle"] == 1 for key in path), rows
                # each hop waits for the one before it, in every cycle: so do their medians
                at = [rows[key]["p50_ms"] for key in path]
                assert at == sorted(at) and at[0] > 0, at
                assert driver.refused == []
            finally:
                await driver.close()

        asyncio.run(drive())
        assert stack.nats_auth["user"] == BENCH_USER
        split = stack.cpu_split()
        assert split["services_user"] > 0
        each = {name: split[f"process:{name}"]
                for name in ("workflow", "interaction", "timeout", "projections")}
        assert all(seconds > 0 for seconds in each.values()), each
    finally:
        stack.stop()


def test_the_in_process_cycle_of_the_bench_runs_to_completion(settings: Settings) -> None:
    """`python -m bench.decisions`: the services' jobs of a cycle, without NATS."""
    services = Services(settings)
    try:
        for number in range(3):
            services.cycle(f"decisions-{number}")  # asserts each step's outcome itself
        thread = services.workflow.repository.get(thread_uuid("decisions-2"))
        assert thread.status == "completed"
    finally:
        services.close()
