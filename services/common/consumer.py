"""Durable pull consumers: decode, group by thread, handle, acknowledge.

Messages of one thread are handled in stream order; different threads run concurrently. A
message that can never be handled (malformed, wrong contract) is logged, published to the
dead-letter subject ``hitl.dlq.<consumer>`` and terminated; a failure that may pass (store busy,
conflict storm) is negatively acknowledged and redelivered after a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from contracts.events import EventEnvelope
from services.common.logging import get_logger

log = get_logger(__name__)

REDELIVERY_DELAY = 1.0


class PoisonMessageError(ValueError):
    """A message that no retry will make valid."""


def consumer_config(durable: str, filter_subject: str, *, max_ack_pending: int = 1000) -> Any:
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=60,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )


def thread_of(msg: Msg) -> str:
    """Every hitlflow subject ends with the thread id."""
    return msg.subject.rsplit(".", 1)[-1]


def decode_envelope(data: bytes) -> EventEnvelope:
    try:
        return EventEnvelope.model_validate_json(data)
    except ValidationError as error:
        raise PoisonMessageError(f"not an hitlflow event envelope: {error}") from error


async def handle_batch(
    messages: Sequence[Msg],
    handle: Callable[[Msg], Awaitable[None]],
    *,
    consumer: str,
) -> None:
    groups: dict[str, list[Msg]] = defaultdict(list)
    for msg in messages:
        groups[thread_of(msg)].append(msg)

    async def run_group(group: list[Msg]) -> None:
        for index, msg in enumerate(group):
            try:
                await handle(msg)
            except PoisonMessageError as error:
                log.error("message_rejected", consumer=consumer, subject=msg.subject,
                          reason=str(error))
                await _dead_letter(msg, consumer, str(error))
                await msg.term()
            except Exception as error:
                log.warning("message_retry", consumer=consumer, subject=msg.subject,
                            error=repr(error))
                for pending in group[index:]:
                    await pending.nak(delay=REDELIVERY_DELAY)
                return
            else:
                await msg.ack()

    await asyncio.gather(*(run_group(group) for group in groups.values()))


async def _dead_letter(msg: Msg, consumer: str, reason: str) -> None:
    try:
        await msg._client.publish(
            f"hitl.dlq.{consumer}",
            msg.data,
            headers={**(msg.headers or {}), "Hitl-Error": reason[:500],
                     "Hitl-Subject": msg.subject},
        )
    except Exception as error:
        log.warning("dead_letter_failed", consumer=consumer, error=repr(error))



@dataclass(frozen=True)
class Subscription:
    """A durable pull consumer a service reads from."""

    subject: str
    stream: str
    durable: str
    handle: Callable[[Msg], Awaitable[None]]


class PullConsumer:
    """Pulls from a durable consumer and hands over batches as soon as they arrive.

    (faststream's batch subscriber waits for a full batch or its timeout before handing one
    over, which put a second of latency on every hop; its single-message mode loses the
    per-thread order. This loop keeps both: stream order within a batch, no added wait.)

    One pull request for up to ``batch_size`` messages stays open at the server while the
    handler works; deliveries go to a plain subscription, and whatever has arrived when the
    handler is free is the next batch. A new request goes out only when the open one is used up
    or ended by the server (expiry, leadership change): no round trip, task or timer per
    message, which nats-py's ``fetch`` costs.
    """

    def __init__(self, js: JetStreamContext, subscription: Subscription, *,
                 batch_size: int = 64, idle_timeout: float = 5.0,
                 handle_messages: Callable[[list[Msg]], Awaitable[None]] | None = None) -> None:
        self._js = js
        self._sub = subscription
        self._batch_size = batch_size
        self._idle_timeout = idle_timeout
        self._handle_messages = handle_messages

    async def _ensure_consumer(self) -> None:
        spec = self._sub
        try:
            await self._js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            await self._js.add_consumer(spec.stream,
                                        config=consumer_config(spec.durable, spec.subject))

    async def run(self) -> None:
        spec = self._sub
        await self._ensure_consumer()
        nc: Any = self._js._nc
        next_subject = f"{self._js._prefix}.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        inbox = nc.new_inbox()
        arrived: asyncio.Queue[Msg] = asyncio.Queue()

        async def deliver(msg: Msg) -> None:
            arrived.put_nowait(msg)

        sub = await nc.subscribe(inbox, cb=deliver)
        request = json.dumps({"batch": self._batch_size,
                              "expires": int(self._idle_timeout * 1_000_000_000)}).encode()
        open_for = 0  # messages the open pull request may still deliver
        try:
            while True:
                try:
                    if open_for <= 0:
                        await nc.publish(next_subject, request, reply=inbox)
                        open_for = self._batch_size
                    try:
                        first = await asyncio.wait_for(arrived.get(), self._idle_timeout + 1.0)
                    except TimeoutError:  # the request was lost (e.g. a reconnect): renew it
                        open_for = 0
                        continue
                    batch, ended = _drain(first, arrived)
                    open_for -= len(batch)
                    if ended is not None:  # the request ended: ask again
                        open_for = 0
                        if ended != "408" and not batch:  # not a plain expiry: do not spin
                            await asyncio.sleep(0.1)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # NATS reconnecting: retry shortly
                    log.warning("fetch_failed", consumer=spec.durable, error=repr(error))
                    open_for = 0
                    await asyncio.sleep(0.5)
                    continue
                if not batch:
                    continue
                if self._handle_messages is not None:
                    await self._handle_messages(batch)
                else:
                    await handle_batch(batch, spec.handle, consumer=spec.durable)
        finally:
            # an abandoned subscription would hold up the connection's drain on shutdown
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _drain(first: Msg, arrived: asyncio.Queue[Msg]) -> tuple[list[Msg], str | None]:
    """The messages delivered so far, and the status that ended the pull request, if any
    (``408`` expired; others such as ``409`` or ``503`` when the server ended or refused it)."""
    batch: list[Msg] = []
    ended: str | None = None
    msg: Msg | None = first
    while msg is not None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            batch.append(msg)
        elif status != "100":  # 100: heartbeat
            ended = status if ended in (None, "408") else ended
        msg = arrived.get_nowait() if not arrived.empty() else None
    return batch, ended
