"""The ``hitlflow`` command.

Exit codes scripts can trust: 0 done/accepted; 1 refused (a response or command the services
rejected, with the reason on stderr); 2 bad input (unreadable CSV, invalid option); 3 no stack
(nothing answers at the NATS URL, or no outcome in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from contracts.limits import (
    MAX_ANSWER_BYTES,
    MAX_STATE_BYTES,
    NotTextError,
    TooLargeError,
    check_bytes,
)
from contracts.subjects import InvalidThreadIdError, check_thread_id
from hitlflow import cli_demo, cli_doctor, cli_identity, cli_projections, display
from hitlflow.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_NO_STACK,
    EXIT_REFUSED,
    OPTION_NAMES,
    ForPerson,
    JsonOut,
    NatsUrl,
    client_for,
    describe_input_error,
    err,
    fail,
    flow_help,
    out,
    say_error,
)
from hitlflow.cli_timeouts import app as timeouts_app
from hitlflow.client import NoOutcomeError, Outcome, StackUnavailableError
from hitlflow.settings import Settings, SettingsError, load_settings
from services.common.keyring import KeyRingError
from services.common.logging import (
    configure_command_logging,
    configure_logging,
    get_logger,
)
from services.common.messaging import ServerLimitError
from services.common.output import whole_text
from services.workflow.definition import WorkflowError, load_workflow

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Workflows that pause for people and resume on their answer.")


def _settings(nats_url: str | None = None) -> Settings:
    return load_settings(nats_url=nats_url)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except StackUnavailableError as error:
        fail(str(error), EXIT_NO_STACK)
    except NoOutcomeError as error:
        fail(str(error), EXIT_NO_STACK)
    except (TooLargeError, NotTextError) as error:
        fail(str(error), EXIT_BAD_INPUT)
    except ValidationError as error:  # an option the command's contract does not allow
        fail(describe_input_error(error, OPTION_NAMES), EXIT_BAD_INPUT)


def _read_input(path: Path, what: str, limit: int) -> str:
    """A file given as input, refused before it is read when it is larger than ``limit``."""
    try:
        check_bytes(f"{what} {path}", path.stat().st_size, limit)
        return path.read_text(encoding="utf-8")
    except TooLargeError as error:
        fail(str(error), EXIT_BAD_INPUT)
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read {what} {path}: {getattr(error, 'strerror', None) or error}",
             EXIT_BAD_INPUT)


def _thread_id(value: str) -> str:
    try:
        return check_thread_id(value)
    except InvalidThreadIdError as error:
        fail(str(error), EXIT_BAD_INPUT)


def _report(outcome: Outcome, as_json: bool) -> None:
    data = outcome.as_dict()
    if as_json:
        out.print_json(json.dumps(data, default=str))
    elif outcome.ok:
        if outcome.reply.command == "resume" and not outcome.reply.decided:
            out.print(f"[green]vote recorded[/]: {outcome.reply.action} on request "
                      f"{outcome.reply.interaction_id} (the quorum has not decided yet)")
        elif outcome.reply.command == "resume":
            out.print(f"[green]accepted[/]: {outcome.reply.action} on request "
                      f"{outcome.reply.interaction_id}")
        display.show_outcome(out, data)
    if not outcome.ok:
        fail(f"{outcome.reply.code}: {outcome.reply.error}", EXIT_REFUSED)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        fail(f"{what} is not valid JSON ({error.msg} at character {error.pos}); "
             "expected a JSON object like '{\"key\": \"value\"}'", EXIT_BAD_INPUT)
    if not isinstance(value, dict):
        fail(f"{what} must be a JSON object, got {type(value).__name__}", EXIT_BAD_INPUT)
    return value


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="FILE.csv::GraphName")],
    state: Annotated[str, typer.Option("--state", help="Initial state, a JSON object.")] = "{}",
    state_file: Annotated[Path | None, typer.Option("--state-file")] = None,
    thread_id: Annotated[str | None, typer.Option("--thread-id",
                                                  help="Your own id for the thread.")] = None,
    for_person: ForPerson = None,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Start a thread; returns when it pauses or ends, showing what it waits for."""
    try:
        workflow = load_workflow(target)
    except WorkflowError as error:
        fail(str(error), EXIT_BAD_INPUT)
    text = _read_input(state_file, "--state-file", MAX_STATE_BYTES) if state_file else state
    initial = _json_object(text, "--state-file" if state_file else "--state")
    if thread_id is not None:
        _thread_id(thread_id)
    settings = _settings(nats_url)

    async def go() -> Outcome:
        async with client_for(settings) as client:
            return await client.start(workflow, initial, thread_id=thread_id,
                                      on_behalf_of=for_person)

    _report(_run(go()), as_json)


