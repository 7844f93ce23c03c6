"""hitlflow under load: the embedded stack in its own process, driven over NATS.

The services run exactly as ``hitlflow up`` runs them (a child process with nats-server from the
wheel and one process per service — workflow, interaction, timeout, projections — or, with
``--one-process``, every service in the ``up`` process; SQLite stores), with the example agents.
The load generator in this process speaks the documented wire contract, as an enterprise system
would: it publishes StartThread / ResumeThread to JetStream (``Hitl-Reply-To`` set, so every
command gets its reply) and follows the thread's published events. A thread has *paused* when the
interaction service has opened its request (InteractionRequested published) and is *completed*
when ThreadCompleted is published — every event by then saved in a store and in HITL_EVENTS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
from nats.aio.msg import Msg

from bench.workload import AGENTS, REQUEST, WORKFLOW, summary_ms
from contracts import subjects
from contracts.commands import CommandReply, ResumeThread, StartThread
from contracts.workflow import WorkflowSpec
from hitlflow import auth
from hitlflow.stack import free_port
from services.common.messaging import NatsAuth, connect, inbox_prefix
from services.workflow.agents import AgentRegistry
from services.workflow.definition import load_workflow


def is_nats_server(process: psutil.Process) -> bool:
    return "nats-server" in process.name() or any("nats-server" in part
                                                   for part in process.cmdline()[:1])


#: The NATS user the load generator is: a system (it starts threads and answers them), as an
#: enterprise system publishing commands would be.
BENCH_USER = "bench"


class StackProcess:
    """``python -m hitlflow up`` with its own home directory and port, and a system user
    (:data:`BENCH_USER`) for the load generator, made before the stack starts."""

    def __init__(self, home: Path, *, log_level: str = "INFO", one_process: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.log_level = log_level
        self.one_process = one_process
        #: Settings of the stack beside the bench's own (e.g. ``HITLFLOW_PERSISTENCE``).
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def nats_auth(self) -> NatsAuth:
        """The load generator's NATS credentials (authorization is on, as ``up`` runs it)."""
        users = auth.load(auth.auth_files(self.home))
        return {"user": BENCH_USER, "password": users[BENCH_USER]["password"], "token": None}

    def start(self, timeout: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        files = auth.auth_files(self.home)
        auth.ensure(files)
        auth.add_user(files, BENCH_USER, "system", [])
        # no HTTP gateway: the figures are the services' (and port 8080 may be taken)
        env = {**os.environ, "HITLFLOW_AGENTS": AGENTS, "HITLFLOW_HOME": str(self.home),
               "HITLFLOW_LOG_LEVEL": self.log_level, "HITLFLOW_GATEWAY": "false", **self.env}
        env.pop("HITLFLOW_NATS_URL", None)
        log = (self.home / "stack.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hitlflow", "up", "--home", str(self.home),
             "--port", str(self.port), *(["--one-process"] if self.one_process else [])],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
        )
        stack_file = self.home / "stack.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.home / "stack.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"hitlflow up exited:\n{tail}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(stack_file.read_text())["pid"] == self.process.pid:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"hitlflow up did not start in {timeout:g}s")

    def stop(self) -> None:
        if self.process is None:
            return
        children: list[psutil.Process] = []
        if self.process.poll() is None:
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(self.process.pid).children(recursive=True)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for child in children:  # its nats-server, should the stack not have stopped it
            with contextlib.suppress(psutil.Error):
                child.terminate()
                child.wait(timeout=10)
        self.process = None

    def processes(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """The services (the ``up`` process and its children but nats-server) and nats-server.

        A service process restarted meanwhile is counted from its restart on.
        """
        up = psutil.Process(self.pid)
        services, nats_servers = [up], []
        for child in up.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                (nats_servers if is_nats_server(child) else services).append(child)
        return services, nats_servers

    def memory(self) -> dict[str, Any]:
        """Resident memory of the services' processes and, apart, of nats-server."""
        services, nats_servers = self.processes()
        return {"services_rss_bytes": _rss(services), "nats_rss_bytes": _rss(nats_servers)}

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) of the services' processes so far."""
        services, _ = self.processes()
        return float(sum(t.user + t.system for t in _cpu_times(services)))

    def cpu_split(self) -> dict[str, float]:
        """CPU seconds so far: services (user, system), nats-server, this load generator, and
        each service process (``process:<service>``, user + system; ``process:up`` is the
        supervisor)."""
        services, nats_servers = self.processes()
        times = _cpu_times(services)
        own = psutil.Process().cpu_times()
        split = {"services_user": float(sum(t.user for t in times)),
                 "services_system": float(sum(t.system for t in times)),
                 "nats": float(sum(t.user + t.system for t in _cpu_times(nats_servers))),
                 "load_generator": own.user + own.system}
        for process in services:
            with contextlib.suppress(psutil.Error):
                used = process.cpu_times()
                split[f"process:{_service_name(process)}"] = used.user + used.system
        return split

    def wait_idle(self, threshold: float = 0.05, quiet: float = 1.5, limit: float = 120.0) -> None:
        """Until the services, together, use under ``threshold`` of a core for ``quiet`` s."""
        step = 0.5
        before = self.cpu_seconds()
        calm = 0.0
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and calm < quiet:
            time.sleep(step)
            now = self.cpu_seconds()
            calm = calm + step if now - before < threshold * step else 0.0
            before = now

    def disk(self) -> dict[str, int]:
        def size(path: Path) -> int:
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

        return {"stores_bytes": size(self.home / "stores"),
                "jetstream_bytes": size(self.home / "nats")}


