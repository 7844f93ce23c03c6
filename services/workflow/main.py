"""Wiring of the workflow service: settings → store, agents, broker, relay."""

from __future__ import annotations

from pathlib import Path

from hitlflow.settings import Settings
from services.common.clock import Clock
from services.common.identity import Directory
from services.common.integration import envelope_factory
from services.common.runtime import ServiceRuntime
from services.workflow import handlers
from services.workflow.agents import AgentRegistry
from services.workflow.application import WorkflowService
from services.workflow.published import PUBLISHED


def build(
    settings: Settings,
    *,
    nats_url: str | None = None,
    data_dir: Path | None = None,
    clock: Clock | None = None,
    agents: AgentRegistry | None = None,
) -> ServiceRuntime:
    app = WorkflowService(
        settings.store_env("workflow", data_dir),
        agents=agents or AgentRegistry.load(settings.agent_modules()),
        clock=clock,
        request_defaults=settings.request_timeouts(),
        directory=Directory(settings.identity_file),
    )

    return ServiceRuntime(
        "workflow", app,
        nats_url=nats_url or settings.resolved_nats_url(),
        subscriptions=handlers.subscriptions,
        to_envelope=envelope_factory(app, "workflow", PUBLISHED),
        auth=settings.nats_auth(),
        stream_replicas=settings.stream_replicas,
        batch_size=settings.consumer_batch,
        poison_attempts=settings.poison_attempts,
        redelivery_delay=settings.redelivery_delay,
        health_interval=settings.health_interval,
        ack_wait=settings.ack_wait,
    )
