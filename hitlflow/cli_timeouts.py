"""``hitlflow timeouts``: run the timeout sweep now, and list pending deadlines.

Both ask a running timeout service (any replica) over NATS request/reply. Exit codes as for
the other commands: 0 done, 2 bad input, 3 no timeout service answered.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel
from rich.table import Table

from contracts import subjects
from contracts.limits import MAX_TIMEOUT_LIST
from contracts.subjects import InvalidThreadIdError, check_thread_id
from contracts.timeouts import DeadlinesQuery, DeadlinesReply, TimeoutCheck, TimeoutCheckReply
from hitlflow.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_NO_STACK,
    JsonOut,
    NatsUrl,
    err,
    fail,
    out,
)
from hitlflow.display import time_left
from hitlflow.settings import Settings, load_settings
from services.common.messaging import connect

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Deadlines of pending requests: sweep them now, list them.")


class NoTimeoutServiceError(RuntimeError):
    """Nothing answers the timeout service's control subjects."""


async def _request(settings: Settings, subject: str, body: BaseModel, timeout: float) -> bytes:
    url = settings.resolved_nats_url()
    try:
        nc = await connect(url, name="hitlflow-cli", reconnect_attempts=3,
                           **settings.nats_auth())
    except Exception as error:
        raise NoTimeoutServiceError(
            f"cannot reach NATS at {url} ({error.__class__.__name__}); start the embedded "
            "stack with 'hitlflow up' or point HITLFLOW_NATS_URL at a running one") from error
    try:
        msg = await nc.request(subject, body.model_dump_json().encode(), timeout=timeout)
    except (NoRespondersError, NatsTimeoutError) as error:
        raise NoTimeoutServiceError(
            f"no timeout service answered {subject} at {url}; is the stack running "
            "('hitlflow up', or 'hitlflow serve timeout')?") from error
    finally:
        await nc.close()
    return bytes(msg.data)


def _call(settings: Settings, subject: str, body: BaseModel, timeout: float) -> bytes:
    try:
        return asyncio.run(_request(settings, subject, body, timeout))
    except NoTimeoutServiceError as error:
        fail(str(error), EXIT_NO_STACK)


def _warn_unrecorded(unrecorded: int) -> None:
    """On stderr, so that --json output stays one document."""
    if unrecorded:
        err.print(f"warning: the timeout service had {unrecorded} interaction event(s) still "
                  "to record; deadlines they set or clear are not in this answer")


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def check(
    limit: Annotated[int, typer.Option("--limit", help="Fire at most this many.")] = 1000,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Do not wait for the outcome of "
                                          "each timeout.")] = False,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Sweep now: fire every deadline that has passed and list what timed out."""
    if not 1 <= limit <= MAX_TIMEOUT_LIST:
        fail(f"--limit must be 1-{MAX_TIMEOUT_LIST}, got {limit}", EXIT_BAD_INPUT)
    settings = load_settings(nats_url=nats_url)
    raw = _call(settings, subjects.TIMEOUTS_CHECK, TimeoutCheck(limit=limit, wait=not no_wait),
                settings.reply_timeout * 2 + 5)
    reply = TimeoutCheckReply.model_validate_json(raw)
    if reply.error:
        fail(reply.error, EXIT_NO_STACK if reply.code == "failed" else EXIT_BAD_INPUT)
    _warn_unrecorded(reply.unrecorded)
    if as_json:
        out.print_json(reply.model_dump_json())
        return
    if not reply.fired:
        out.print(f"no deadline had passed ({reply.pending} pending)")
        return
    table = Table(title=f"timed out at {_when(reply.checked_at)}")
    for column in ("thread", "request", "node", "type", "step", "policy", "due", "outcome"):
        table.add_column(column)
    for item in reply.fired:
        if item.applied is None:
            outcome = item.code or "sent"
        elif item.applied:
            outcome = "applied"
        else:
            outcome = item.code or "refused"
        table.add_row(item.thread_id, item.request_id[:8], item.node_name, item.interaction_type,
                      str(item.step), item.policy, _when(item.due_at), outcome)
    out.print(table)
    out.print(f"{len(reply.fired)} timed out, {reply.pending} still pending")


@app.command("list")
def list_deadlines(
    thread_id: Annotated[str | None, typer.Argument(help="Only this thread's.")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 100,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Pending deadlines, soonest first: when each is due and what it will do."""
    if thread_id is not None:
        try:
            check_thread_id(thread_id)
        except InvalidThreadIdError as error:
            fail(str(error), EXIT_BAD_INPUT)
    if not 1 <= limit <= MAX_TIMEOUT_LIST:
        fail(f"--limit must be 1-{MAX_TIMEOUT_LIST}, got {limit}", EXIT_BAD_INPUT)
    settings = load_settings(nats_url=nats_url)
    raw = _call(settings, subjects.TIMEOUTS_LIST, DeadlinesQuery(thread_id=thread_id,
                                                                limit=limit),
                settings.reply_timeout)
    reply = DeadlinesReply.model_validate_json(raw)
    if reply.error:
        fail(reply.error, EXIT_NO_STACK)
    _warn_unrecorded(reply.unrecorded)
    items: list[dict[str, Any]] = [d.model_dump(mode="json") for d in reply.deadlines]
    if as_json:
        out.print_json(json.dumps(items))
        return
    if not items:
        out.print("no pending deadlines")
        return
    table = Table(title="deadlines")
    for column in ("thread", "request", "node", "type", "step", "then", "due", "time left"):
        table.add_column(column)
    for d in reply.deadlines:
        table.add_row(d.thread_id, d.request_id[:8], d.node_name, d.interaction_type,
                      str(d.step), d.policy, _when(d.due_at),
                      "firing" if d.status == "fired" else time_left(d.due_at))
    out.print(table)
