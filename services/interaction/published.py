"""What the interaction service publishes: the domain events its relay turns into envelopes.

Kept apart from the wiring (``main.py``) so that whatever converts this store's events as the
relay does (a rebuild's store readers, ``hitlflow audit verify``) needs no broker to import.
"""

from __future__ import annotations

PUBLISHED = {
    "InteractionRequested", "ResponseAccepted", "ResponseRejected", "InteractionTimedOut",
    "InteractionCancelled", "InteractionReminded", "InteractionEscalated",
    "InteractionClaimed", "InteractionReleased", "InteractionDelegated",
    "InteractionReassigned", "VoteCast",
}
#: Payload fields named differently on the domain events (the relay and a rebuild use both).
ENVELOPE_ALIASES = {"InteractionRequested": {"id": "request_id"}}
