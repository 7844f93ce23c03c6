"""``hitlflow doctor``: is the stack healthy, and what has been quarantined.

Checks NATS at the configured URL (server version, max_payload, JetStream), each hitlflow
stream (present, how many messages) and each durable consumer (pending, waiting for an
acknowledgement, delivered again), then lists the messages quarantined in ``HITL_DLQ``: what
no retry could handle, with why and where each came from (``services/common/quarantine.py``).
``--show SEQ`` prints one quarantined message: its headers and body.

Exit codes: 0 all clear; 1 something is quarantined or a check failed; 2 bad input (an
unknown ``--show`` sequence); 3 no stack answers at the NATS URL.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from nats.js.errors import NotFoundError
from pydantic import BaseModel
from rich.table import Table
from rich.text import Text

from contracts import subjects
from hitlflow.cli_common import EXIT_BAD_INPUT, EXIT_NO_STACK, JsonOut, NatsUrl, fail, out
from hitlflow.settings import Settings, load_settings
from services.common.messaging import connect, stream_configs

#: Exit code when something needs an operator's attention (quarantined messages, a failed check).
EXIT_ATTENTION = 1


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class StreamState(BaseModel):
    name: str
    present: bool
    messages: int = 0
    bytes: int = 0


class ConsumerState(BaseModel):
    stream: str
    name: str
    #: Messages not delivered yet.
    pending: int
    #: Delivered and not acknowledged yet.
    ack_pending: int
    #: Delivered more than once and not acknowledged yet.
    redelivered: int


class Quarantined(BaseModel):
    """One message of ``HITL_DLQ``."""

    seq: int
    time: datetime | None
    source: str
    thread_id: str | None
    subject: str | None
    reason: str
    #: Bytes of the original message; its body is kept unless too large (``body_kept``).
    size: int
    body_kept: bool
    #: ``<service>:<position>`` of an event still in its service's store (relay), or the
    #: original message's sequence in its stream (consumers).
    ref: str | None = None
    stream_seq: int | None = None


class Report(BaseModel):
    ok: bool
    nats_url: str
    server_version: str | None
    max_payload: int | None
    checks: list[Check]
    streams: list[StreamState]
    consumers: list[ConsumerState]
    #: How many messages ``HITL_DLQ`` holds; ``quarantined`` lists the newest, newest last.
    quarantined_total: int
    quarantined: list[Quarantined]


class Shown(BaseModel):
    """One quarantined message in full (``--show``)."""

    seq: int
    time: datetime | None
    subject: str | None
    headers: dict[str, str]
    body: str
    #: ``utf-8`` (``body`` is the text) or ``base64`` (it was not text).
    body_encoding: str


class NoStackError(RuntimeError):
    """Nothing answers at the NATS URL."""


class UnknownEntryError(LookupError):
    """No quarantined message has the sequence asked for."""


async def _connect(settings: Settings) -> Any:
    url = settings.resolved_nats_url()
    try:
        return await connect(url, name="hitlflow-doctor", reconnect_attempts=1,
                             **settings.nats_auth())
    except Exception as error:
        raise NoStackError(
            f"cannot reach NATS at {url} ({error.__class__.__name__}); start the embedded "
            "stack with 'hitlflow up' or point HITLFLOW_NATS_URL at a running one") from error


def _version(nc: Any) -> str | None:
    """The connected server's version, e.g. ``2.15.1``."""
    try:
        found = nc.connected_server_version
        return f"{found.major}.{found.minor}.{found.patch}"
    except (ValueError, TypeError):  # not a semantic version
        return None


