"""Notifications: a person is needed. Published for every interaction request.

Core NATS subject ``hitl.notify.<thread_id>`` (:func:`contracts.subjects.notify_subject`); the
same JSON body is POSTed to configured webhooks (header ``Hitl-Notification-Id`` = ``id``, so a
receiver can drop a repeat: delivery is at least once).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from contracts.base import Contract
from contracts.events import InteractionType

Urgency = Literal["normal", "high"]


class Notification(Contract):
    #: The interaction request's id (stable: a repeated notification has the same id).
    id: str
    title: str
    prompt: str
    thread_id: str
    node_name: str
    interaction_type: InteractionType
    #: ``high`` when the request has a timeout, else ``normal``.
    urgency: Urgency
    options: tuple[str, ...] = ()
    assignees: tuple[str, ...] = ()
    timeout_seconds: float | None = None
    deadline: datetime | None = None
    created_at: datetime
    batch_index: int = 0
    batch_size: int = 1
    #: A command that answers it, e.g. ``hitlflow resume thread_1 approve``.
    respond_with: str
