"""The HTTP gateway that `hitlflow up` starts with the stack, as a separate process: its URL
printed, supervised like the services, its port named when taken, and a stack without it.
(Kept apart from test_processes.py so that the two files' slow tests run on different
workers.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hitlflow.stack import port_is_free
from tests.e2e.processes import (
    HITLFLOW,
    SERVICES,
    alive,
    hitlflow,
    http_status,
    linux_only,
    parent_of,
    processes_of,
    stack_info,
)
from tests.helpers import wait_for

INBOX_LINE = re.compile(r"^inbox and HTTP API: (http://127\.0\.0\.1:(\d+))/ui/  "
                        r"\(API docs at /docs\)$", re.M)


def inbox_url(output: str) -> str:
    """The gateway's URL from the line `up` prints (without /ui/)."""
    found = INBOX_LINE.search(output)
    assert found is not None, output
    return found.group(1)


def check_gateway(env: dict[str, str], url: str) -> None:
    """Probes without credentials; the API only with them (the stack has authorization)."""
    wait_for(lambda: http_status(f"{url}/readyz") == 200, timeout=30,
             what="the gateway to be ready")
    assert http_status(f"{url}/healthz") == 200
    assert http_status(f"{url}/pending") == 401
    token = hitlflow(env, "token", "alice")
    assert token.returncode == 0, token.stderr
    assert http_status(f"{url}/pending",
                       {"Authorization": f"Bearer {token.stdout.strip()}"}) == 200


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@linux_only
@pytest.mark.parametrize("mode", [(), ("--one-process",)], ids=["processes", "one-process"])
def test_up_serves_the_gateway_and_prints_its_url(env: dict[str, str], tmp_path: Path,
                                                  mode: tuple[str, ...]) -> None:
    output = tmp_path / "up.out"
    with output.open("w") as out:
        stack = subprocess.Popen([*HITLFLOW, "up", *mode], env=env, stdout=out,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        url = wait_for(lambda: INBOX_LINE.search(output.read_text()) and inbox_url(
            output.read_text()), timeout=60, what="up to print the inbox URL")
        assert port_of(url) != 8080  # HITLFLOW_GATEWAY_PORT=0: a free port, chosen at start
        assert stack_info(env)["gateway_url"] == url
        check_gateway(env, url)
        if mode:
            assert stack_info(env)["services"]["gateway"] == stack.pid
        else:
            gateway = int(stack_info(env)["services"]["gateway"])
            assert gateway != stack.pid and parent_of(gateway) == stack.pid
    finally:
        stack.send_signal(signal.SIGINT)  # Ctrl-C
        assert stack.wait(timeout=60) == 0, output.read_text()
    assert http_status(f"{url}/healthz") == 0
    assert port_is_free("127.0.0.1", port_of(url))
    assert processes_of(env) == []


@linux_only
def test_up_detach_prints_the_gateway_and_down_stops_it(env: dict[str, str]) -> None:
    started = hitlflow(env, "up", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        url = inbox_url(started.stderr)
        info = stack_info(env)
        assert info["gateway_url"] == url
        check_gateway(env, url)
        # supervised like the services: killed, it comes back on the same port
        killed = int(info["services"]["gateway"])
        os.kill(killed, signal.SIGKILL)
        restarted = wait_for(
            lambda: (pid := int(stack_info(env)["services"]["gateway"])) != killed and pid,
            timeout=60, what="the gateway to be restarted")
        assert parent_of(restarted) == int(info["pid"])
        assert stack_info(env)["gateway_url"] == url
        check_gateway(env, url)
    finally:
        stopped = hitlflow(env, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(restarted)
    assert http_status(f"{url}/healthz") == 0
    assert port_is_free("127.0.0.1", port_of(url))
    assert processes_of(env) == []


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@linux_only
def test_a_taken_gateway_port_is_named_not_traced_back(env: dict[str, str],
                                                       taken_port: int) -> None:
    expected = (f"error: port {taken_port} on 127.0.0.1 for the HTTP gateway is already in use "
                "by another process; give it another port (--gateway-port / "
                "HITLFLOW_GATEWAY_PORT; 0 picks a free one) or start the stack without it "
                "(--no-gateway / HITLFLOW_GATEWAY=false)")
    taken = {**env, "HITLFLOW_GATEWAY_PORT": str(taken_port)}
    for args in (("up",), ("up", "--one-process"), ("up", "--detach"),
                 ("up", "--gateway-port", str(taken_port))):
        result = hitlflow(taken if "--gateway-port" not in args else env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.splitlines() == [expected], args
        assert not (Path(env["HITLFLOW_HOME"]) / "stack.json").exists()
        assert processes_of(env) == []
    alone = hitlflow(taken, "serve", "gateway")
    assert alone.returncode == 2
    assert alone.stderr.splitlines() == [
        f"error: port {taken_port} on 127.0.0.1 for the HTTP gateway is already in use by "
        "another process; give it another port (--port / HITLFLOW_GATEWAY_PORT; 0 picks a "
        "free one)"]


@linux_only
def test_up_without_the_gateway(env: dict[str, str], taken_port: int) -> None:
    started = hitlflow({**env, "HITLFLOW_GATEWAY_PORT": str(taken_port)}, "up", "--detach",
                       "--no-gateway")
    assert started.returncode == 0, started.stderr
    try:
        assert "inbox and HTTP API" not in started.stderr
        info = stack_info(env)
        assert info["gateway_url"] is None
        assert set(info["services"]) == set(info["metrics"]) == SERVICES
    finally:
        stopped = hitlflow(env, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert processes_of(env) == []
