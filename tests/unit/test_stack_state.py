"""How `hitlflow up` and the other commands tell a live stack from one that is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hitlflow.cli import _stack_state
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
