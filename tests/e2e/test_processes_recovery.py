"""The real command when things go wrong: a service killed under `hitlflow up` is restarted, and
a killed stack leaves no process behind and the next `up` starts at once."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from tests.e2e.processes import (
    PARTS,
    TYPES,
    alive,
    children_of,
    hitlflow,
    identity,
    linux_only,
    parent_of,
    processes_of,
    run_to_completion,
    stack_info,
    still_running,
)
from tests.helpers import wait_for


@linux_only
def test_a_killed_service_is_restarted(env: dict[str, str]) -> None:
    started = hitlflow(env, "up", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        killed = int(stack_info(env)["services"]["workflow"])
        os.kill(killed, signal.SIGKILL)
        # stack.json names the new process once it is ready
        restarted = wait_for(
            lambda: (pid := int(stack_info(env)["services"]["workflow"])) != killed and pid,
            timeout=60, what="the workflow service to be restarted")
        assert alive(restarted) and not alive(killed)
        assert parent_of(restarted) == int(stack_info(env)["pid"])
        log = (Path(env["HITLFLOW_HOME"]) / "stack.log").read_text()
        assert "service_exited" in log and "returncode=-9" in log

        run_to_completion(env, "after-restart")
    finally:
        stopped = hitlflow(env, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(restarted)
    assert processes_of(env) == []


@linux_only
def test_a_killed_stack_leaves_no_process(env: dict[str, str]) -> None:
    started = hitlflow(env, "up", "--detach")
    assert started.returncode == 0, started.stderr
    info = stack_info(env)
    children = [identity(int(pid))
                for pid in {*info["services"].values(), *children_of(int(info["pid"]))}]
    assert len(children) == len(PARTS) + 1  # and nats-server
    try:
        os.kill(int(info["pid"]), signal.SIGKILL)
        # Each child is told by the kernel (PR_SET_PDEATHSIG) and stops, within its own limit.
        # Waited for by identity: a process in the middle of exiting has no command line yet is
        # not gone, so it is missed by processes_of.
        wait_for(lambda: not any(still_running(child) for child in children)
                 and processes_of(env) == [], timeout=45,
                 what="the stack's processes to end after their parent was killed")
    finally:
        for pid in [*processes_of(env), *(child[0] for child in children if still_running(child))]:
            with contextlib.suppress(OSError):  # only should the test fail
                os.kill(pid, signal.SIGKILL)


@linux_only
def test_up_starts_at_once_after_the_stack_crashed(env: dict[str, str]) -> None:
    """A stack killed without stopping leaves its stack.json: the next `up` sees that nobody
    is behind it (the pid is gone, a zombie, or another process's) and starts."""
    started = hitlflow(env, "up", "--detach")
    assert started.returncode == 0, started.stderr
    info = stack_info(env)
    os.kill(int(info["pid"]), signal.SIGKILL)
    wait_for(lambda: not alive(int(info["pid"])), what="the stack to be gone")
    assert (Path(env["HITLFLOW_HOME"]) / "stack.json").exists()
    try:
        again = hitlflow(env, "up", "--detach")
        assert again.returncode == 0, again.stderr
        assert "ended without stopping" in again.stderr
        run = hitlflow(env, "run", f"{TYPES}::Approve", "--thread-id", "after-crash",
                       "--state", '{"request": "r"}', "--json")
        assert run.returncode == 0, run.stderr
    finally:
        assert hitlflow(env, "down").returncode == 0
