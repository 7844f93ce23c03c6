"""Wiring of the interaction service: settings → store, broker, relay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hitlflow.settings import Settings
from services.common.clock import Clock
from services.common.consumer import Subscription
from services.common.identity import Directory
from services.common.integration import envelope_factory
from services.common.runtime import ServiceRuntime
from services.interaction import handlers
from services.interaction.application import InteractionService
from services.interaction.notifications import Notifier, sinks_from_settings
from services.interaction.published import ENVELOPE_ALIASES, PUBLISHED


def build(
    settings: Settings,
    *,
    nats_url: str | None = None,
    data_dir: Path | None = None,
    clock: Clock | None = None,
) -> ServiceRuntime:
    app = InteractionService(settings.store_env("interaction", data_dir), clock=clock,
                             directory=Directory(settings.identity_file))

    def subscriptions(broker: Any, service: InteractionService) -> list[Subscription]:
        notifier = Notifier(sinks_from_settings(settings, broker.connection))
        return [*handlers.subscriptions(broker, service),
                *handlers.notification_subscriptions(notifier, service)]

    return ServiceRuntime(
        "interaction", app,
        nats_url=nats_url or settings.resolved_nats_url(),
        subscriptions=subscriptions,
        to_envelope=envelope_factory(app, "interaction", PUBLISHED, ENVELOPE_ALIASES),
        auth=settings.nats_auth(),
        stream_replicas=settings.stream_replicas,
        batch_size=settings.consumer_batch,
        poison_attempts=settings.poison_attempts,
        redelivery_delay=settings.redelivery_delay,
        health_interval=settings.health_interval,
        ack_wait=settings.ack_wait,
    )