def _service_name(process: psutil.Process) -> str:
    """``workflow`` for ``… hitlflow serve workflow …``; ``up`` for the supervisor."""
    command = process.cmdline()
    return command[command.index("serve") + 1] if "serve" in command[:-1] else "up"


def _cpu_times(processes: list[psutil.Process]) -> list[Any]:
    found = []
    for process in processes:
        with contextlib.suppress(psutil.Error):  # exited meanwhile
            found.append(process.cpu_times())
    return found


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class Driver:
    """Sends commands and resolves futures from the replies and events it sees."""

    def __init__(self, nats_url: str, nats_auth: NatsAuth) -> None:
        self.nats_url = nats_url
        self.nats_auth = nats_auth
        self.principal = nats_auth["user"] or BENCH_USER
        self.workflow: WorkflowSpec = load_workflow(WORKFLOW,
                                                    registry=AgentRegistry.load([AGENTS]))
        self._paused: dict[str, asyncio.Future[None]] = {}
        self._done: dict[str, asyncio.Future[None]] = {}
        self._inbox = f"{inbox_prefix(self.principal)}.bench{os.getpid()}"
        #: Each paused thread's request ``shown`` (from its InteractionRequested): what the
        #: answer is given to.
        self._shown: dict[str, str] = {}
        self.nc: Any = None
        self.js: Any = None
        self.refused: list[str] = []
        #: While :meth:`follow_events` runs: each thread's published events as they arrive,
        #: ``(perf_counter(), "<service>.<EventName>")``.
        self.seen: dict[str, list[tuple[float, str]]] = {}

    async def connect(self) -> None:
        self.nc = await connect(self.nats_url, name="hitlflow-bench", **self.nats_auth)
        self.js = self.nc.jetstream()
        await self.nc.subscribe("hitl.evt.interaction.InteractionRequested.*",
                                cb=self._on_requested)
        await self.nc.subscribe("hitl.evt.workflow.ThreadCompleted.*", cb=self._on_completed)
        await self.nc.subscribe("hitl.evt.workflow.ThreadFailed.*", cb=self._on_failed)
        await self.nc.subscribe(f"{self._inbox}.>", cb=self._on_reply)
        await self.nc.flush()

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.drain()

    @contextlib.asynccontextmanager
    async def follow_events(self) -> AsyncIterator[dict[str, list[tuple[float, str]]]]:
        """Note when every published event arrives (in :attr:`seen`, by thread) while open."""
        self.seen = {}

        async def noted(msg: Msg) -> None:
            _, _, service, kind, thread_id = msg.subject.split(".", 4)
            self.seen.setdefault(thread_id, []).append((time.perf_counter(),
                                                        f"{service}.{kind}"))

        sub = await self.nc.subscribe("hitl.evt.>", cb=noted)
        await self.nc.flush()
        try:
            yield self.seen
        finally:
            await sub.unsubscribe()

    @staticmethod
    def _resolve(futures: dict[str, asyncio.Future[None]], thread_id: str,
                 error: str | None = None) -> None:
        future = futures.pop(thread_id, None)
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(error))

    async def _on_requested(self, msg: Msg) -> None:
        thread_id = msg.subject.rsplit(".", 1)[-1]
        self._shown[thread_id] = json.loads(msg.data)["payload"]["shown"]
        self._resolve(self._paused, thread_id)

    async def _on_completed(self, msg: Msg) -> None:
        self._resolve(self._done, msg.subject.rsplit(".", 1)[-1])

    async def _on_failed(self, msg: Msg) -> None:
        thread_id = msg.subject.rsplit(".", 1)[-1]
        self._resolve(self._paused, thread_id, "thread failed")
        self._resolve(self._done, thread_id, "thread failed")

    async def _on_reply(self, msg: Msg) -> None:
        reply = CommandReply.model_validate_json(msg.data)
        if not reply.ok:
            self.refused.append(f"{reply.code}: {reply.error}")
            self._resolve(self._paused, reply.thread_id, reply.error)
            self._resolve(self._done, reply.thread_id, reply.error)

    async def _command(self, subject: str, payload: bytes, kind: str, thread_id: str) -> None:
        await self.js.publish(subject, payload, headers={
            subjects.REPLY_TO_HEADER: f"{self._inbox}.{kind}.{thread_id}"})

    async def pause(self, thread_id: str, timeout: float = 60.0) -> float:
        """Start a thread; seconds until its request is open."""
        future = self._paused[thread_id] = asyncio.get_running_loop().create_future()
        command = StartThread(thread_id=thread_id, workflow=self.workflow, state=dict(REQUEST))
        t0 = time.perf_counter()
        await self._command(subjects.start_subject(self.principal, thread_id),
                            command.model_dump_json().encode(), "start", thread_id)
        await asyncio.wait_for(future, timeout)
        return time.perf_counter() - t0

    async def resume(self, thread_id: str, timeout: float = 60.0) -> float:
        """Approve a paused thread; seconds from sending the command until ThreadCompleted."""
        future = self._done[thread_id] = asyncio.get_running_loop().create_future()
        command = ResumeThread(thread_id=thread_id, action="approve",
                               idempotency_key=f"bench-{thread_id}",
                               shown=self._shown.pop(thread_id))
        payload = command.model_dump_json().encode()
        t0 = time.perf_counter()
        await self._command(subjects.resume_subject(self.principal, thread_id), payload,
                            "resume", thread_id)
        await asyncio.wait_for(future, timeout)
        return time.perf_counter() - t0

    async def cycle(self, thread_id: str) -> tuple[float, float]:
        return await self.pause(thread_id), await self.resume(thread_id)