@app.command()
def resume(
    thread_id: Annotated[str, typer.Argument(help="The paused thread.")],
    action: Annotated[str, typer.Argument(help="approve, reject, edit, choose, respond, end")],
    data: Annotated[str | None, typer.Option("--data", help="Response data, a JSON object.")]
    = None,
    data_file: Annotated[Path | None, typer.Option("--data-file")] = None,
    request_id: Annotated[str | None, typer.Option("--request-id",
                                                   help="Which request, when several wait.")]
    = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key: sending the same "
                                            "key again repeats the first outcome.")] = None,
    shown: Annotated[str | None, typer.Option(
        "--shown", help="The version of the request you answer (from 'pending --json'); "
        "refused as stale_view if it was re-sent since. Default: the one open now.")] = None,
    for_person: ForPerson = None,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Answer a paused thread (the guide's resume commands), as the principal your NATS
    credentials name (a system user may answer --for a person)."""
    _thread_id(thread_id)
    if data is not None and data_file is not None:
        fail("give either --data or --data-file, not both", EXIT_BAD_INPUT)
    text = _read_input(data_file, "--data-file", MAX_ANSWER_BYTES) if data_file else data
    parsed: Any = None
    raw: str | None = None
    if text is not None:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raw = text  # sent as typed: the service refuses it and keeps it in the audit
    settings = _settings(nats_url)

    async def go() -> Outcome:
        async with client_for(settings) as client:
            return await client.resume(thread_id, action, parsed, raw_data=raw,
                                       request_id=request_id, idempotency_key=key,
                                       shown=shown, on_behalf_of=for_person)

    _report(_run(go()), as_json)


@app.command()
def cancel(
    thread_id: str,
    reason: Annotated[str, typer.Option("--reason")] = "",
    for_person: ForPerson = None,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Cancel a thread that has not ended."""
    _thread_id(thread_id)
    settings = _settings(nats_url)

    async def go() -> Outcome:
        async with client_for(settings) as client:
            return await client.cancel(thread_id, reason, on_behalf_of=for_person)

    _report(_run(go()), as_json)


@app.command()
def status(thread_id: str, nats_url: NatsUrl = None, as_json: JsonOut = False) -> None:
    """A thread's status, current node and pending requests."""
    _thread_id(thread_id)
    settings = _settings(nats_url)

    async def go() -> Any:
        async with client_for(settings) as client:
            return await client.thread(thread_id)

    view = _run(go())
    if view is None:
        fail(f"unknown thread {thread_id!r}", EXIT_REFUSED)
    data = view.model_dump(mode="json")
    if as_json:
        out.print_json(json.dumps(data))
        return
    display.show_outcome(out, {**data, "node": data["current_node"],
                               "pending": data["pending"]})


@app.command()
def pending(
    thread_id: Annotated[str | None, typer.Argument()] = None,
    limit: Annotated[int, typer.Option("--limit")] = 100,
    mine: Annotated[bool, typer.Option(
        "--mine", help="Only the requests you may answer now (yours, your groups', anyone's; "
                       "not those someone else claimed).")] = False,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Open requests waiting for a person (all threads, or one)."""
    if thread_id:
        _thread_id(thread_id)
    settings = _settings(nats_url)
    if mine:
        cli_identity.mine(settings, limit, as_json)
        return

    async def go() -> Any:
        async with client_for(settings) as client:
            return await client.pending(thread_id, limit)

    items = [p.model_dump(mode="json") for p in _run(go())]
    if as_json:
        out.print_json(json.dumps(items))
        return
    if not items:
        out.print("nothing is waiting for a person")
    by_thread: dict[str, int] = {}
    for item in items:
        by_thread[item["thread_id"]] = by_thread.get(item["thread_id"], 0) + 1
    for item in items:
        out.print(display.request_panel(item, several=by_thread[item["thread_id"]] > 1))


@app.command()
def validate(
    target: Annotated[str, typer.Argument(help="FILE.csv or FILE.csv::GraphName")],
    agents: Annotated[str | None, typer.Option(
        "--agents", help="Modules or .py files registering agents (default: HITLFLOW_AGENTS).",
    )] = None,
    as_json: JsonOut = False,
) -> None:
    """Check a CSV workflow; every problem is reported with its row and column.

    Errors stop a run (exit 2); warnings do not, but are likely mistakes (exit 1 when there
    are only warnings); exit 0 when the file is clean.
    """
    from services.workflow.agents import AgentRegistry, UnknownAgentError
    from services.workflow.definition import check_workflow, graph_names, split_target

    settings = _settings()
    modules = ([m.strip() for m in agents.split(",") if m.strip()] if agents is not None
               else settings.agent_modules())
    try:
        registry = AgentRegistry.load(modules)
    except (UnknownAgentError, ImportError) as error:
        fail(f"cannot load agents {modules}: {error}", EXIT_BAD_INPUT)
    path, graph = split_target(target)
    try:
        names = [graph] if graph else graph_names(Path(path))
    except WorkflowError as error:
        fail(str(error), EXIT_BAD_INPUT)
    found_errors: list[Any] = []
    found_warnings: list[Any] = []
    for name in names:
        try:
            report = check_workflow(path, name, registry=registry)
        except WorkflowError as error:
            found_errors += error.problems
        else:
            found_errors += report.errors
            found_warnings += report.warnings
    if as_json:
        out.print_json(json.dumps({
            "ok": not found_errors and not found_warnings, "graphs": names,
            "problems": [str(p) for p in found_errors],
            "errors": [{"row": p.row, "column": p.column, "message": p.message}
                       for p in found_errors],
            "warnings": [{"row": p.row, "column": p.column, "message": p.message}
                         for p in found_warnings],
        }))
    elif not found_errors and not found_warnings:
        out.print(f"[green]ok[/]: {path} ({', '.join(names)})")
    if not as_json:
        for problem in [*found_errors, *found_warnings]:
            err.print(problem.describe(), markup=False, highlight=False, soft_wrap=True)
        summary = [f"{len(found_errors)} error(s): a run is refused until they are fixed"
                   if found_errors else "",
                   f"{len(found_warnings)} warning(s): the workflow "
                   f"{'would run' if found_errors else 'runs'}, but check them"
                   if found_warnings else ""]
        if found_errors or found_warnings:
            err.print("; ".join(s for s in summary if s), markup=False, highlight=False,
                      soft_wrap=True)
    if found_errors:
        raise typer.Exit(EXIT_BAD_INPUT)
    if found_warnings:
        raise typer.Exit(EXIT_REFUSED)


# -- running the stack ------------------------------------------------------------------------


def _live_stack(settings: Settings) -> dict[str, Any] | None:
    """The stack ``stack.json`` describes, if its process is still the one that wrote it
    (:func:`_stack_state`)."""
    state, info = _stack_state(settings)
    return info if state == "live" else None


def _stack_state(settings: Settings) -> tuple[str, dict[str, Any] | None]:
    """``("none", None)`` when no stack file is there; ``("crashed", None)`` when the stack
    that wrote it is gone (crash, kill -9, reboot: the file is removed); else ``("live",
    info)``, with ``info["nats_ok"]`` saying whether its NATS answers."""
    from hitlflow.stack import nats_answers, process_identity

    try:
        info: dict[str, Any] = json.loads(settings.stack_file.read_text())
        pid = int(info["pid"])
    except FileNotFoundError:
        return "none", None
    except (OSError, ValueError, KeyError, TypeError):  # half a file: nobody is behind it
        pid, info = -1, {}
    started = info.get("pid_start")
    alive = process_identity(pid) if pid > 0 else None
    if alive is None or (started is not None and alive != started):
        with contextlib.suppress(OSError):
            settings.stack_file.unlink()
        return "crashed", None
    info["nats_ok"] = nats_answers(str(info.get("nats_url", "")))
    return "live", info


#: How long ``hitlflow serve`` lets its service stop before it exits anyway: under the 30 s
#: ``hitlflow up`` waits before killing a service process, and bounded even when nothing will
#: kill it (its stack was killed and NATS went away at the same moment).
SERVE_STOP_TIMEOUT = 20.0


def _exit_after(seconds: float, service: str) -> None:
    """Exit the process in ``seconds`` unless it has ended by then. A daemon thread, since the
    event loop may be what is stuck; exiting like this is a crash, which the services survive
    (their stores are the truth, unacknowledged messages are delivered again)."""
    def force() -> None:
        get_logger(__name__).warning("service_stop_timed_out", service=service,
                                     after_seconds=seconds)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


async def _serve_until_signal(start: Any, stop: Any, on_started: Any = None,
                              on_stopping: Any = None) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    try:
        if on_started:
            on_started()
        await stopping.wait()
    finally:
        if on_stopping:
            on_stopping()
        await stop()


def _write_stack_file(settings: Settings, stack: Any, started_at: str) -> None:
    """``stack.json``, how other commands find the stack; replaced whole, never half written."""
    from hitlflow.stack import process_identity

    info = {"pid": os.getpid(), "pid_start": process_identity(os.getpid()),
            "nats_url": stack.nats_url, "nats_pid": stack.nats_pid, "home": str(settings.home),
            "started_at": started_at, "mode": stack.mode, "services": stack.service_pids(),
            "metrics": stack.metrics_urls(), "gateway_url": stack.gateway_url}
    partial = settings.stack_file.with_name(settings.stack_file.name + ".tmp")
    partial.write_text(json.dumps(info))
    partial.replace(settings.stack_file)


def _say_gateway(url: str | None) -> None:
    """Where people find the inbox and the HTTP API of a stack (none: said nothing)."""
    if url:
        err.print(f"inbox and HTTP API: {url}/ui/  (API docs at /docs)", markup=False,
                  highlight=False, soft_wrap=True)


def _gateway_port_problem(settings: Settings) -> Exception | None:
    """Why ``up`` could not start the gateway where the settings say (a taken port: a
    :class:`~hitlflow.stack.PortInUseError`; an address it cannot listen on: a
    :class:`~hitlflow.stack.ListenError`), or None (free, any port, or no gateway)."""
    from hitlflow.stack import ListenError, PortInUseError, gateway_socket

    if not settings.gateway or not settings.gateway_port:
        return None
    try:
        gateway_socket(settings.gateway_host, settings.gateway_port, listen=False).close()
    except (PortInUseError, ListenError) as error:
        return error
    return None


@app.command()
def up(
    port: Annotated[int | None, typer.Option("--port", help="Embedded NATS port.")] = None,
    nats_url: Annotated[str | None, typer.Option(
        "--nats-url", help="Use this NATS server instead of starting the embedded one.")] = None,
    home: Annotated[Path | None, typer.Option("--home", envvar="HITLFLOW_HOME",
                                              help="Data directory.")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background.")] = False,
    one_process: Annotated[bool, typer.Option(
        "--one-process", help="Run every service in this one process (less memory, one core) "
        "instead of one process per service.")] = False,
    gateway_port: Annotated[int | None, typer.Option(
        "--gateway-port", help="Port of the HTTP gateway (inbox and API; 0: a free one). "
        "Default: HITLFLOW_GATEWAY_PORT, else 8080.")] = None,
    no_gateway: Annotated[bool, typer.Option(
        "--no-gateway", help="Start no HTTP gateway (HITLFLOW_GATEWAY=false).")] = False,
) -> None:
    """Start the embedded stack: nats-server (JetStream), every service, SQLite stores, and the
    HTTP gateway (web inbox under /ui/, the HTTP API)."""
    from hitlflow.gateway_server import GatewayStartError
    from hitlflow.stack import (
        ListenError,
        NatsServerNotFoundError,
        PortInUseError,
        ProcessStack,
        ServiceStartError,
        Stack,
    )

    settings = load_settings(home=home, gateway_port=gateway_port,
                             gateway=False if no_gateway else None)
    state, running = _stack_state(settings)
    if state == "crashed":  # its nats-server and services are stopping (they end with it)
        from hitlflow.stack import port_is_free

        err.print("a hitlflow stack that was running from here has ended without stopping; "
                  "starting again")
        deadline = time.monotonic() + 20
        wanted = port or settings.embedded_port

        def held() -> bool:  # a port its nats-server or gateway still listens on
            return ((nats_url is None and not port_is_free("127.0.0.1", wanted))
                    or isinstance(_gateway_port_problem(settings), PortInUseError))

        while held() and time.monotonic() < deadline:
            time.sleep(0.1)
    if running and running["nats_ok"]:
        fail(f"a hitlflow stack is already running (pid {running['pid']}, "
             f"{running['nats_url']}); stop it with 'hitlflow down'", EXIT_BAD_INPUT)
    if running:
        fail(f"a hitlflow stack process is running (pid {running['pid']}) but its NATS at "
             f"{running['nats_url']} does not answer; stop it with 'hitlflow down'",
             EXIT_BAD_INPUT)
    if detach:
        _detach(settings, port, nats_url, one_process, gateway_port, no_gateway)
        return
    configure_logging(settings.log_level, settings.log_format)
    started_at = datetime.now(UTC).isoformat()
    stack: Stack | ProcessStack
    if one_process:
        from hitlflow.stack import free_port
        from services.workflow.agents import AgentRegistry

        if not settings.metrics_port:  # `up` always serves them: on a free port unless set
            settings = settings.model_copy(update={"metrics_port": free_port()})
        stack = Stack(settings, nats_url=nats_url, port=port,
                      agents=AgentRegistry.load(settings.agent_modules()),
                      gateway=settings.gateway)
    else:
        stack = ProcessStack(settings, nats_url=nats_url, port=port, gateway=settings.gateway,
                             on_change=lambda: _write_stack_file(settings, stack, started_at))

    def started() -> None:
        _write_stack_file(settings, stack, started_at)
        err.print(f"hitlflow stack up: NATS {stack.nats_url}, data in {settings.home} "
                  "(Ctrl-C or 'hitlflow down' to stop)")
        _say_gateway(stack.gateway_url)
        urls = stack.metrics_urls()
        if urls:
            err.print("metrics (with /healthz and /readyz beside each): " + ", ".join(
                f"{name} {url}" for name, url in urls.items()), markup=False,
                soft_wrap=True)

    async def stop() -> None:
        with contextlib.suppress(OSError):
            settings.stack_file.unlink()
        await stack.stop()

    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_serve_until_signal(stack.start, stop, started))
    except (PortInUseError, ListenError, NatsServerNotFoundError, ServerLimitError) as error:
        fail(str(error), EXIT_BAD_INPUT)
    except (ServiceStartError, GatewayStartError) as error:
        fail(str(error), EXIT_NO_STACK)


def _detach(settings: Settings, port: int | None, nats_url: str | None, one_process: bool,
            gateway_port: int | None, no_gateway: bool) -> None:
    problem = _gateway_port_problem(settings)
    if problem is not None:  # said here, not from the end of the background stack's log
        fail(str(problem), EXIT_BAD_INPUT)
    settings.home.mkdir(parents=True, exist_ok=True)
    log_path = settings.home / "stack.log"
    command = [sys.executable, "-m", "hitlflow", "up", "--home", str(settings.home)]
    if port:
        command += ["--port", str(port)]
    if nats_url:
        command += ["--nats-url", nats_url]
    if one_process:
        command += ["--one-process"]
    if gateway_port is not None:
        command += ["--gateway-port", str(gateway_port)]
    if no_gateway:
        command += ["--no-gateway"]
    with log_path.open("ab") as log:
        child = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        info = _live_stack(settings)
        if info and int(info["pid"]) == child.pid:
            err.print(f"hitlflow stack up in the background (pid {child.pid}): "
                      f"NATS {info['nats_url']}; log {log_path}")
            _say_gateway(info.get("gateway_url"))
            return
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            fail("the stack did not start: " + " | ".join(tail), EXIT_BAD_INPUT)
        time.sleep(0.1)
    child.terminate()
    fail(f"the stack did not come up within 90 s; see {log_path}", EXIT_NO_STACK)


@app.command()
def down(
    home: Annotated[Path | None, typer.Option("--home", envvar="HITLFLOW_HOME")] = None,
) -> None:
    """Stop a stack started with 'hitlflow up' (foreground or --detach)."""
    settings = load_settings(home=home)
    info = _live_stack(settings)
    if info is None:
        fail(f"no hitlflow stack is running from {settings.home}", EXIT_NO_STACK)
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    # the stack gives its services 30 s to stop (then kills them), then stops nats-server
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            err.print(f"hitlflow stack (pid {pid}) stopped")
            return
        time.sleep(0.1)
    fail(f"stack (pid {pid}) did not stop within 60 s", EXIT_NO_STACK)


@app.command()
def serve(
    service: Annotated[str, typer.Argument(
        help="workflow | interaction | timeout | projections | gateway")],
    nats_url: NatsUrl = None,
    host: Annotated[str | None, typer.Option(
        "--host", help="gateway: address to listen on (default: HITLFLOW_GATEWAY_HOST, else "
        "127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", help="gateway: HTTP port (0: a free one; default: HITLFLOW_GATEWAY_PORT, "
        "else 8080)")] = None,
    ready_fd: Annotated[int | None, typer.Option(
        "--ready-fd", hidden=True, help="Write a line to this file descriptor once the service "
        "is started (how 'hitlflow up' knows).")] = None,
) -> None:
    """Run one service alone against a NATS URL (for scaled deployments)."""
    from projections import main as projections_main
    from services.interaction import main as interaction_main
    from services.timeout import main as timeout_main
    from services.workflow import main as workflow_main

    settings = _settings(nats_url)
    configure_logging(settings.log_level, settings.log_format)

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)

    if service == "gateway":  # its /metrics, /healthz and /readyz are on its own port
        _serve_gateway(settings, settings.gateway_host if host is None else host,
                       settings.gateway_port if port is None else port, ready)
        return
    builders: dict[str, Any] = {"workflow": workflow_main.build,
                                "interaction": interaction_main.build,
                                "timeout": timeout_main.build,
                                "projections": projections_main.build}
    if service not in builders:
        fail(f"unknown service {service!r}; expected one of: {', '.join(builders)}",
             EXIT_BAD_INPUT)
    runtime: Any = builders[service](settings)
    from services.common.health import serve_health

    try:
        serve_health(settings.metrics_host, settings.metrics_port)
    except OSError as error:
        fail(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
             f"{error.strerror or error} (HITLFLOW_METRICS_PORT)", EXIT_BAD_INPUT)

    try:
        asyncio.run(_serve_until_signal(runtime.start, runtime.stop, ready,
                                        lambda: _exit_after(SERVE_STOP_TIMEOUT, service)))
    except ServerLimitError as error:
        fail(str(error), EXIT_BAD_INPUT)


def _serve_gateway(settings: Settings, host: str, port: int, ready: Any) -> None:
    """``hitlflow serve gateway``: the HTTP gateway until SIGTERM or Ctrl-C; ``ready`` is
    called once it listens, connected to NATS."""
    from hitlflow.gateway_server import GatewayServer, GatewayStartError
    from hitlflow.stack import ListenError, PortInUseError, gateway_socket

    try:
        sock = gateway_socket(host, port, remedy="give it another port (--port / "
                              "HITLFLOW_GATEWAY_PORT; 0 picks a free one)")
    except (PortInUseError, ListenError) as error:
        fail(str(error), EXIT_BAD_INPUT)
    server = GatewayServer(settings, sock)
    try:
        asyncio.run(_serve_until_signal(server.start, server.stop, ready,
                                        lambda: _exit_after(SERVE_STOP_TIMEOUT, "gateway")))
    except GatewayStartError as error:
        fail(str(error), EXIT_NO_STACK)
    finally:
        sock.close()


@app.command()
def contract(
    fmt: Annotated[str, typer.Option("--format", help="markdown | asyncapi | html")]
    = "markdown",
) -> None:
    """Print the NATS contract (subjects, messages, limits, events, examples) as generated
    from the code: markdown (docs/contract.md is its output), the AsyncAPI 3 document (JSON),
    or that document as one HTML page."""
    from hitlflow import asyncapi
    from hitlflow.contract_doc import render

    renderers = {"markdown": render, "asyncapi": asyncapi.render_json,
                 "html": asyncapi.render_html}
    if fmt not in renderers:
        fail(f"unknown format {fmt!r}; expected one of: {', '.join(renderers)}", EXIT_BAD_INPUT)
    sys.stdout.write(renderers[fmt]())


app.add_typer(timeouts_app, name="timeouts")
cli_projections.register(app)  # threads, show, audit, analytics, projections rebuild
cli_identity.register(app)  # users, token, claim, release, delegate, reassign
app.command("demo")(cli_demo.demo)  # the guide's five patterns, asked or scripted
app.command("doctor")(cli_doctor.doctor)  # the stack's health and what was quarantined
flow_help(app)


def main() -> None:
    # what the commands print reaches a pipe whole, even across Ctrl-Z and fg
    sys.stdout, sys.stderr = whole_text(sys.stdout), whole_text(sys.stderr)
    configure_command_logging()
    try:
        app()
    except SettingsError as error:  # read by any command: said once, here
        say_error(str(error))
        sys.exit(EXIT_BAD_INPUT)
    except KeyRingError as error:  # keys that cannot open a store: the service does not start
        say_error(str(error))
        sys.exit(EXIT_BAD_INPUT)
