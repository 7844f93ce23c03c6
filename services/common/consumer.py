"""Durable pull consumers: decode, group by thread, handle, acknowledge.

Messages of one thread are handled in stream order; different threads run concurrently. A
message whose handling fails is sorted by what failed (see :func:`_quarantined`):

- one that can never be handled (malformed, wrong contract: ``PoisonMessageError``) is
  quarantined at once (``services/common/quarantine.py``: stream ``HITL_DLQ``, subject
  ``hitl.dlq.<consumer>``) and terminated;
- an outage or contention (NATS or the store unreachable, a lock, a conflict storm) is
  negatively acknowledged and delivered again after a delay, for as long as it lasts;
- any other error (a bug, data the code cannot take) is delivered again the same way until
  the message has been delivered ``poison_attempts`` times (deliveries held back behind an
  earlier message of its thread not counted), then quarantined and terminated.

While a message is delivered again, the later messages of its thread that the consumer receives
wait for it, in the same batch or a later one (they are delivered again too, see
:class:`Holds`); once it is handled or quarantined they go on. A message whose quarantine record
cannot be stored is kept and tried again: nothing is dropped. The sender of a command
quarantined before its outcome was decided is told so (``CommandReply`` with code
``quarantined``) rather than left waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from contracts.commands import CommandReply
from contracts.events import EventEnvelope
from contracts.subjects import REPLY_TO_HEADER
from services.common import metrics
from services.common.correlation import correlated, of_message
from services.common.logging import get_logger
from services.common.quarantine import QuarantineError, describe, is_transient, quarantine
from services.common.store import Job, ServiceApplication
from services.common.threads import in_thread

log = get_logger(__name__)

#: Why a message is delivered again although it did not fail itself.
HELD_BACK = "an earlier message of its thread is to be delivered again first"

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R")


class PoisonMessageError(ValueError):
    """A message that no retry will make valid."""


@dataclass(frozen=True)
class RetryPolicy:
    """What a consumer does with a message whose handling failed (settings
    ``HITLFLOW_POISON_ATTEMPTS`` and ``HITLFLOW_REDELIVERY_DELAY``)."""

    #: Deliveries after which a message failing with an error that is not an outage is
    #: quarantined.
    poison_attempts: int = 5
    #: Seconds before a failed message is delivered again.
    redelivery_delay: float = 1.0


DEFAULT_POLICY = RetryPolicy()


def consumer_config(durable: str, subject: str | tuple[str, ...], *,
                    max_ack_pending: int = 1000, ack_wait: float = 60.0) -> Any:
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subject if isinstance(subject, str) else None,
        filter_subjects=None if isinstance(subject, str) else list(subject),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )


def thread_of(msg: Msg) -> str:
    """Every hitlflow subject ends with the thread id."""
    return msg.subject.rsplit(".", 1)[-1]


def stream_seq(msg: Msg) -> int:
    """The message's sequence in its stream."""
    return int(msg.metadata.sequence.stream)


#: Seconds a thread stays held past its message's redelivery delay (see :class:`Holds`).
HOLD_SLACK = 2.0
#: Messages whose deliveries while held back :class:`Holds` counts, and threads it holds
#: before it forgets the holds that have ended, at most.
MAX_WAITING = 10_000


