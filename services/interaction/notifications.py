"""Notifications: every interaction request is announced to the people who can answer it.

The interaction service follows its own ``InteractionRequested`` events (a durable consumer,
so a request saved just before a crash is still announced) and hands each one, as a
:class:`contracts.notifications.Notification`, to every configured sink:

- :class:`NatsSink` — core NATS subject ``hitl.notify.<thread_id>``: any subscriber (always on);
- :class:`LogSink` — a structured log line ``interaction_notification`` (``HITLFLOW_NOTIFY_LOG``);
- :class:`WebhookSink` — an HTTP POST of the JSON to each URL of
  ``HITLFLOW_NOTIFY_WEBHOOK_URL`` (comma separated), retried with exponential backoff on
  connection errors, timeouts, 429 and 5xx (``HITLFLOW_NOTIFY_WEBHOOK_RETRIES`` / ``_BACKOFF`` /
  ``_TIMEOUT``). Header ``Hitl-Notification-Id`` carries the request id.

Delivery is at least once: a receiver drops repeats by the notification id. A request closed
before its turn came is not announced (``handlers.notification_subscriptions``). A sink that keeps
failing is logged (``notification_failed``) and does not hold back the others.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from contracts.events import InteractionRequested
from contracts.notifications import Notification
from contracts.subjects import notify_subject
from services.common.logging import get_logger
from services.common.responses import ACTIONS

log = get_logger(__name__)

NOTIFICATION_ID_HEADER = "Hitl-Notification-Id"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class NotificationSink(Protocol):
    name: str

    async def send(self, notification: Notification) -> None: ...


class WebhookDeliveryError(RuntimeError):
    """A webhook refused a notification, or stayed unreachable through every retry."""


def notification_from(request: InteractionRequested) -> Notification:
    """What people are told about a request (the guide's send_notification arguments)."""
    action = ACTIONS[request.interaction_type][0]
    command = ["hitlflow", "resume", request.thread_id, action]
    if request.batch_size > 1:
        command += ["--request-id", request.id]
    batch = (f" (batch {request.batch_index + 1} of {request.batch_size})"
             if request.batch_size > 1 else "")
    return Notification(
        id=request.id,
        title=f"Human input required: {request.node_name}{batch}",
        prompt=request.prompt,
        thread_id=request.thread_id,
        node_name=request.node_name,
        interaction_type=request.interaction_type,
        urgency="high" if request.timeout_seconds else "normal",
        options=request.options,
        assignees=request.assignees,
        timeout_seconds=request.timeout_seconds,
        deadline=request.deadline,
        created_at=request.created_at,
        batch_index=request.batch_index,
        batch_size=request.batch_size,
        respond_with=shlex.join(command),
    )


class LogSink:
    name = "log"

    async def send(self, notification: Notification) -> None:
        log.info("interaction_notification", thread_id=notification.thread_id,
                 interaction_id=notification.id, node=notification.node_name,
                 title=notification.title, urgency=notification.urgency,
                 respond_with=notification.respond_with)


class NatsSink:
    name = "nats"

    def __init__(self, client: Any) -> None:
        self._client = client

    async def send(self, notification: Notification) -> None:
        await self._client.publish(
            notify_subject(notification.thread_id), notification.model_dump_json().encode(),
            headers={NOTIFICATION_ID_HEADER: notification.id},
        )


class WebhookSink:
    name = "webhook"

    def __init__(self, urls: Sequence[str], *, retries: int = 3, backoff: float = 0.5,
                 timeout: float = 5.0) -> None:
        self.urls = list(urls)
        self.retries = max(0, retries)
        self.backoff = max(0.0, backoff)
        self.timeout = timeout

    async def send(self, notification: Notification) -> None:
        body = notification.model_dump_json().encode()
        headers = {"Content-Type": "application/json", NOTIFICATION_ID_HEADER: notification.id,
                   "User-Agent": "hitlflow-notifier"}
        failures = []
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for url in self.urls:
                try:
                    await self._post(client, url, body, headers)
                except WebhookDeliveryError as error:
                    failures.append(str(error))
        if failures:
            raise WebhookDeliveryError("; ".join(failures))

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes,
                    headers: dict[str, str]) -> None:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
                continue
            if response.is_success:
                return
            last = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUSES:
                raise WebhookDeliveryError(f"webhook {url} refused the notification ({last})")
        raise WebhookDeliveryError(
            f"webhook {url} failed {self.retries + 1} times (last: {last})"
        )


class Notifier:
    """Hands each notification to every sink; one failing sink does not stop the others."""

    def __init__(self, sinks: Sequence[NotificationSink]) -> None:
        self.sinks = list(sinks)

    async def notify(self, notification: Notification) -> None:
        async def one(sink: NotificationSink) -> None:
            try:
                await sink.send(notification)
            except Exception as error:
                log.error("notification_failed", sink=sink.name, thread_id=notification.thread_id,
                          interaction_id=notification.id, error=str(error))

        await asyncio.gather(*(one(sink) for sink in self.sinks))


def sinks_from_settings(settings: Any, client: Any) -> list[NotificationSink]:
    """The sinks the settings ask for (NATS always; log and webhooks when configured)."""
    sinks: list[NotificationSink] = [NatsSink(client)]
    if settings.notify_log:
        sinks.append(LogSink())
    urls = [u.strip() for u in settings.notify_webhook_url.split(",") if u.strip()]
    if urls:
        sinks.append(WebhookSink(urls, retries=settings.notify_webhook_retries,
                                 backoff=settings.notify_webhook_backoff,
                                 timeout=settings.notify_webhook_timeout))
    return sinks
