"""What the views fold: an event as the projections see it, live or replayed.

Live, that is the :class:`~contracts.events.EventEnvelope` received from the stream. A rebuild
folds :class:`Replayed` events instead: the same fields, made by the same envelope factory the
relay publishes with, carried without the validation a wire message needs, and with the
payload's compact JSON (what the timeline stores) already written by the process that read the
store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, Protocol

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
    """An event read back from a store for a rebuild (fields as in the envelope)."""

    event_type: str
    service: str
    thread_id: str
    aggregate_id: str
    position: int
    aggregate_version: int
    occurred_at: datetime
    payload: dict[str, Any]
    #: ``payload_json(payload)``, written once where the store was read.
    payload_text: str
    #: ``when(occurred_at)``: the time as ISO text and as seconds since the epoch.
    at: str
    at_ts: float
    #: The event's audit record (``projections.chain.record``), made where the store was
    #: read; None where the rebuild needs none (the event is anchored already).
    record: str | None = None


def encoder(*, sort_keys: bool) -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
    default=str)``, the same text, made once: ``json.dumps`` with options builds an encoder
    per call, and ``JSONEncoder.encode`` builds the C encoder it calls per call too. This
    holds one C encoder (without the check for circular values: a decoded event holds none)."""
    slow = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
                            default=str).encode
    if c_make_encoder is None:  # a Python without the json accelerator
        return slow
    fast = c_make_encoder(None, str, encode_basestring, None, ":", ",", sort_keys, False, True)

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return str(encode_basestring(value))
        return "".join(fast(value, 0))

    return encode


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
