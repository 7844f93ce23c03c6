"""Small helpers shared by the tests: the CLI runner and waiting on conditions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from typer.testing import CliRunner

from hitlflow.cli import app

T = TypeVar("T")
runner = CliRunner()


def cli(nats_url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke the ``hitlflow`` command in process against a stack."""
    return runner.invoke(app, list(args),
                         env={"HITLFLOW_NATS_URL": nats_url, "COLUMNS": "200", **(env or {})})


def cli_json(nats_url: str, *args: str,
             env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    result = cli(nats_url, *args, "--json", env=env)
    data = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, data, result.stderr


def wait_for(probe: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def stored_events(service_app: Any, event_type: str, thread_id: str | None = None) -> list[Any]:
    """Domain events of one type in a service's own store (optionally of one thread)."""
    found = []
    start = 1
    while True:
        batch = service_app.recorder.select_notifications(start, 500)
        for notification in batch:
            event = service_app.mapper.to_domain_event(notification)
            if type(event).__name__ != event_type:
                continue
            if thread_id is None or getattr(event, "thread_id", None) in (None, thread_id):
                found.append(event)
        if len(batch) < 500:
            return found
        start = batch[-1].id + 1
