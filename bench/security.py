"""What the audit features cost: ``python -m bench.security``.

1. Encryption at rest: the approval cycle (start → pause → resume → complete, the workload of
   ``make bench``) on ``hitlflow up`` with encryption on and off, alternated in the same run,
   ``--rounds`` times each; cycles per second and the ratio.
2. ``hitlflow audit verify`` over the stores that run left: events read per second.
3. Time travel on a thread of about 1,000 events (a conversation answered until it has them):
   the latency of ``thread_at`` (timeline query + fold) at its last event, p50 and p95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.hitl_load import Driver, StackProcess
from hitlflow.client import HitlClient
from hitlflow.settings import Settings
from projections.verify import verify
from services.workflow.definition import parse_workflow

CONVERSATION = """\
graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,input_fields,output_field,\
context
Talk,start,input,talk,,,topic,topic,
Talk,talk,conversation_interaction,talk,done,Say something about {topic},topic,reply,
Talk,done,output,,,Done,reply,result,
"""


async def throughput(stack: StackProcess, cycles: int, in_flight: int, tag: str) -> float:
    driver = Driver(stack.nats_url, stack.nats_auth)
    await driver.connect()
    try:
        gate = asyncio.Semaphore(in_flight)

        async def one(number: int) -> None:
            async with gate:
                await driver.cycle(f"{tag}-{number}")

        await asyncio.gather(*(one(i) for i in range(in_flight)))  # warm up
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(in_flight, in_flight + cycles)))
        return cycles / (time.perf_counter() - started)
    finally:
        await driver.close()


def encryption_phase(work: Path, rounds: int, cycles: int, in_flight: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for number in range(rounds):
        for mode in ("on", "off") if number % 2 == 0 else ("off", "on"):
            os.environ["HITLFLOW_ENCRYPTION"] = "true" if mode == "on" else "false"
            stack = StackProcess(work / f"{mode}-{number}", log_level="WARNING")
            stack.start()
            try:
                rate = asyncio.run(throughput(stack, cycles, in_flight, f"{mode}{number}"))
            finally:
                stack.stop()
            rates[mode].append(rate)
            print(f"  encryption {mode:3}: {rate:7.1f} cycles/s", flush=True)
    os.environ.pop("HITLFLOW_ENCRYPTION", None)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {"cycles_per_s_encrypted": round(on, 1), "cycles_per_s_plain": round(off, 1),
            "ratio": round(on / off, 3), "rounds": rates}


def verify_phase(home: Path) -> dict[str, Any]:
    report = verify(Settings(home=home))
    return {"events_read": report.read, "threads": report.threads,
            "seconds": round(report.seconds, 3), "events_per_s": round(report.rate),
            "ok": report.ok}


async def _long_thread(nats_url: str, events: int, samples: int) -> dict[str, Any]:
    client = HitlClient(nats_url, reply_timeout=30)
    await client.connect()
    try:
        spec = parse_workflow(CONVERSATION, "Talk", source="bench")
        thread = f"long-{int(time.time())}"
        await client.start(spec, {"topic": "history"}, thread_id=thread)
        total = 0
        answers = 0
        while total < events:
            await client.resume(thread, "respond", {"message": f"turn {answers}"})
            answers += 1
            if answers % 20 == 0:
                total = len((await client.timeline(thread))[1])
        view, timeline = await client.timeline(thread)
        assert view is not None
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            then = await client.thread_at(thread, len(timeline))
            times.append((time.perf_counter() - started) * 1000)
            assert then is not None
        times.sort()
        return {"events": len(timeline), "answers": answers, "samples": samples,
                "p50_ms": round(times[len(times) // 2], 1),
                "p95_ms": round(times[int(len(times) * 0.95) - 1], 1)}
    finally:
        await client.close()


def time_travel_phase(work: Path, events: int, samples: int) -> dict[str, Any]:
    stack = StackProcess(work / "long", log_level="WARNING")
    stack.start()
    try:
        return asyncio.run(_long_thread(stack.nats_url, events, samples))
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hitlflow-bench-security-") as tmp:
        work = Path(tmp)
        print(f"encryption at rest ({args.rounds} rounds of {args.cycles} cycles, "
              f"{args.in_flight} in flight):", flush=True)
        encryption = encryption_phase(work, args.rounds, args.cycles, args.in_flight)
        print(f"  median {encryption['cycles_per_s_encrypted']} vs "
              f"{encryption['cycles_per_s_plain']} cycles/s: ratio {encryption['ratio']}")
        checked = verify_phase(work / "on-0")
        print(f"audit verify: {checked['events_read']} events in {checked['seconds']} s = "
              f"{checked['events_per_s']} events/s (ok={checked['ok']})")
        travel = time_travel_phase(work, args.events, args.samples)
        print(f"time travel on a thread of {travel['events']} events: p50 {travel['p50_ms']} "
              f"ms, p95 {travel['p95_ms']} ms ({travel['samples']} samples)")


if __name__ == "__main__":
    main()
