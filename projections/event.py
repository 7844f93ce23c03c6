"""What the views fold: an event as the projections see it, live or replayed.

Live, that is the :class:`~contracts.events.EventEnvelope` received from the stream. A rebuild
folds :class:`Replayed` events instead: the same fields, made by the same envelope factory the
relay publishes with, carried without the validation a wire message needs, and with the
payload's compact JSON (what the timeline stores) already written by the process that read the
store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from contracts.jsontext import encoder
from projections.db import when


class Event(Protocol):
    @property
    def event_type(self) -> str: ...

    @property
    def service(self) -> str: ...

    @property
    def thread_id(self) -> str: ...

    @property
    def aggregate_id(self) -> str: ...

    @property
    def position(self) -> int: ...

    @property
    def aggregate_version(self) -> int: ...

    @property
    def occurred_at(self) -> datetime: ...

    @property
    def payload(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class Replayed:
    """An event read back from a store for a rebuild (fields as in the envelope; its time as
    ISO text and as seconds, the datetime made only when asked for)."""

    event_type: str
    service: str
    thread_id: str
    aggregate_id: str
    position: int
    aggregate_version: int
    payload: dict[str, Any]
    #: ``payload_json(payload)``, written once where the store was read.
    payload_text: str
    #: ``when(occurred_at)``: the time as ISO text and as seconds since the epoch.
    at: str
    at_ts: float
    #: The event's audit record (``projections.chain.record``), made where the store was
    #: read; None where the rebuild needs none (the event is anchored already).
    record: str | None = None

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromisoformat(self.at)


#: The compact JSON encoder, made once.
_compact = encoder(sort_keys=False)


def payload_json(payload: Any) -> str:
    """The compact JSON of a payload as the timeline keeps it."""
    return _compact(payload)


def payload_text(env: Event) -> str:
    return env.payload_text if isinstance(env, Replayed) else payload_json(env.payload)


def moment(env: Event) -> tuple[str, float]:
    """``when(env.occurred_at)``: written once where a replayed event was read."""
    return (env.at, env.at_ts) if isinstance(env, Replayed) else when(env.occurred_at)
