"""Quarantine: where a message that no retry can help goes, so it never holds back the others.

Every caller (the consumers, the projections, the outbox relay) quarantines through
:func:`quarantine`: a JetStream publish, acknowledged, to ``hitl.dlq.<source>`` in stream
``HITL_DLQ``, with headers that say why (``Hitl-Error``), who gave up (``Hitl-Source``) and
where the message came from (``Hitl-Subject``, ``Hitl-Thread``, and ``Hitl-Stream-Seq`` for a
stream message or ``Hitl-Ref`` for an event that stays in its service's event store).
``Nats-Msg-Id`` is ``dlq:<source>:<seq or ref>``: a quarantine repeated after a crash is
stored once. When the record cannot be stored (NATS unreachable), :class:`QuarantineError` is
raised and the caller keeps the original message to try again: nothing is dropped.

:func:`is_transient` tells an outage (retried for as long as it lasts) from a failure that
will happen again on every delivery (quarantined after a few attempts).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from contracts import subjects
from contracts.limits import HEADER_ALLOWANCE_BYTES
from services.common import metrics
from services.common.logging import get_logger
from services.common.store import ConflictError

log = get_logger(__name__)

#: Longest ``Hitl-Error`` kept (characters).
MAX_REASON = 500
#: Bytes kept free for headers and framing when deciding whether a message fits under the
#: server's ``max_payload``.
HEADER_ROOM = HEADER_ALLOWANCE_BYTES
#: How long the stream has to acknowledge a quarantine record (seconds).
PUBLISH_TIMEOUT = 5.0


class QuarantineError(RuntimeError):
    """A message could not be quarantined (it stays where it is, to be tried again)."""


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
    import psycopg  # imported when first needed: a CLI command never pays for it

    return (OSError, TimeoutError, sqlite3.OperationalError, psycopg.OperationalError,
            psycopg.InterfaceError, OperationalError, InterfaceError, IntegrityError,
            ConflictError, nats.errors.Error)


#: NATS client errors that say something about the message itself, not about NATS: the same
#: message fails the same way every time.
_NATS_DETERMINISTIC = (nats.errors.MaxPayloadError, nats.errors.BadSubjectError,
                       nats.errors.BadHeaderError, nats.js.errors.BadRequestError)


def is_transient(error: BaseException) -> bool:
    """May ``error`` pass if the same message is tried again later? Yes for an outage or
    contention: NATS or a database unreachable, a lock, a timeout, a version conflict storm
    (also when the error was raised from one of these). Anything else, and a NATS error about
    the message itself (too large, bad subject or header, refused as a bad request), is taken
    to fail again on every attempt."""
    seen: BaseException | None = error
    for _ in range(5):  # the error and the ones it was raised from
        if seen is None:
            return False
        if isinstance(seen, _NATS_DETERMINISTIC):
            return False
        if isinstance(seen, _transient_types()):
            return True
        seen = seen.__cause__
    return False


def describe(error: BaseException | str) -> str:
    """A reason for the record: the exception's type and message."""
    if isinstance(error, str):
        return error
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _header_size(headers: Mapping[str, str]) -> int:
    """Bytes the headers take on the wire (``NATS/1.0`` line, ``key: value`` lines, blank)."""
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def quarantine(
    nc: Any,
    *,
    source: str,
    subject: str,
    data: bytes,
    reason: BaseException | str,
    thread_id: str | None = None,
    stream_seq: int | None = None,
    ref: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Store a message no retry can help in ``HITL_DLQ``; returns the record's sequence there.

    ``nc`` is the connected NATS client; ``source`` the durable consumer's name (or
    ``relay-<service>``); ``subject``/``data``/``headers`` the original message; ``stream_seq``
    its sequence in its stream, or ``ref`` (``<service>:<position>``) for an event that stays in
    its service's store. Raises :class:`QuarantineError` when the record is not stored.
    """
    key = ref if ref is not None else str(stream_seq)
    why = _one_line(describe(reason))[:MAX_REASON]
    record: dict[str, str] = {
        # the original's own headers, except the server's (de-duplication, schedules, TTL...)
        k: _one_line(str(v)) for k, v in (headers or {}).items()
        if not k.lower().startswith("nats-")
    }
    record.update({
        subjects.DLQ_ERROR_HEADER: why,
        subjects.DLQ_SOURCE_HEADER: source,
        subjects.DLQ_SUBJECT_HEADER: subject,
        subjects.DLQ_SIZE_HEADER: str(len(data)),
        "Nats-Msg-Id": f"dlq:{source}:{key}",
    })
    if thread_id:
        record[subjects.DLQ_THREAD_HEADER] = thread_id
    if stream_seq is not None:
        record[subjects.DLQ_STREAM_SEQ_HEADER] = str(stream_seq)
    if ref is not None:
        record[subjects.DLQ_REF_HEADER] = ref
    max_payload = int(getattr(nc, "max_payload", 0) or 0)
    body = data if len(data) + _header_size(record) + HEADER_ROOM <= max_payload else b""
    try:
        ack = await nc.jetstream().publish(subjects.dlq_subject(source), body,
                                           timeout=PUBLISH_TIMEOUT, headers=record)
    except Exception as error:
        log.warning("quarantine_failed", source=source, subject=subject, thread_id=thread_id,
                    reason=why, error=repr(error), detail="the message is kept and tried again")
        raise QuarantineError(f"could not quarantine {subject} from {source}: {error!r}") \
            from error
    metrics.QUARANTINED.labels(source).inc()
    log.error("message_quarantined", source=source, subject=subject, thread_id=thread_id,
              reason=why, stream_seq=stream_seq, ref=ref, dlq_seq=ack.seq,
              size=len(data), body_kept=bool(body) or not data)
    return int(ack.seq)
