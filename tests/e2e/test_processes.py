"""The real command, as separate processes: `hitlflow up --detach` found by other commands with
no configuration, and each service running alone with `hitlflow serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hitlflow.stack import EmbeddedNats, free_port
from tests.conftest import EXAMPLE_AGENTS, ROOT
from tests.helpers import wait_for

HITLFLOW = [sys.executable, "-m", "hitlflow"]
TYPES = str(ROOT / "tests" / "workflows" / "types.csv")


def hitlflow(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*HITLFLOW, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HITLFLOW_")}
    return {**clean, "HITLFLOW_HOME": str(tmp_path / "home"), "HITLFLOW_AGENTS": EXAMPLE_AGENTS,
            "COLUMNS": "200", "HITLFLOW_EMBEDDED_PORT": str(free_port())}


def test_up_detach_is_found_by_other_commands(env: dict[str, str]) -> None:
    started = hitlflow(env, "up", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        again = hitlflow(env, "up", "--detach")
        assert again.returncode == 2 and "already running" in again.stderr

        run = hitlflow(env, "run", f"{TYPES}::Approve", "--thread-id", "proc-1",
                       "--state", '{"request": "from another terminal"}', "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["status"] == "paused"

        resumed = hitlflow(env, "resume", "proc-1", "approve", "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["output"] == "Approved: from another terminal"

        refused = hitlflow(env, "resume", "proc-1", "approve")
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: thread_ended:")
        assert len(refused.stderr.strip().splitlines()) == 1
    finally:
        stopped = hitlflow(env, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert hitlflow(env, "status", "proc-1").returncode == 3


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", free_port())
    server.start()
    yield server
    server.stop()


def test_each_service_runs_alone(env: dict[str, str], nats: EmbeddedNats) -> None:
    env = {**env, "HITLFLOW_NATS_URL": nats.url}
    processes = {
        name: subprocess.Popen([*HITLFLOW, "serve", name], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        for name in ("workflow", "interaction", "timeout", "projections")
    }
    try:
        run = wait_for(lambda: (r := hitlflow(env, "run", f"{TYPES}::Choice", "--thread-id",
                                              "alone-1", "--state", '{"app": "x"}', "--json")
                                ).returncode == 0 and r, timeout=30,
                       what="the services to answer")
        assert json.loads(run.stdout)["status"] == "paused"

        # The interaction service goes away and comes back: the thread is still answerable.
        processes["interaction"].send_signal(signal.SIGTERM)
        assert processes["interaction"].wait(timeout=20) == 0
        processes["interaction"] = subprocess.Popen(
            [*HITLFLOW, "serve", "interaction"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        done = hitlflow(env, "resume", "alone-1", "choose", "--data", '{"choice": 3}', "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["output"]["option"] == "Development (local)"
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=20)
