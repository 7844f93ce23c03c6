"""What the tests of the real command share: running `hitlflow` as a user would, in a home and on
ports of each test's own, and looking at the processes it starts in /proc."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hitlflow.stack import free_port
from tests.conftest import EXAMPLE_AGENTS, ROOT

HITLFLOW = [sys.executable, "-m", "hitlflow"]
TYPES = str(ROOT / "tests" / "workflows" / "types.csv")
SERVICES = {"workflow", "interaction", "timeout", "projections"}
#: What `up` runs: the services and the HTTP gateway.
PARTS = {*SERVICES, "gateway"}
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="looks at processes in /proc")


def stack_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a test's own stack: no HITLFLOW_ setting of the caller's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HITLFLOW_")}
    # the gateway `up` starts on a free port: 8080 may be taken, and tests run side by side
    return {**clean, "HITLFLOW_HOME": str(tmp_path / "home"), "HITLFLOW_AGENTS": EXAMPLE_AGENTS,
            "COLUMNS": "200", "HITLFLOW_EMBEDDED_PORT": str(free_port()),
            "HITLFLOW_GATEWAY_PORT": "0"}


def hitlflow(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*HITLFLOW, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def stack_info(env: dict[str, str]) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((Path(env["HITLFLOW_HOME"]) / "stack.json").read_text())
    return info


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first); [] if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def identity(pid: int) -> tuple[int, str]:
    """The pid with its start time: the same process, never another one given the pid later."""
    fields = _stat(pid)
    return pid, fields[19] if fields else ""


def still_running(process: tuple[int, str]) -> bool:
    return alive(process[0]) and identity(process[0]) == process


def nice_of(pid: int) -> int:
    return int(_stat(pid)[16])


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``: pid → name."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if parent_of(int(entry.name)) == pid and alive(int(entry.name)):
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
    return found


def processes_of(env: dict[str, str]) -> list[int]:
    """Every live process whose command line names this test's home or NATS port."""
    marks = (env["HITLFLOW_HOME"], f":{env['HITLFLOW_EMBEDDED_PORT']}")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if any(mark in cmdline for mark in marks) and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def run_to_completion(env: dict[str, str], thread_id: str) -> None:
    """Start → pause → resume → complete, through the CLI."""
    run = hitlflow(env, "run", f"{TYPES}::Approve", "--thread-id", thread_id,
                   "--state", f'{{"request": "{thread_id}"}}', "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "paused"
    resumed = hitlflow(env, "resume", thread_id, "approve", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["output"] == f"Approved: {thread_id}"