def _entry(seq: int, msg: Any) -> Quarantined:
    headers: dict[str, str] = dict(msg.headers or {})
    data = msg.data or b""
    size = int(headers.get(subjects.DLQ_SIZE_HEADER, len(data)) or 0)
    stream_seq = headers.get(subjects.DLQ_STREAM_SEQ_HEADER)
    return Quarantined(
        seq=seq, time=msg.time,
        source=headers.get(subjects.DLQ_SOURCE_HEADER) or str(msg.subject or "").rsplit(".")[-1],
        thread_id=headers.get(subjects.DLQ_THREAD_HEADER),
        subject=headers.get(subjects.DLQ_SUBJECT_HEADER),
        reason=headers.get(subjects.DLQ_ERROR_HEADER, ""),
        size=size, body_kept=bool(data) or size == 0,
        ref=headers.get(subjects.DLQ_REF_HEADER),
        stream_seq=int(stream_seq) if stream_seq and stream_seq.isdigit() else None,
    )


async def _quarantined(js: Any, first: int, last: int, limit: int) -> list[Quarantined]:
    """The newest ``limit`` messages of the quarantine, newest last."""
    found: list[Quarantined] = []
    seq = last
    while seq >= max(first, 1) and len(found) < limit:
        try:
            msg = await js.get_msg(subjects.DLQ_STREAM, seq)
        except NotFoundError:  # deleted or aged out
            seq -= 1
            continue
        found.append(_entry(seq, msg))
        seq -= 1
    return list(reversed(found))


async def _inspect(settings: Settings, limit: int) -> Report:
    nc = await _connect(settings)
    try:
        js = nc.jetstream()
        version = _version(nc)
        checks = [Check(name="nats", ok=True,
                        detail=f"reachable at {settings.resolved_nats_url()} (server "
                               f"{version or '?'}, max_payload {nc.max_payload:,} bytes)")]
        try:
            await js.account_info()
        except Exception as error:
            checks.append(Check(name="jetstream", ok=False,
                                detail=f"JetStream does not answer ({error.__class__.__name__})"
                                       "; start nats-server with -js"))
            return Report(ok=False, nats_url=settings.resolved_nats_url(),
                          server_version=version, max_payload=nc.max_payload, checks=checks,
                          streams=[], consumers=[], quarantined_total=0, quarantined=[])
        checks.append(Check(name="jetstream", ok=True, detail="enabled"))
        streams: list[StreamState] = []
        consumers: list[ConsumerState] = []
        dlq_state: Any = None
        for config in stream_configs():
            name = config.name or ""
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                streams.append(StreamState(name=name, present=False))
                checks.append(Check(name=f"stream {name}", ok=False,
                                    detail="missing: no hitlflow service has started against "
                                           "this NATS (services create it when they start)"))
                continue
            streams.append(StreamState(name=name, present=True,
                                       messages=info.state.messages, bytes=info.state.bytes))
            if name == subjects.DLQ_STREAM:
                dlq_state = info.state
            for consumer in await js.consumers_info(name):
                consumers.append(ConsumerState(
                    stream=name, name=consumer.name,
                    pending=consumer.num_pending or 0,
                    ack_pending=consumer.num_ack_pending or 0,
                    redelivered=consumer.num_redelivered or 0))
        quarantined: list[Quarantined] = []
        total = 0
        if dlq_state is not None:
            total = dlq_state.messages
            quarantined = await _quarantined(js, dlq_state.first_seq, dlq_state.last_seq, limit)
            checks.append(Check(name="quarantine", ok=total == 0,
                                detail="nothing quarantined" if total == 0 else
                                f"{total} message(s) quarantined"))
        return Report(ok=all(c.ok for c in checks), nats_url=settings.resolved_nats_url(),
                      server_version=version, max_payload=nc.max_payload, checks=checks,
                      streams=streams, consumers=sorted(consumers,
                                                        key=lambda c: (c.stream, c.name)),
                      quarantined_total=total, quarantined=quarantined)
    finally:
        await nc.close()


