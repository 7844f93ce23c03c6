"""The real command, as separate processes: `hitlflow up --detach` found by other commands with
no configuration, one process per service under `hitlflow up` (all gone after `hitlflow down`),
each service running alone with `hitlflow serve`, and `--one-process` taking over the data the
service processes left. (The HTTP gateway that `up` starts with the stack:
test_processes_gateway.py; when processes are killed: test_processes_recovery.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hitlflow.stack import EmbeddedNats, free_port
from tests.e2e.processes import (
    HITLFLOW,
    PARTS,
    TYPES,
    alive,
    children_of,
    hitlflow,
    http_status,
    linux_only,
    nice_of,
    parent_of,
    processes_of,
    run_to_completion,
    stack_info,
)
from tests.helpers import wait_for


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


# -- one process per service under `hitlflow up` ----------------------------------------------


@linux_only
def test_up_runs_each_service_in_its_own_process(env: dict[str, str]) -> None:
    started = hitlflow(env, "up", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        info = stack_info(env)
        parent = int(info["pid"])
        assert info["mode"] == "processes"
        services = {name: int(pid) for name, pid in info["services"].items()}
        assert set(services) == PARTS
        assert len(set(services.values())) == len(services)
        children = children_of(parent)
        for name, pid in services.items():
            assert pid != parent and alive(pid), name
            assert parent_of(pid) == parent, name
        nats_servers = [pid for pid, name in children.items() if name == "nats-server"]
        assert len(nats_servers) == 1
        assert set(children) == {*services.values(), *nats_servers}
        # the service no command waits for yields the CPU to those they do
        niceness = {name: nice_of(pid) for name, pid in services.items()}
        assert niceness == {"workflow": nice_of(parent), "interaction": nice_of(parent),
                            "timeout": min(19, nice_of(parent) + 10),
                            "projections": nice_of(parent), "gateway": nice_of(parent)}

        run_to_completion(env, "procs-1")
        # each service process serves its own /metrics, /healthz and /readyz (printed too), the
        # gateway on its HTTP port
        assert set(info["metrics"]) == PARTS
        assert info["metrics"]["gateway"] == f"{info['gateway_url']}/metrics"
        assert "metrics (with /healthz and /readyz beside each)" in (
            Path(env["HITLFLOW_HOME"]) / "stack.log").read_text()
        for name, url in info["metrics"].items():
            base = url.removesuffix("/metrics")
            wait_for(lambda base=base: http_status(f"{base}/readyz") == 200, timeout=30,
                     what=f"{name} to be ready")
            assert http_status(f"{base}/healthz") == 200
            with urllib.request.urlopen(url, timeout=10) as response:
                assert b"hitlflow_consumer_delivered_total" in response.read(), name
        assert "gateway http://127.0.0.1:" in (Path(env["HITLFLOW_HOME"]) / "stack.log").read_text()
    finally:
        stopped = hitlflow(env, "down")
    assert stopped.returncode == 0, stopped.stderr
    for pid in [parent, *services.values(), *nats_servers]:
        assert not alive(pid), pid
    assert processes_of(env) == []
    assert not (Path(env["HITLFLOW_HOME"]) / "stack.json").exists()


@linux_only
def test_up_fails_when_a_service_cannot_start(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "HITLFLOW_AGENTS": str(tmp_path / "missing_agents.py")}
    failed = hitlflow(env, "up")
    assert failed.returncode == 3
    assert "error: the workflow service exited with code 1 before it was ready" in failed.stderr
    assert "missing_agents.py" in failed.stderr  # the service's own error, above
    assert not (Path(env["HITLFLOW_HOME"]) / "stack.json").exists()
    assert processes_of(env) == []


def test_an_invalid_setting_is_named_not_traced_back(env: dict[str, str]) -> None:
    bad = {**env, "HITLFLOW_BACKGROUND_NICE": "30", "HITLFLOW_REPLY_TIMEOUT": "soon"}
    for args in (("up", "--detach"), ("status", "any-thread")):
        result = hitlflow(bad, *args)
        assert result.returncode == 2, args
        assert result.stderr.splitlines() == [
            "error: invalid setting HITLFLOW_REPLY_TIMEOUT='soon': Input should be a valid "
            "number, unable to parse string as a number; HITLFLOW_BACKGROUND_NICE='30': Input "
            "should be less than or equal to 19"], args
    assert not (Path(env["HITLFLOW_HOME"]) / "stack.json").exists()


# -- the HTTP gateway under `hitlflow up` -----------------------------------------------------


@linux_only
def test_one_process_mode_on_the_same_data(env: dict[str, str]) -> None:
    started = hitlflow(env, "up", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        run = hitlflow(env, "run", f"{TYPES}::Approve", "--thread-id", "across",
                       "--state", '{"request": "across modes"}', "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["status"] == "paused"
    finally:
        stopped = hitlflow(env, "down")
    assert stopped.returncode == 0, stopped.stderr

    started = hitlflow(env, "up", "--detach", "--one-process")
    assert started.returncode == 0, started.stderr
    try:
        info = stack_info(env)
        assert info["mode"] == "one-process"
        assert info["services"] == dict.fromkeys(PARTS, info["pid"])
        # the thread paused by the service processes resumes here: the same stores
        resumed = hitlflow(env, "resume", "across", "approve", "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["output"] == "Approved: across modes"

        run_to_completion(env, "one-process")
    finally:
        stopped = hitlflow(env, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert processes_of(env) == []