#: After the last lone cycle, the events that follow its completion (the timeout service
#: clears a deadline after lingering: services/timeout/handlers.py) are waited for until none
#: has come for ``QUIET`` s, at most ``TRAILING`` s.
QUIET = 0.5
TRAILING = 5.0


async def lone_cycles(driver: Driver, cycles: int, prefix: str = "lone") -> dict[str, Any]:
    """``cycles`` cycles one after the other, hop by hop (see :func:`hops`)."""
    sent: dict[str, tuple[float, float]] = {}
    async with driver.follow_events() as seen:
        for n in range(cycles):
            thread_id = f"{prefix}-{n}"
            began = time.perf_counter()
            to_pause = await driver.pause(thread_id)
            sent[thread_id] = (began, began + to_pause)  # the resume goes out at once
            await driver.resume(thread_id)
        await _until_quiet(seen)
    return hops(sent, seen)


async def _until_quiet(seen: dict[str, list[tuple[float, str]]]) -> None:
    """Until no event has arrived for :data:`QUIET` seconds (at most :data:`TRAILING`)."""
    give_up = time.perf_counter() + TRAILING
    while (now := time.perf_counter()) < give_up:
        last = max((events[-1][0] for events in seen.values() if events), default=0.0)
        if now - last >= QUIET:
            return
        await asyncio.sleep(min(QUIET - (now - last), give_up - now))


def hops(sent: dict[str, tuple[float, float]],
         seen: dict[str, list[tuple[float, str]]]) -> dict[str, Any]:
    """Where a lone cycle's time goes: for each kind of event a cycle publishes, in each half
    (``start``: up to its request, InteractionRequested, which the resume answers;
    ``resume``: after it), when the last one of the half was seen, in ms after the start
    command was sent; and how many a cycle has. ``sent`` holds each thread's (start sent,
    resume sent), ``seen`` its events as :meth:`Driver.follow_events` noted them."""
    offsets: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], int] = {}
    for thread_id, (began, _) in sent.items():
        last: dict[tuple[str, str], float] = {}
        half = "start"
        for at, event in seen.get(thread_id, []):
            key = (half, event)
            if event == "interaction.InteractionRequested":
                half = "resume"
            last[key] = at - began
            counts[key] = counts.get(key, 0) + 1
        for key, offset in last.items():
            offsets.setdefault(key, []).append(offset)
    rows: list[dict[str, Any]] = [
        {"half": half, "event": event, "per_cycle": round(counts[half, event] / len(sent), 2),
         **summary_ms(values)} for (half, event), values in offsets.items()]
    rows.sort(key=lambda row: row["p50_ms"])
    return {"cycles": len(sent),
            "resume_sent": summary_ms([resumed - began for began, resumed in sent.values()]),
            "events": rows}
