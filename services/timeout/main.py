"""Wiring of the timeout service: settings → store, deadline index, broker, timers, sweep, relay."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from hitlflow.settings import Settings
from services.common import metrics
from services.common.clock import Clock, SystemClock
from services.common.logging import get_logger
from services.common.runtime import ServiceRuntime, cancel_and_wait
from services.common.threads import in_thread
from services.timeout import handlers
from services.timeout.application import TimeoutService
from services.timeout.index import DeadlineIndex
from services.timeout.published import to_envelope
from services.timeout.timers import Sweeper

log = get_logger(__name__)

class TimeoutRuntime:
    """The timeout service: a ServiceRuntime plus the periodic sweep and control requests."""

    def __init__(self, runtime: ServiceRuntime, sweeper: Sweeper, *, sweep_interval: float,
                 sweep_grace: float, reply_timeout: float) -> None:
        self.runtime = runtime
        self.sweeper = sweeper
        self.sweep_interval = sweep_interval
        self.sweep_grace = sweep_grace
        self.reply_timeout = reply_timeout
        self._task: asyncio.Task[None] | None = None
        self._control: list[Any] = []
        runtime.monitor.add(self._count_deadlines)

    async def _count_deadlines(self) -> None:
        """Deadlines still to fire, and those past due that have not (the sweep's work)."""
        index = self.sweeper.index
        await in_thread(index.catch_up)
        metrics.DEADLINES_PENDING.set(await in_thread(index.count_pending))
        metrics.DEADLINES_DUE.set(await in_thread(index.count_due,
                                                          self.sweeper.clock.now()))

    @property
    def app(self) -> TimeoutService:
        app = self.runtime.app
        assert isinstance(app, TimeoutService)
        return app

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def nc(self) -> Any:
        assert self.runtime.broker is not None, "timeout service not started"
        return self.runtime.broker.connection

    async def start(self) -> None:
        await self.runtime.start()
        self._control = await handlers.serve_control(self.nc, self.sweeper, self.reply_timeout)
        self._task = asyncio.create_task(
            self.sweeper.run(self.nc, self.sweep_interval, self.sweep_grace),
            name="timeout-sweep")

    async def sweep(self, *, wait: float | None = None) -> Any:
        """Run a sweep now (what ``hitlflow timeouts check`` asks a replica to do)."""
        return await self.sweeper.sweep(self.nc, wait=wait)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        for sub in self._control:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._control.clear()
        await self.runtime.stop()
        await in_thread(self.sweeper.index.close)


def build(
    settings: Settings,
    *,
    nats_url: str | None = None,
    data_dir: Path | None = None,
    clock: Clock | None = None,
) -> TimeoutRuntime:
    clock = clock or SystemClock()
    app = TimeoutService(settings.store_env("timeout", data_dir), clock=clock)
    # the index belongs to one event store: name it after the PostgreSQL schema when there is one
    suffix = f"-{settings.postgres_schema}" if settings.persistence == "postgres" and \
        settings.postgres_schema else ""
    index = DeadlineIndex((data_dir or settings.home / "stores") / f"timeout-index{suffix}.sqlite",
                          app)
    runtime = ServiceRuntime(
        "timeout", app,
        nats_url=nats_url or settings.resolved_nats_url(),
        subscriptions=handlers.subscriptions,
        to_envelope=to_envelope,
        auth=settings.nats_auth(),
        stream_replicas=settings.stream_replicas,
        batch_size=settings.consumer_batch,
        poison_attempts=settings.poison_attempts,
        redelivery_delay=settings.redelivery_delay,
        health_interval=settings.health_interval,
        ack_wait=settings.ack_wait,
    )
    return TimeoutRuntime(runtime, Sweeper(app, index, clock),
                          sweep_interval=settings.timeout_sweep_interval,
                          sweep_grace=settings.timeout_sweep_grace,
                          reply_timeout=settings.reply_timeout)
