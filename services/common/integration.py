"""Converting stored domain events to wire envelopes (the service edge)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from hashlib import sha1
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from contracts.events import PAYLOADS, EventEnvelope, Service
from services.common.store import ServiceApplication

_EVENT_NS = UUID("a3c2e1f0-7d41-4a55-9f8e-2b6c0d9e4f31")
_EVENT_NS_BYTES = _EVENT_NS.bytes


def event_id(aggregate_id: Any, version: int) -> str:
    """``str(uuid5(_EVENT_NS, f"{aggregate_id}:{version}"))``, written out: the relay makes
    one per event, and :func:`uuid.uuid5` builds two UUID objects for it."""
    digest = bytearray(sha1(_EVENT_NS_BYTES + f"{aggregate_id}:{version}".encode(),
                            usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class ThreadIdResolver:
    """Finds the thread an event belongs to: from the event, or its aggregate's first event.

    Recently seen aggregates are remembered, at most ``max_cached`` (the oldest go first): memory
    stays flat however many threads exist; a thread that was forgotten costs one read.
    """

    def __init__(self, app: ServiceApplication, max_cached: int = 10_000) -> None:
        self._app = app
        self._max_cached = max_cached
        # (an OrderedDict: a plain dict emptied from its front, as this one is, leaves holes
        # that finding its first key walks over: 3.7 µs per new aggregate, against 0.3)
        self._cache: OrderedDict[UUID, str] = OrderedDict()

    def __call__(self, event: Any) -> str:
        thread_id = getattr(event, "thread_id", None)
        if isinstance(thread_id, str):
            self._remember(event.originator_id, thread_id)
            return thread_id
        cached = self._cache.get(event.originator_id)
        if cached is None:
            first = next(iter(self._app.events.get(event.originator_id, lte=1)))
            cached = str(first.thread_id)  # type: ignore[attr-defined]
            self._remember(event.originator_id, cached)
        return cached

    def _remember(self, aggregate_id: UUID, thread_id: str) -> None:
        cache = self._cache
        if aggregate_id not in cache and len(cache) >= self._max_cached:
            cache.popitem(last=False)
        cache[aggregate_id] = thread_id


def _holds_erased(fields: dict[str, Any]) -> bool:
    """Does a field, or a field of a dict in a list field, hold an erased value? (Loops, not
    nested generators: this runs for every event a relay or a rebuild converts.)"""
    for value in fields.values():
        if isinstance(value, dict):
            if value.get("erased") is True:
                return True
        elif isinstance(value, (list, tuple)):  # a tuple of types: quicker than a union
            for item in value:
                if isinstance(item, dict):
                    for x in item.values():
                        if isinstance(x, dict) and x.get("erased") is True:
                            return True
    return False


#: What a wire payload leaves out of its model (the envelope carries the schema version).
_NOT_IN_PAYLOADS: set[str] = {"schema_version"}  # (never changed)


def payload_of(model: type[BaseModel], fields: dict[str, Any]) -> dict[str, Any]:
    """The wire payload of an event's fields. An erased thread's event (values read back as
    ``{"erased": true, "sha256": ...}``: services/common/sealing.py) is not validated, only
    shaped as a valid one would be (defaults filled, nested contracts versioned), so that its
    audit record, and so its hash chain, is the one it had before the erasure."""
    if not _holds_erased(fields):
        # model_validate(fields).model_dump(mode="json", exclude=...), without the wrappers'
        # handling of options left at their defaults (a relay and a rebuild call this per event)
        return model.__pydantic_serializer__.to_python(  # type: ignore[no-any-return]
            model.__pydantic_validator__.validate_python(fields), mode="json",
            exclude=_NOT_IN_PAYLOADS)
    # erased values are not of their fields' types, knowingly: no serializer warnings
    payload = model.model_construct(**fields).model_dump(mode="json", exclude=_NOT_IN_PAYLOADS,
                                                         warnings=False)
    for name, value in payload.items():
        annotation = str(model.model_fields[name].annotation) if name in model.model_fields else ""
        if isinstance(value, list) and "InteractionSpec" in annotation:
            payload[name] = [{"schema_version": 1, **item} if isinstance(item, dict) else item
                             for item in value]
    return payload


#: What an envelope carries beyond the event's own id, version, position and time: its type,
#: its thread and its payload (None for an internal event).
EventParts = Callable[[Any], tuple[str, str, dict[str, Any]] | None]


def event_parts(
    app: ServiceApplication,
    service: Service,
    published: set[str],
    aliases: dict[str, dict[str, str]] | None = None,
) -> EventParts:
    """The type, thread and wire payload of the domain events named in ``published``.

    ``aliases`` maps, per event type, a payload field to the domain attribute it comes from.
    """
    resolve = ThreadIdResolver(app)
    aliases = aliases or {}
    # per event type, made when first met: its payload model and (payload field, domain
    # attribute) pairs
    shapes: dict[str, tuple[type[BaseModel], list[tuple[str, str]]]] = {}
    missing = object()

    def parts(event: Any) -> tuple[str, str, dict[str, Any]] | None:
        name = type(event).__name__
        shape = shapes.get(name)
        if shape is None:
            if name not in published:
                return None
            renamed = aliases.get(name, {})
            shape = shapes[name] = (PAYLOADS[name], [(k, renamed.get(k, k))
                                                     for k in PAYLOADS[name].model_fields])
        model, pairs = shape
        fields = {k: value for k, attribute in pairs
                  if (value := getattr(event, attribute, missing)) is not missing}
        payload = payload_of(model, fields)
        return name, resolve(event), payload

    return parts


def envelope_factory(
    app: ServiceApplication,
    service: Service,
    published: set[str],
    aliases: dict[str, dict[str, str]] | None = None,
) -> Callable[[Any, int], EventEnvelope | None]:
    """Envelopes for the domain events named in ``published``; None for internal ones
    (``aliases`` as for :func:`event_parts`)."""
    parts_of = event_parts(app, service, published, aliases)

    def to_envelope(event: Any, position: int) -> EventEnvelope | None:
        parts = parts_of(event)
        if parts is None:
            return None
        name, thread_id, payload = parts
        return EventEnvelope(
            event_type=name,
            service=service,
            thread_id=thread_id,
            event_id=event_id(event.originator_id, event.originator_version),
            aggregate_id=str(event.originator_id),
            aggregate_version=event.originator_version,
            position=position,
            occurred_at=event.timestamp,
            payload=payload,
        )

    return to_envelope
