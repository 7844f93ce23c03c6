"""NATS plumbing shared by services and clients: connection options, streams, replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any, TypedDict

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from contracts import subjects
from contracts.limits import NATS_MAX_PAYLOAD, REQUIRED_NATS_PAYLOAD, describe
from contracts.subjects import principal_token
from services.common.logging import get_logger

log = get_logger(__name__)

#: JetStream de-duplication window for re-sent events (seconds).
DUPLICATE_WINDOW = 15 * 60
#: How long commands are kept in their stream (seconds): long enough to replay an outage.
COMMAND_MAX_AGE = 7 * 24 * 3600
#: How long a quarantined message is kept for operators to look at (seconds).
DLQ_MAX_AGE = 30 * 24 * 3600


class NatsAuth(TypedDict):
    """Who a process is on NATS (what :func:`connect` takes)."""

    user: str | None
    password: str | None
    token: str | None


_FIELD = rb"[^ \t\r\n]+"
_GAP = rb"[ \t]+"


def read_any_subject() -> None:
    """Let nats-py read every subject the server delivers.

    The NATS protocol separates the fields of a MSG line with spaces and tabs only, and the
    server takes any other byte into a subject (``\\x0b`` and ``\\x0c`` included). nats-py reads
    those lines with ``\\s``, which also splits on ``\\x0b`` and ``\\x0c``: one message published
    to such a subject (by anyone allowed to publish) then fails the whole connection with a
    protocol error each time it is delivered, and a durable consumer never gets past it. The
    two patterns are replaced by the protocol's own separators (same groups); idempotent."""
    from nats.protocol import parser

    parser.MSG_RE = re.compile(rb"\AMSG" + _GAP + b"(" + _FIELD + b")" + _GAP + b"(" + _FIELD
                               + b")" + _GAP + b"((" + _FIELD + b")" + _GAP + rb")?(\d+)\r\n")
    parser.HMSG_RE = re.compile(rb"\AHMSG" + _GAP + b"(" + _FIELD + b")" + _GAP + b"(" + _FIELD
                                + b")" + _GAP + b"((" + _FIELD + b")" + _GAP + rb")?(\d+)"
                                + _GAP + rb"(\d+)\r\n")


def inbox_prefix(user: str) -> str:
    """Where a NATS user's replies come: inboxes under its own name, which only it may
    subscribe to (so nobody reads another's replies)."""
    return f"_INBOX.{principal_token(user)}"


def connect_options(
    url: str,
    *,
    name: str,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    reconnect_attempts: int = -1,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",") if u.strip()],
        "name": name,
        "connect_timeout": 3,
        "max_reconnect_attempts": reconnect_attempts,
        "reconnect_time_wait": 0.5,
    }
    if user:
        options["user"] = user
        options["password"] = password or ""
        options["inbox_prefix"] = inbox_prefix(user)
    if token:
        options["token"] = token
    return options


async def connect(url: str, *, name: str, reconnect_attempts: int = -1,
                  user: str | None = None, password: str | None = None,
                  token: str | None = None) -> Client:
    read_any_subject()
    return await nats.connect(**connect_options(url, name=name,
                                                reconnect_attempts=reconnect_attempts,
                                                user=user, password=password, token=token))


class ServerLimitError(RuntimeError):
    """The NATS server allows smaller messages than the contract's largest."""


def check_server(nc: Client, url: str) -> None:
    """Refuse a NATS server whose max_payload is below what the contract needs: on it, a large
    answer or request would be accepted and then never delivered."""
    allowed = int(nc.max_payload or 0)
    if allowed < REQUIRED_NATS_PAYLOAD:
        raise ServerLimitError(
            f"the NATS server at {url} allows messages of at most {describe(allowed)}; hitlflow "
            f"needs max_payload of at least {describe(REQUIRED_NATS_PAYLOAD)}: set "
            f"'max_payload: {NATS_MAX_PAYLOAD}' in its configuration (the embedded server, "
            "compose.yaml and k8s/nats-values.yaml do)")


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=subjects.COMMANDS_STREAM,
            subjects=[subjects.COMMANDS_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=COMMAND_MAX_AGE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
        ),
        # Timers: held schedule messages fire TimeoutInteraction commands into the same
        # stream (nats-server 2.12+). No max_age: a deadline may be weeks away; fired
        # messages carry their own TTL (allow_msg_ttl).
        StreamConfig(
            name=subjects.SCHEDULES_STREAM,
            subjects=[subjects.SCHEDULES_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            num_replicas=replicas,
            allow_msg_schedules=True,
            allow_msg_ttl=True,
        ),
        # Quarantine: messages no retry can help, each with why and where it came from
        # (services/common/quarantine.py); read with `hitlflow doctor`.
        StreamConfig(
            name=subjects.DLQ_STREAM,
            subjects=[subjects.DLQ_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=DLQ_MAX_AGE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            num_replicas=replicas,
        ),
    ]


#: How long a service starting waits for JetStream to answer its stream requests, asking again
#: (a cluster electing its stream leaders, a server under load), before it gives up.
STREAMS_READY_TIMEOUT = 30.0
#: JetStream's answers that say "not now" rather than "no".
NOT_READY = (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError)


class JetStreamNotReadyError(RuntimeError):
    """JetStream did not answer the stream requests within the wait."""


async def ensure_streams(js: JetStreamContext, replicas: int = 1, *,
                         timeout: float = STREAMS_READY_TIMEOUT) -> None:
    """Create the streams, or bring an existing one's configuration up to date; while
    JetStream does not answer, ask again (with a growing pause) for up to ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = 0.25
    while True:
        try:
            await _ensure_streams(js, replicas)
            return
        except NOT_READY as error:
            if loop.time() + pause > deadline:
                raise JetStreamNotReadyError(
                    f"JetStream did not answer the stream requests within {timeout:g} s "
                    f"({type(error).__name__}): is JetStream enabled on the NATS server, and "
                    "does its cluster have a quorum of nodes up?") from error
            log.warning("jetstream_not_ready", error=type(error).__name__, retry_in=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 4.0)


async def _ensure_streams(js: JetStreamContext, replicas: int) -> None:
    for config in stream_configs(replicas):
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config)
        else:
            # a setting that cannot change in place (e.g. storage) is kept as it is
            with contextlib.suppress(BadRequestError):
                await js.update_stream(config)


def make_broker(url: str, *, name: str, user: str | None = None, password: str | None = None,
                token: str | None = None, middlewares: tuple[Any, ...] = ()) -> Any:
    """A faststream NATS broker that reconnects forever (services must outlive NATS restarts)."""
    from faststream.nats import NatsBroker
    from faststream.nats.security import NatsToken, NatsUserPassword

    read_any_subject()
    security: Any = None
    prefix: dict[str, Any] = {}
    if user:
        security = NatsUserPassword(user, password or "")
        prefix["inbox_prefix"] = inbox_prefix(user)
    elif token:
        security = NatsToken(token)
    return NatsBroker(
        [u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=3,
        reconnect_time_wait=1,
        max_reconnect_attempts=-1,
        drain_timeout=5,
        security=security,
        log_level=logging.DEBUG,
        middlewares=middlewares,
        **prefix,
    )