class Holds:
    """The threads of one consumer whose message is to be delivered again, each with that
    message's stream sequence: the later messages of the thread are delivered again too
    until it has been handled or quarantined, whether they came in its batch or in a later
    one (so a thread's messages are handled in stream order).

    A hold ends by itself ``hold_for`` seconds after the message failed: the message went to
    another replica of the consumer (which keeps its own holds), or back to the server with a
    lost connection. Either way this consumer no longer sees it come back.

    A delivery that was held back is not an attempt of the message's own: :meth:`attempts`
    leaves those out of the server's count (a message that waited for another is quarantined
    after ``poison_attempts`` failures of its own, like any other)."""

    def __init__(self, hold_for: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._hold_for = hold_for
        self._clock = clock
        self._held: dict[str, tuple[int, float]] = {}  # thread: (sequence, until)
        self._waited: OrderedDict[int, int] = OrderedDict()  # sequence: deliveries held back

    def holds_back(self, msg: Msg) -> bool:
        """Whether ``msg`` comes after a held message of its thread (the held message itself,
        delivered again, goes on)."""
        thread = thread_of(msg)
        held = self._held.get(thread)
        if held is None:
            return False
        seq, until = held
        if self._clock() >= until:
            del self._held[thread]
            return False
        return stream_seq(msg) > seq

    def held_back(self, msg: Msg) -> None:
        """``msg`` is delivered again because it was held back."""
        seq = stream_seq(msg)
        self._waited[seq] = self._waited.pop(seq, 0) + 1
        if len(self._waited) > MAX_WAITING:
            self._waited.popitem(last=False)

    def attempts(self, msg: Msg) -> int:
        """How many times ``msg`` has been delivered to be handled (this time included)."""
        return max(1, delivered(msg) - self._waited.get(stream_seq(msg), 0))

    def hold(self, msg: Msg) -> None:
        """``msg`` failed and is to be delivered again: hold its thread back."""
        thread, seq = thread_of(msg), stream_seq(msg)
        now = self._clock()
        held = self._held.get(thread)
        if held is not None:
            seq = min(seq, held[0])
        elif len(self._held) >= MAX_WAITING:  # a hold whose thread sent nothing more here
            self._held = {t: h for t, h in self._held.items() if h[1] > now}
        self._held[thread] = (seq, now + self._hold_for)

    def settled(self, msg: Msg) -> None:
        """``msg`` was handled or quarantined: its thread goes on."""
        seq = stream_seq(msg)
        self._waited.pop(seq, None)
        thread = thread_of(msg)
        held = self._held.get(thread)
        if held is not None and seq >= held[0]:
            del self._held[thread]


def decode_envelope(data: bytes) -> EventEnvelope:
    try:
        return EventEnvelope.model_validate_json(data)
    except ValidationError as error:
        raise PoisonMessageError(f"not an hitlflow event envelope: {error}") from error


def decode_payload(envelope: EventEnvelope, model: type[P]) -> P:
    """The envelope's payload as the event type's contract."""
    try:
        return model.model_validate(envelope.payload)
    except ValidationError as error:
        raise PoisonMessageError(str(error)) from error


def delivered(msg: Msg) -> int:
    """How many times the server has delivered this message (this time included)."""
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:  # not a JetStream delivery
        return 1


async def quarantine_message(msg: Msg, consumer: str, reason: BaseException | str) -> bool:
    """Quarantine a consumed message and terminate it; False when the record could not be
    stored (the message is then left to be delivered again)."""
    try:
        seq: int | None = stream_seq(msg)
    except Exception:  # not a JetStream delivery
        seq = None
    try:
        await quarantine(msg._client, source=consumer, subject=msg.subject, data=msg.data,
                         reason=reason, thread_id=thread_of(msg), stream_seq=seq,
                         headers=msg.headers)
    except QuarantineError:
        return False
    with contextlib.suppress(Exception):  # else delivered again after ack_wait: stored once
        await msg.term()
    return True


async def _tell_sender(msg: Msg, reason: str) -> None:
    """A command quarantined before its outcome was decided: its sender (``Hitl-Reply-To``)
    gets a refusal that says so instead of waiting for a reply that would never come."""
    reply_to = (msg.headers or {}).get(REPLY_TO_HEADER)
    parts = msg.subject.split(".")
    if not reply_to or len(parts) < 4 or parts[:2] != ["hitl", "cmd"]:
        return
    try:
        reply = CommandReply.model_validate({
            "ok": False, "command": parts[2], "thread_id": thread_of(msg), "code": "quarantined",
            "error": f"the command could not be handled and was quarantined ({reason}); "
                     "'hitlflow doctor' shows it"})
    except ValidationError:  # not a command this version answers
        return
    metrics.count_command(reply.command, "quarantined")
    with contextlib.suppress(Exception):  # best effort: the command itself is kept
        await msg._client.publish(reply_to, reply.model_dump_json().encode())


async def _retry(msg: Msg, consumer: str, error: BaseException | str, policy: RetryPolicy,
                 **detail: Any) -> None:
    """A message that may succeed later: delivered again after a delay."""
    metrics.REDELIVERIES.labels(consumer).inc()
    log.warning("message_retry", consumer=consumer, subject=msg.subject,
                error=error if isinstance(error, str) else repr(error), **detail)
    with contextlib.suppress(Exception):  # NATS gone: redelivered after ack_wait anyway
        await msg.nak(delay=policy.redelivery_delay)


async def _hold_back(msg: Msg, consumer: str, policy: RetryPolicy, holds: Holds) -> None:
    """A message that waits for an earlier one of its thread: delivered again after it."""
    holds.held_back(msg)
    await _retry(msg, consumer, HELD_BACK, policy)


async def _failed(msg: Msg, consumer: str, error: BaseException, policy: RetryPolicy,
                  holds: Holds) -> None:
    """A message whose handling raised ``error``: quarantined and terminated when no retry can
    help, else left to be delivered again, the later messages of its thread held back."""
    if await _quarantined(msg, consumer, error, policy, holds.attempts(msg)):
        holds.settled(msg)
    else:
        holds.hold(msg)


async def _quarantined(msg: Msg, consumer: str, error: BaseException, policy: RetryPolicy,
                       attempt: int) -> bool:
    """Quarantine and terminate a message that failed with ``error`` (its ``attempt``-th
    attempt) if no retry can help (True); else ask for it again after a delay (False)."""
    if isinstance(error, PoisonMessageError):  # (its sender, if any, was told why)
        if await quarantine_message(msg, consumer, error):
            return True
        await _retry(msg, consumer, error, policy, detail="not quarantined yet")
        return False
    if is_transient(error):
        await _retry(msg, consumer, error, policy, transient=True)
        return False
    if attempt >= policy.poison_attempts:
        reason = f"{describe(error)} (failed {attempt} times)"
        if await quarantine_message(msg, consumer, reason):
            await _tell_sender(msg, reason)
            return True
    await _retry(msg, consumer, error, policy, transient=False, attempt=attempt,
                 poison_attempts=policy.poison_attempts)
    return False


async def handle_batch(
    messages: Sequence[Msg],
    handle: Callable[[Msg], Awaitable[None]],
    *,
    consumer: str,
    holds: Holds,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> None:
    """Handle a batch message by message, a thread's in stream order, threads concurrently."""
    groups: dict[str, list[Msg]] = defaultdict(list)
    for msg in messages:
        groups[thread_of(msg)].append(msg)

    async def run_group(group: list[Msg]) -> None:
        for msg in group:
            if holds.holds_back(msg):
                await _hold_back(msg, consumer, policy, holds)
                continue
            try:
                with correlated(of_message(msg)):
                    await handle(msg)
            except Exception as error:
                await _failed(msg, consumer, error, policy, holds)
            else:
                await msg.ack()
                holds.settled(msg)

    await asyncio.gather(*(run_group(group) for group in groups.values()))


@dataclass(frozen=True)
class Work:
    """A message made into a job, and what to do once the job is decided and saved (send the
    reply, set the timer); the message is acknowledged after that."""

    msg: Msg
    job: Job
    then: Callable[[Job], Awaitable[None]] | None = None


Prepare = Callable[[Msg], Awaitable[Work | None]]


async def with_store(app: ServiceApplication, call: Callable[..., R], *args: Any) -> R:
    """``call(*args)``, work on the application's store, where its decisions run: on the loop
    when the application allows it (``decides_in_loop``), else in a worker thread."""
    if app.decides_in_loop:
        return call(*args)
    return await in_thread(call, *args)


async def handle_jobs(messages: Sequence[Msg], prepare: Prepare, app: ServiceApplication, *,
                      consumer: str, holds: Holds,
                      policy: RetryPolicy = DEFAULT_POLICY,
                      then_all: Callable[[list[Job]], Awaitable[None]] | None = None) -> None:
    """A batch as one application call (:meth:`ServiceApplication.run_jobs`): decode every
    message, decide them all in one transaction (in a worker thread, or on the loop when the
    application allows it: ``decides_in_loop``), then act (``then_all`` for the batch, each
    work's ``then``) and acknowledge in stream order. ``prepare`` returns None for a message
    with nothing to do."""
    works: list[Work] = []
    for msg in messages:
        if holds.holds_back(msg):
            await _hold_back(msg, consumer, policy, holds)
            continue
        correlation_id = of_message(msg)
        try:
            with correlated(correlation_id):
                work = await prepare(msg)
        except Exception as error:
            await _failed(msg, consumer, error, policy, holds)
            continue
        if work is None:
            await msg.ack()
            holds.settled(msg)
        else:
            work.job.correlation_id = correlation_id
            works.append(work)
    if works:
        jobs = [work.job for work in works]
        try:
            await with_store(app, app.run_jobs, jobs)
        except Exception as error:  # (each job's own failure is kept on the job)
            for job in jobs:
                job.error = job.error or error
        await asyncio.sleep(0)  # let the relay publish what was saved before replies go out
        done = [job for job in jobs if not job.failed]
        if then_all is not None and done:
            try:
                await then_all(done)
            except Exception as error:  # delivered again: the jobs are then duplicates
                for job in done:
                    job.error = error
    for work in works:
        job = work.job
        if not job.failed and work.then is not None:
            try:
                with correlated(job.correlation_id):
                    await work.then(job)
            except Exception as error:  # delivered again: the job is then a duplicate
                job.error = error
        if job.error is not None:
            await _failed(work.msg, consumer, job.error, policy, holds)
        elif job.skipped:  # an earlier job of its thread failed
            await _hold_back(work.msg, consumer, policy, holds)
        else:
            await work.msg.ack()
            holds.settled(work.msg)


@dataclass(frozen=True)
class Subscription:
    """A durable pull consumer a service reads from: messages one by one (``handle``) or as
    batches of jobs (``prepare``, see :func:`handle_jobs`). ``subject`` may name several
    subjects: the consumer then receives only those."""

    subject: str | tuple[str, ...]
    stream: str
    durable: str
    handle: Callable[[Msg], Awaitable[None]] | None = None
    prepare: Prepare | None = None
    app: ServiceApplication | None = None
    #: Seconds to let messages gather after the first of a batch arrives (0: hand it over at
    #: once), unless the batch fills up first or a caller waits (:meth:`PullConsumer.hurried`).
    #: For work no caller waits on: fewer, larger batches, each one transaction.
    linger: float = 0.0
    #: Called once a batch's jobs are saved, with those that succeeded (in stream order),
    #: before their messages are acknowledged: what is done for the batch as a whole (the
    #: timeout service's timers). When it raises, every one of them is delivered again.
    then_all: Callable[[list[Job]], Awaitable[None]] | None = None

    def batch_handler(self, policy: RetryPolicy = DEFAULT_POLICY
                      ) -> Callable[[list[Msg]], Awaitable[None]]:
        """The consumer's handler of its batches (with the consumer's own :class:`Holds`)."""
        handle, prepare, app = self.handle, self.prepare, self.app
        holds = Holds(policy.redelivery_delay + HOLD_SLACK)
        if prepare is not None and app is not None:
            return lambda batch: handle_jobs(batch, prepare, app, consumer=self.durable,
                                             holds=holds, policy=policy,
                                             then_all=self.then_all)
        assert handle is not None, f"subscription {self.durable} has nothing to handle with"
        return lambda batch: handle_batch(batch, handle, consumer=self.durable, holds=holds,
                                          policy=policy)


class _Deliveries:
    """What a pull consumer's open request delivers, in the order it arrives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._enough = asyncio.Event()
        self._awaiting = 0
        self._hurried = 0  # callers waiting for what arrives to be handled

    async def deliver(self, msg: Msg) -> None:
        self.queue.put_nowait(msg)
        if self._awaiting and self.queue.qsize() >= self._awaiting:
            self._enough.set()

    @contextlib.contextmanager
    def hurried(self) -> Iterator[None]:
        """While in the block, batches are handed over as they arrive, without lingering
        (one that lingers now goes at once)."""
        self._hurried += 1
        self._enough.set()
        try:
            yield
        finally:
            self._hurried -= 1

    async def gather(self, count: int, linger: float) -> None:
        """Wait until ``count`` messages are waiting, or ``linger`` seconds have passed, or
        someone is in a :meth:`hurried` block."""
        if self._hurried or self.queue.qsize() >= count:
            return
        self._awaiting = count
        self._enough.clear()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(linger):
                    await self._enough.wait()
        finally:
            self._awaiting = 0


class PullConsumer:
    """Pulls from a durable consumer and hands over batches as soon as they arrive.

    (faststream's batch subscriber waits for a full batch or its timeout before handing one
    over, which put a second of latency on every hop; its single-message mode loses the
    per-thread order. This loop keeps both: stream order within a batch, no added wait.)

    One pull request for up to ``batch_size`` messages stays open at the server while the
    handler works; deliveries go to a plain subscription, and whatever has arrived when the
    handler is free is the next batch (or, with the subscription's ``linger``, what has arrived
    when that has passed). A new request goes out only when the open one is used up or ended by
    the server (expiry, leadership change): no round trip, task or timer per message, which
    nats-py's ``fetch`` costs.
    """

    def __init__(self, js: JetStreamContext, subscription: Subscription, *,
                 batch_size: int = 64, idle_timeout: float = 5.0,
                 handle_messages: Callable[[list[Msg]], Awaitable[None]] | None = None,
                 policy: RetryPolicy = DEFAULT_POLICY, ack_wait: float = 60.0,
                 make: Callable[[], Awaitable[None]] | None = None) -> None:
        self._js = js
        #: Makes the durable consumer (at the start, and again when it was deleted): by
        #: default as :func:`consumer_config` describes it, kept if it exists.
        self._make = make or self._ensure_consumer
        self._ack_wait = ack_wait
        self._sub = subscription
        self._batch_size = batch_size
        self._idle_timeout = idle_timeout
        self._handle_messages = handle_messages
        self._policy = policy
        self._delivered = metrics.DELIVERED.labels(subscription.durable)
        self._deliveries = _Deliveries()

    def hurried(self) -> contextlib.AbstractContextManager[None]:
        """A block during which the consumer does not linger: for a caller waiting until what
        it wrote has been handled (read-your-writes), while the consumer otherwise gathers
        larger batches for work no one waits on."""
        return self._deliveries.hurried()

    async def _ensure_consumer(self) -> None:
        spec = self._sub
        wanted = [spec.subject] if isinstance(spec.subject, str) else list(spec.subject)
        try:
            info = await self._js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            pass
        else:
            config = info.config
            current = config.filter_subjects or [config.filter_subject]
            if sorted(current) == sorted(wanted) and config.ack_wait == self._ack_wait:
                return
            # an older release filtered otherwise: the server changes the filter in place
            log.info("consumer_filter_changed", consumer=spec.durable, was=current, now=wanted)
        await self._js.add_consumer(spec.stream,
                                    config=consumer_config(spec.durable, spec.subject,
                                                           ack_wait=self._ack_wait))

    async def _made(self) -> None:
        """Make or update the durable consumer, trying again for as long as NATS cannot (a node
        starting, a JetStream leader being elected, the stream not made yet): a consumer that
        gave up here would leave its service unready until restarted. An error no retry mends
        (the server refuses the consumer's configuration) is raised."""
        delay = 0.25
        while True:
            try:
                await self._make()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not is_transient(error):
                    raise
                log.warning("consumer_not_made", consumer=self._sub.durable, error=repr(error),
                            retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _gone(self) -> bool:
        """Was the durable consumer deleted (by an operator, or with its stream)? Asked when a
        pull request ends as one to a deleted or unknown consumer does (409, 503)."""
        spec = self._sub
        try:
            await self._js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            log.warning("consumer_gone", consumer=spec.durable, stream=spec.stream,
                        detail="made again")
            return True
        return False

    async def run(self) -> None:
        spec = self._sub
        await self._made()
        nc: Any = self._js._nc
        next_subject = f"{self._js._prefix}.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        inbox = nc.new_inbox()
        deliveries = self._deliveries
        arrived = deliveries.queue
        sub = await nc.subscribe(inbox, cb=deliveries.deliver)
        handle_messages = self._handle_messages or spec.batch_handler(self._policy)
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
                        # (asyncio.timeout, not wait_for: no task per batch, no extra turns
                        # of the loop between a delivery and its handling)
                        async with asyncio.timeout(self._idle_timeout + 1.0):
                            first = await arrived.get()
                    except TimeoutError:  # the request was lost (e.g. a reconnect): renew it
                        open_for = 0
                        continue
                    if spec.linger > 0:  # what the open request may still deliver
                        await deliveries.gather(open_for - 1, spec.linger)
                    batch, ended = _drain(first, arrived)
                    open_for -= len(batch)
                    if ended is not None:  # the request ended: ask again
                        open_for = 0
                        if ended in ("409", "503") and not batch and await self._gone():
                            await self._made()
                        elif ended != "408" and not batch:  # not a plain expiry: do not spin
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
                await self._handle(handle_messages, batch)
        finally:
            # an abandoned subscription would hold up the connection's drain on shutdown; with
            # NATS gone, unsubscribing could wait for a reconnect that never comes
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2.0)

    async def _handle(self, handle_messages: Callable[[list[Msg]], Awaitable[None]],
                      batch: list[Msg]) -> None:
        """Hand a batch over; a handler that raises (a defect: handlers settle each message
        themselves) does not stop the consumer: the batch is delivered again."""
        self._delivered.inc(len(batch))
        try:
            await handle_messages(batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("batch_failed", consumer=self._sub.durable, messages=len(batch),
                      error=repr(error))
            metrics.REDELIVERIES.labels(self._sub.durable).inc(len(batch))
            for msg in batch:
                with contextlib.suppress(Exception):  # those settled already
                    await msg.nak(delay=self._policy.redelivery_delay)


async def wait_handled(js: JetStreamContext, stream: str, durable: str, *,
                       timeout: float, poll: float = 0.01) -> int:
    """Wait until a durable consumer has handled every message its stream held when called
    (read-your-writes for a reply that answers from what the consumer recorded). Returns 0
    then, or, when ``timeout`` seconds pass first, how many messages it still had to handle:
    the caller answers from what is there and says so.

    The deadline is also checked on every turn, not left to the timeout's cancellation alone:
    on Python 3.11 a nats-py request can drop a cancellation that arrives as its answer does
    (see ``cancel_and_wait``), and the wait would then go on for as long as the lag lasts."""
    loop = asyncio.get_running_loop()
    last = (await js.stream_info(stream)).state.last_seq
    deadline = loop.time() + timeout
    left = 0
    try:
        async with asyncio.timeout_at(deadline):
            while (remaining := deadline - loop.time()) > 0:
                info = await js.consumer_info(stream, durable, timeout=remaining)
                left = (info.num_pending or 0) + (info.num_ack_pending or 0)
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                if not left or floor >= last:
                    return 0
                await asyncio.sleep(poll)
    except TimeoutError:
        pass
    return left


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
