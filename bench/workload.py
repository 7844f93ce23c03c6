"""What both engines are measured on, and the arithmetic shared by every phase.

The workload is the guide's approval flow (examples/approval.csv): start → validate →
approval gate (a person approves) → process → end. One *cycle* starts a thread, runs it to the
pause, resumes it with ``approve`` and runs it to completion.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = f"{ROOT / 'examples' / 'approval.csv'}::ApprovalFlow"
AGENTS = str(ROOT / "examples" / "agents.py")
REQUEST = {"user_request": "Buy 3 laptops for the new team"}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else math.nan,
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else math.nan,
    }


@dataclass
class CycleResult:
    """Cycles completed inside the measuring window, and the two halves of each cycle."""

    in_flight: int
    window_s: float
    cycles: int = 0
    #: every cycle completed, in the window or not (for CPU per cycle)
    cycles_all: int = 0
    errors: int = 0
    to_pause: list[float] = field(default_factory=list)
    to_complete: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "window_s": round(self.window_s, 3),
            "cycles": self.cycles,
            "cycles_all": self.cycles_all,
            "errors": self.errors,
            "cycles_per_s": round(self.cycles / self.window_s, 2) if self.window_s else 0.0,
            "start_to_pause": summary_ms(self.to_pause),
            "resume_to_complete": summary_ms(self.to_complete),
        }


Cycle = Callable[[str], Awaitable[tuple[float, float]]]


async def run_cycles(cycle: Cycle, in_flight: int, duration: float, warmup: float,
                     prefix: str) -> CycleResult:
    """``in_flight`` workers run cycles back to back; cycles ending in the window count."""
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + duration
    result = CycleResult(in_flight=in_flight, window_s=duration)
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while loop.time() < end:
            counter += 1
            thread_id = f"{prefix}-{counter}"
            try:
                to_pause, to_complete = await cycle(thread_id)
            except Exception:
                result.errors += 1
                continue
            result.cycles_all += 1
            now = loop.time()
            if begin <= now <= end:
                result.cycles += 1
                result.to_pause.append(to_pause)
                result.to_complete.append(to_complete)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return result


async def prepare_paused(pause: Callable[[str], Awaitable[Any]], thread_ids: Sequence[str],
                         in_flight: int, progress: Callable[[int], None] | None = None) -> int:
    """Bring every thread to its pause, ``in_flight`` at a time; returns how many failed."""
    queue = iter(thread_ids)
    failed = 0
    done = 0

    async def worker() -> None:
        nonlocal failed, done
        for thread_id in queue:
            try:
                await pause(thread_id)
            except Exception:
                failed += 1
            done += 1
            if progress is not None and done % 10_000 == 0:
                progress(done)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return failed


async def open_loop(resume: Callable[[str], Awaitable[float]], thread_ids: Sequence[str],
                    rate: float) -> dict[str, Any]:
    """Send one resume every 1/rate seconds, whatever the engine does; latency of each."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    lag: list[float] = []

    async def one(thread_id: str) -> None:
        nonlocal errors
        try:
            latencies.append(await resume(thread_id))
        except Exception:
            errors += 1

    tasks = []
    t0 = loop.time() + 0.05
    for index, thread_id in enumerate(thread_ids):
        target = t0 + index / rate
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.append(max(0.0, loop.time() - target))
        tasks.append(asyncio.create_task(one(thread_id)))
    sent_over = loop.time() - t0
    await asyncio.gather(*tasks)
    return {
        "rate_target": rate,
        "rate_sent": round(len(thread_ids) / sent_over, 2) if sent_over > 0 else 0.0,
        "errors": errors,
        "send_lag_p99_ms": round(percentile(lag, 99) * 1000, 3),
        **summary_ms(latencies),
    }


def stopwatch() -> Callable[[], float]:
    started = time.perf_counter()
    return lambda: time.perf_counter() - started
