"""What the workflow service publishes: the domain events its relay turns into envelopes.

Kept apart from the wiring (``main.py``) so that whatever converts this store's events as the
relay does (a rebuild's store readers, ``hitlflow audit verify``) needs no broker to import.
"""

from __future__ import annotations

PUBLISHED = {
    "ThreadStarted", "NodeCompleted", "NodeFailed", "ThreadPaused", "ThreadResumed",
    "ThreadCompleted", "ThreadFailed", "ThreadTimedOut", "ThreadCancelled",
    "NodeDecided", "FallbackTaken", "CommandRefused",
}