async def _show(settings: Settings, seq: int) -> Shown:
    nc = await _connect(settings)
    try:
        js = nc.jetstream()
        try:
            msg = await js.get_msg(subjects.DLQ_STREAM, seq)
        except NotFoundError as error:
            raise UnknownEntryError(
                f"no quarantined message with sequence {seq} in {subjects.DLQ_STREAM}; "
                "'hitlflow doctor' lists them") from error
        data = msg.data or b""
        try:
            body, encoding = data.decode(), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(data).decode(), "base64"
        return Shown(seq=seq, time=msg.time, subject=msg.subject,
                     headers={k: str(v) for k, v in (msg.headers or {}).items()},
                     body=body, body_encoding=encoding)
    finally:
        await nc.close()


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "?"


def _print_report(report: Report) -> None:
    for check in report.checks:
        mark = Text("ok  ", style="green") if check.ok else Text("FAIL", style="bold red")
        out.print(Text.assemble(mark, f" {check.name}: ", Text(check.detail)), soft_wrap=True)
    if report.streams:
        table = Table(title="streams")
        for column in ("stream", "messages", "bytes"):
            table.add_column(column, justify="left" if column == "stream" else "right")
        for stream in report.streams:
            table.add_row(stream.name, f"{stream.messages:,}" if stream.present else "missing",
                          f"{stream.bytes:,}" if stream.present else "")
        out.print(table)
    if report.consumers:
        table = Table(title="durable consumers")
        for column in ("stream", "consumer", "pending", "ack pending", "redelivered"):
            table.add_column(column, justify="left" if column in ("stream", "consumer")
                             else "right")
        for c in report.consumers:
            table.add_row(c.stream, c.name, f"{c.pending:,}", f"{c.ack_pending:,}",
                          f"{c.redelivered:,}")
        out.print(table)
    if report.quarantined:
        shown = len(report.quarantined)
        more = (f", the newest {shown} shown" if shown < report.quarantined_total else "")
        table = Table(title=f"quarantined ({report.quarantined_total}{more}, newest last)")
        for column in ("seq", "time (UTC)", "size"):
            table.add_column(column, no_wrap=True)
        for column in ("source", "thread", "subject"):
            table.add_column(column, overflow="fold")
        table.add_column("reason", overflow="fold", ratio=3)
        for q in report.quarantined:
            size = f"{q.size:,}" + ("" if q.body_kept else " (body not kept)")
            table.add_row(str(q.seq), _when(q.time), size, q.source, q.thread_id or "",
                          q.subject or "", q.reason)
        out.print(table)
        out.print("one in full: hitlflow doctor --show SEQ")
    out.print("all clear" if report.ok else "needs attention", style="green" if report.ok
              else "bold red")


def _print_shown(shown: Shown) -> None:
    out.print(f"quarantined message {shown.seq} ({_when(shown.time)} UTC) on {shown.subject}",
              highlight=False)
    for key, value in shown.headers.items():
        out.print(Text.assemble(Text(f"{key}: ", style="bold"), value), soft_wrap=True)
    out.print()
    if shown.body_encoding != "utf-8":
        out.print(f"body ({shown.body_encoding}):", style="bold")
        out.print(shown.body, markup=False, highlight=False, soft_wrap=True)
        return
    try:
        out.print_json(json.dumps(json.loads(shown.body)))
    except ValueError:
        out.print(shown.body or "(no body)", markup=False, highlight=False, soft_wrap=True)


def doctor(
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000,
                                       help="List at most this many quarantined messages "
                                            "(the newest).")] = 100,
    show: Annotated[int | None, typer.Option("--show", min=1, metavar="SEQ",
                                             help="Print one quarantined message: its "
                                                  "headers and body.")] = None,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Check the stack (NATS, streams, consumers) and list quarantined messages."""
    settings = load_settings(nats_url=nats_url)
    try:
        if show is not None:
            shown = asyncio.run(_show(settings, show))
            if as_json:
                out.print_json(shown.model_dump_json())
            else:
                _print_shown(shown)
            return
        report = asyncio.run(_inspect(settings, limit))
    except NoStackError as error:
        fail(str(error), EXIT_NO_STACK)
    except UnknownEntryError as error:
        fail(str(error), EXIT_BAD_INPUT)
    if as_json:
        out.print_json(report.model_dump_json())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_ATTENTION)
