"""What the timeout service publishes: the domain events its relay turns into envelopes, and
how (:func:`to_envelope`: its events are renamed, and each names its own thread).

Kept apart from the wiring (``main.py``) so that whatever converts this store's events as the
relay does (a rebuild's store readers, ``hitlflow audit verify``) needs no broker to import.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from contracts.events import PAYLOADS, EventEnvelope
from services.common.integration import payload_of

#: Domain event → the event type it is published as.
PUBLISHED = {"DeadlineScheduled": "DeadlineScheduled", "DeadlineRescheduled": "DeadlineScheduled",
             "DeadlineFired": "DeadlineFired", "DeadlineCleared": "DeadlineCleared"}
_EVENT_NS = UUID("9b3c0f2e-6a51-4f0d-8c7e-1e5d2a7b4c63")


def to_envelope(event: Any, position: int) -> EventEnvelope | None:
    """The wire envelope of a published timeout event (each names its own thread, so no
    lookup and no cache: memory stays flat however many deadlines there are)."""
    name = PUBLISHED.get(type(event).__name__)
    if name is None:
        return None
    model = PAYLOADS[name]
    payload = payload_of(model, {k: getattr(event, k) for k in model.model_fields
                                 if hasattr(event, k)})
    return EventEnvelope(
        event_type=name, service="timeout", thread_id=event.thread_id,
        event_id=str(uuid5(_EVENT_NS, f"{event.originator_id}:{event.originator_version}")),
        aggregate_id=str(event.originator_id), aggregate_version=event.originator_version,
        position=position, occurred_at=event.timestamp, payload=payload,
    )
