"""Running one service: its broker, subscribers and outbox relay, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from faststream.nats import NatsBroker
from nats.js.errors import NotFoundError

from services.common import metrics
from services.common.consumer import PullConsumer, RetryPolicy, Subscription
from services.common.erasure import subscribe_erase
from services.common.health import Health, Monitor, register, unregister
from services.common.logging import get_logger
from services.common.messaging import NatsAuth, check_server, ensure_streams, make_broker
from services.common.relay import Relay, ToEnvelope
from services.common.store import ServiceApplication
from services.common.threads import in_thread

log = get_logger(__name__)


class ServiceRuntime:
    """A service application wired to NATS. ``start()`` connects; nothing connects before."""

    def __init__(
        self,
        name: str,
        app: ServiceApplication,
        *,
        nats_url: str,
        subscriptions: Callable[[Any, Any], list[Subscription]],
        to_envelope: ToEnvelope | None,
        auth: NatsAuth | None = None,
        stream_replicas: int = 1,
        batch_size: int = 64,
        poison_attempts: int = 5,
        redelivery_delay: float = 1.0,
        health_interval: float = 5.0,
        ack_wait: float = 60.0,
    ) -> None:
        self._ack_wait = ack_wait
        self._batch_size = batch_size
        self._policy = RetryPolicy(poison_attempts, redelivery_delay)
        self.name = name
        self.app = app
        self._nats_url = nats_url
        self._subscriptions = subscriptions
        self._to_envelope = to_envelope
        self._auth: NatsAuth = auth or {"user": None, "password": None, "token": None}
        self._replicas = stream_replicas
        self.broker: NatsBroker | None = None
        self.relay: Relay | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: list[asyncio.Task[None]] = []
        self._subscribed: list[Subscription] = []
        self.health = Health(name, stale_after=max(60.0, health_interval * 6))
        self.monitor = Monitor(self.health, health_interval,
                               [self._check_store, self._check_consumers])

    async def start(self) -> None:
        broker = make_broker(self._nats_url, name=f"hitlflow-{self.name}",
                             **self._auth)
        self.broker = broker
        await broker.connect()
        check_server(broker.connection, self._nats_url)
        js = broker.connection.jetstream()
        await ensure_streams(js, self._replicas)
        await broker.start()
        self._subscribed = self._subscriptions(broker, self.app)
        for subscription in self._subscribed:
            consumer = PullConsumer(js, subscription, batch_size=self._batch_size,
                                    policy=self._policy, ack_wait=self._ack_wait)
            self._consumers.append(asyncio.create_task(consumer.run(),
                                                       name=subscription.durable))
        self._tasks.extend(self._consumers)
        await subscribe_erase(broker.connection, self.name, self.app)
        if self._to_envelope is not None:
            self.relay = Relay(self.app, js, self._to_envelope)
            self._tasks.append(asyncio.create_task(self.relay.run(), name=f"{self.name}-relay"))
        self.health.live("nats", lambda: nats_connected(broker))
        self.health.live("consumers", lambda: tasks_running(self._consumers))
        register(self.health)
        self._tasks.append(asyncio.create_task(self.monitor.run(), name=f"{self.name}-health"))
        log.info("service_started", service=self.name, nats_url=self._nats_url)

    async def _check_store(self) -> None:
        """The store answers (and how far the relay is behind it)."""
        relay = self.relay
        try:
            if relay is not None:
                metrics.RELAY_LAG.labels(self.name).set(await in_thread(relay.lag))
            else:
                await in_thread(self.app.process_recorder.max_notification_id)
        except Exception as error:
            self.health.set("store", False, repr(error)[:300])
            raise
        self.health.set("store", True)

    async def _check_consumers(self) -> None:
        """Each durable consumer's lag, as the server counts it."""
        if self.broker is not None:
            await consumer_gauges(self.broker.connection.jetstream(), self._subscribed)

    async def stop(self) -> None:
        unregister(self.health)
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        self._consumers.clear()
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await self.relay.close()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.stop()
            self.broker = None
        await in_thread(self.app.close)
        log.info("service_stopped", service=self.name)


def nats_connected(broker: Any) -> tuple[bool, str]:
    try:
        connected = bool(broker.connection.is_connected)
    except Exception:  # not connected yet, or stopped
        connected = False
    return connected, "connected" if connected else "not connected to NATS"


def tasks_running(tasks: list[asyncio.Task[None]]) -> tuple[bool, str]:
    stopped = [t.get_name() for t in tasks if t.done()]
    if not tasks:
        return False, "no consumer started"
    return (not stopped, "ok" if not stopped else f"stopped: {', '.join(stopped)}")


async def consumer_gauges(js: Any, subscriptions: list[Subscription]) -> None:
    """Lag, unacknowledged and redelivered messages of each durable consumer."""
    for sub in subscriptions:
        try:
            info = await js.consumer_info(sub.stream, sub.durable)
        except NotFoundError:  # being created (the service is starting)
            continue
        metrics.CONSUMER_PENDING.labels(sub.durable).set(info.num_pending or 0)
        metrics.CONSUMER_ACK_PENDING.labels(sub.durable).set(info.num_ack_pending or 0)
        metrics.CONSUMER_REDELIVERED.labels(sub.durable).set(info.num_redelivered or 0)


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], *, again_after: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any still running
    after ``again_after`` seconds: on Python 3.11 ``asyncio.wait_for`` (which nats-py uses for
    its requests) drops a cancellation that arrives as its awaited result does, and the task
    then runs on as if never cancelled."""
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=again_after)
        for task in pending:
            log.warning("task_cancelled_again", task=task.get_name())
            task.cancel()
    for task in tasks:  # retrieve each outcome: none is logged as never retrieved
        if not task.cancelled():
            task.exception()
