"""How `hitlflow up` and the other commands tell a live stack from one that is gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hitlflow import stack
from hitlflow.cli import _stack_state
from hitlflow.cluster import NatsCluster
from hitlflow.settings import Settings
from hitlflow.stack import EmbeddedNats, free_port, process_identity
from tests.helpers import wait_for

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="looks at processes in /proc")


def write(home: Path, **info: object) -> Settings:
    settings = Settings(home=home)
    home.mkdir(parents=True, exist_ok=True)
    settings.stack_file.write_text(json.dumps(info))
    return settings


def test_no_file_is_no_stack(tmp_path: Path) -> None:
    assert _stack_state(Settings(home=tmp_path)) == ("none", None)


@linux_only
def test_a_pid_given_to_another_process_is_a_crashed_stack(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        settings = write(tmp_path, pid=other.pid, pid_start="1", nats_url="nats://127.0.0.1:9")
        assert _stack_state(settings) == ("crashed", None)
        assert not settings.stack_file.exists()
    finally:
        other.kill()
        other.wait()


@linux_only
def test_a_zombie_is_a_crashed_stack(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    started = process_identity(child.pid)
    # not reaped: the process has exited but its pid still answers kill(pid, 0)
    wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
             == "Z", what="the child to exit")
    try:
        settings = write(tmp_path, pid=child.pid, pid_start=started,
                         nats_url="nats://127.0.0.1:9")
        assert _stack_state(settings) == ("crashed", None)
    finally:
        child.wait()


def test_a_half_written_file_is_a_crashed_stack(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    settings.stack_file.write_text('{"pid": 12')
    assert _stack_state(settings) == ("crashed", None)


def test_a_live_stack_says_whether_its_nats_answers(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", free_port())
    server.start()
    try:
        settings = write(tmp_path / "home", pid=os.getpid(),
                         pid_start=process_identity(os.getpid()), nats_url=server.url)
        state, info = _stack_state(settings)
        assert state == "live" and info is not None and info["nats_ok"] is True
    finally:
        server.stop()
    state, info = _stack_state(settings)
    assert state == "live" and info is not None and info["nats_ok"] is False


def test_a_free_port_is_taken_below_the_ports_of_outgoing_connections(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outgoing connections take their local ports from the kernel's ephemeral range; a port
    for a server to bind next is taken below it, where none of them can take it first."""
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    monkeypatch.setattr(stack, "EPHEMERAL_PORTS", ranges)
    ports = {free_port() for _ in range(20)}
    assert all(stack.FREE_PORTS_FROM <= port < 32768 for port in ports), ports
    assert len(ports) > 1  # picked at random: parallel tests rarely pick the same
    with socket.socket() as sock:  # and free: a server can bind it
        sock.bind(("127.0.0.1", ports.pop()))
    # a range that leaves no room below it, or none known: the kernel's pick
    ranges.write_text("10500\t60999\n")
    assert free_port() > 0
    monkeypatch.setattr(stack, "EPHEMERAL_PORTS", tmp_path / "missing")
    assert free_port() > 0


def test_servers_started_together_get_ports_of_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No service has bound its port when the ports are handed out, so a port that is free for
    one is free for all: each must still get another (two services once drew the same one,
    and the second stopped `hitlflow up` with 'Address already in use')."""
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    monkeypatch.setattr(stack, "EPHEMERAL_PORTS", ranges)
    draws = iter([7, 7, 7, 9, 7, 7, 11, 9, 9, 7, 11, 12] * 20)  # the same draws, again and again
    monkeypatch.setattr(stack.secrets, "randbelow", lambda _: next(draws))
    processes = stack.ProcessStack(Settings(home=tmp_path / "home", metrics_port=0))
    ports = processes._assign_metrics_ports()
    assert sorted(ports) == sorted(stack.SERVICES)
    assert len(set(ports.values())) == len(ports), ports
    assert set(ports.values()) <= {stack.FREE_PORTS_FROM + n for n in (7, 9, 11, 12)}
    # a cluster's nodes: a client and a route port each, six in all
    nodes = NatsCluster(tmp_path / "cluster", size=3).nodes
    routes = nodes[0].extra_args[nodes[0].extra_args.index("--routes") + 1]
    taken = [node.port for node in nodes] + [int(url.rsplit(":", 1)[1])
                                             for url in routes.split(",")]
    assert len(set(taken)) == 6, taken
    # a port set in the settings: that one and the ones after it, as documented
    fixed = stack.ProcessStack(Settings(home=tmp_path / "home", metrics_port=19000))
    assert sorted(fixed._assign_metrics_ports().values()) == list(
        range(19000, 19000 + len(stack.SERVICES)))


def test_a_port_in_use_is_not_given_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(stack, "FREE_PORTS_FROM", 20_000)
    ranges.write_text("21000\t60999\n")  # 1,000 ports to pick from
    monkeypatch.setattr(stack, "EPHEMERAL_PORTS", ranges)
    held: dict[int, socket.socket] = {}  # all but ten of them in use, by this test
    try:
        for port in range(20_000, 20_990):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
            except OSError:  # another process has it (the other tests pick ports here too)
                sock.close()
            else:
                held[port] = sock
        picked = {free_port() for _ in range(10)}
        assert not picked & held.keys(), picked
    finally:
        for sock in held.values():
            sock.close()
