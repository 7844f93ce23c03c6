"""What a command prints is its own: commands that run service code in process (reading the
stores offline) keep that code's INFO logs out of stdout, where a script reads a --json
document, and out of the terminal; warnings and errors still reach stderr."""

from __future__ import annotations

import json
from pathlib import Path

from bench.projections import generate
from tests.e2e.processes import hitlflow


def test_offline_commands_print_their_result_alone(env: dict[str, str]) -> None:
    home = Path(env["HITLFLOW_HOME"])
    generate(home / "stores", 60, batch=10)  # approval threads, as the services store them

    rebuilt = hitlflow(env, "projections", "rebuild", "--offline", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    result = json.loads(rebuilt.stdout)  # the document alone: no log line before it
    assert result["ok"] is True and result["events"] >= 60
    assert "[info" not in rebuilt.stderr, rebuilt.stderr

    said = hitlflow(env, "projections", "rebuild", "--offline")
    assert said.returncode == 0, said.stderr
    assert said.stdout.startswith("rebuilt "), said.stdout
    assert "[info" not in said.stdout + said.stderr

    verified = hitlflow(env, "audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
    assert "[info" not in verified.stderr
