"""What the services a resume does not wait on cost its latency.

    python -m bench.contention [--rounds 3] [--resumes 400] [--rate 100]

Starts ``hitlflow up`` as ``make bench`` does and measures resume latency at ``--rate`` resumes
per second, alternating two conditions in one sitting: every service running, and the
projections and timeout services stopped (SIGSTOP) for the measurement and continued (SIGCONT)
after it. Their consumers then catch up before the next round. Prints p50 / p99 of each round;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path

import psutil

from bench.hitl_load import Driver, StackProcess
from bench.workload import open_loop, prepare_paused

#: The services off a resume's path: they follow its events, nobody waits on them here.
OFF_PATH = ("serve projections", "serve timeout")


def off_path(stack: StackProcess) -> list[psutil.Process]:
    services, _ = stack.processes()
    return [p for p in services if any(word in " ".join(p.cmdline()) for word in OFF_PATH)]


async def measure(stack: StackProcess, args: argparse.Namespace) -> dict[str, list[str]]:
    driver = Driver(stack.nats_url, stack.nats_auth)
    await driver.connect()
    rounds: dict[str, list[str]] = {"all running": [], "background stopped": []}
    try:
        for index in range(args.rounds):
            for condition, lines in rounds.items():
                ids = [f"c{index}-{condition[0]}-{i}" for i in range(args.resumes)]
                await prepare_paused(driver.pause, ids, 32)
                await asyncio.to_thread(stack.wait_idle)
                stopped = off_path(stack) if condition == "background stopped" else []
                for process in stopped:
                    process.send_signal(signal.SIGSTOP)
                try:
                    result = await open_loop(driver.resume, ids, args.rate)
                finally:
                    for process in stopped:
                        process.send_signal(signal.SIGCONT)
                line = f"{result['p50_ms']:.2f} / {result['p99_ms']:.2f} ms"
                lines.append(line)
                print(f"round {index + 1}, {condition}: p50 / p99 {line}", flush=True)
                await asyncio.to_thread(stack.wait_idle)
    finally:
        await driver.close()
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resumes", type=int, default=400, help="per round and condition")
    parser.add_argument("--rate", type=float, default=100.0, help="resumes per second")
    args = parser.parse_args()
    stack = StackProcess(Path(tempfile.mkdtemp(prefix="hitlflow-contention-")) / "home")
    stack.start()
    try:
        rounds = asyncio.run(measure(stack, args))
    finally:
        stack.stop()
    for condition, lines in rounds.items():
        print(f"{condition:>20}: {', '.join(lines)}")


if __name__ == "__main__":
    main()
