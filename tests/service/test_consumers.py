"""The NATS edge of the services against a real nats-server: consumer filters brought up to date
in place, and the relay's batch publisher (stored, de-duplicated, refusals raised)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import Tracking
from nats.js.errors import NotFoundError

from contracts import subjects
from hitlflow.stack import EmbeddedNats
from services.common.consumer import (
    DEFAULT_POLICY,
    PullConsumer,
    RetryPolicy,
    Subscription,
    Work,
    consumer_config,
    thread_of,
)
from services.common.messaging import connect, ensure_streams
from services.common.relay import AckedPublisher, PublishError
from services.common.store import Job
from tests.unit.test_group_commit import make_app


def on_nats(server: EmbeddedNats, body: Callable[[Any, Any], Awaitable[None]]) -> None:
    async def main() -> None:
        nc = await connect(server.url, name="test", reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await body(nc, js)
        finally:
            await nc.close()

    asyncio.run(main())


@contextlib.asynccontextmanager
async def pulling(consumer: PullConsumer) -> AsyncIterator[None]:
    """Run a pull consumer for the time of the block."""
    task = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def consume(js: Any, subscription: Subscription, done: asyncio.Event,
                  policy: RetryPolicy = DEFAULT_POLICY) -> None:
    """Run a pull consumer until ``done`` is set."""
    async with pulling(PullConsumer(js, subscription, policy=policy)):
        await asyncio.wait_for(done.wait(), 10)


def batches_into(batches: list[list[str]], *, each: Callable[[], None]
                 ) -> Callable[[list[Any]], Awaitable[None]]:
    """A batch handler that notes each batch's threads, acknowledges it, then calls ``each``."""

    async def handle(batch: list[Any]) -> None:
        batches.append([thread_of(msg) for msg in batch])
        for msg in batch:
            await msg.ack()
        each()

    return handle


def noting(handled: list[str]) -> tuple[Callable[[Any], Awaitable[None]], asyncio.Event]:
    """A message handler that notes each message's thread, and the event it sets each time."""
    got = asyncio.Event()

    async def handle(msg: Any) -> None:
        handled.append(thread_of(msg))
        got.set()

    return handle, got


async def until_noted(handled: list[str], got: asyncio.Event, thread_id: str) -> None:
    """Until ``thread_id`` is among the threads :func:`noting` noted (its event is set for
    every message, this one or another)."""
    while True:
        got.clear()
        if thread_id in handled:
            return
        await got.wait()


#: The subject of the consumers these tests make (any one event type would do).
ACCEPTED = subjects.events_of("interaction", ["ResponseAccepted"])


async def wait_until(js: Any, durable: str, condition: Callable[[Any], bool]) -> None:
    """Until the consumer's state, as the server reports it, meets ``condition``."""
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(NotFoundError):  # not made yet
                if condition(await js.consumer_info(subjects.EVENTS_STREAM, durable)):
                    return
            await asyncio.sleep(0.02)


async def wait_until_pulling(js: Any, durable: str) -> None:
    """Until the consumer has its pull request open at the server."""
    await wait_until(js, durable, lambda info: bool(info.num_waiting))


def test_a_consumer_made_with_an_older_filter_is_narrowed_in_place(
        nats_server: EmbeddedNats) -> None:
    wanted = subjects.events_of("workflow", ["ThreadStarted", "ThreadPaused"])
    seen: list[str] = []

    async def body(nc: Any, js: Any) -> None:
        await js.add_consumer(subjects.EVENTS_STREAM,
                              config=consumer_config("narrowed", subjects.WORKFLOW_EVENTS))
        for kind in ("ThreadStarted", "NodeCompleted", "ThreadPaused"):
            await js.publish(f"hitl.evt.workflow.{kind}.t-1", b"{}")
        last = asyncio.Event()  # ThreadPaused is last in the stream: all else came before it

        async def handle(msg: Any) -> None:
            seen.append(msg.subject)
            if ".ThreadPaused." in msg.subject:
                last.set()

        await consume(js, Subscription(wanted, subjects.EVENTS_STREAM, "narrowed", handle),
                      last)
        info = await js.consumer_info(subjects.EVENTS_STREAM, "narrowed")
        assert sorted(info.config.filter_subjects) == sorted(wanted)

    on_nats(nats_server, body)
    assert seen == ["hitl.evt.workflow.ThreadStarted.t-1", "hitl.evt.workflow.ThreadPaused.t-1"]


def test_a_consumer_started_before_its_stream_waits_for_it(nats_server: EmbeddedNats) -> None:
    """A service that starts while JetStream cannot make its consumer yet (here: the stream
    does not exist; in a cluster, a node still catching up) keeps trying instead of ending its
    consumer, which would leave the service unready until it is restarted."""
    handled: list[str] = []

    async def main() -> None:
        nc = await connect(nats_server.url, name="test", reconnect_attempts=0)
        try:
            js = nc.jetstream()
            handle, done = noting(handled)
            consumer = PullConsumer(js, Subscription(ACCEPTED, subjects.EVENTS_STREAM, "early",
                                                     handle))
            task = asyncio.create_task(consumer.run())
            try:
                with pytest.raises(TimeoutError):  # no stream: it keeps trying, it does not end
                    await asyncio.wait_for(asyncio.shield(task), 1.0)
                await ensure_streams(js)
                await js.publish("hitl.evt.interaction.ResponseAccepted.t-1", b"{}")
                await asyncio.wait_for(done.wait(), 15)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await nc.close()

    asyncio.run(main())
    assert handled == ["t-1"]


def test_a_consumer_deleted_while_it_runs_is_made_again(nats_server: EmbeddedNats) -> None:
    """An operator deletes a service's durable consumer (or recreates its stream): the service
    makes it again, as at its first start, and goes on instead of pulling from nothing. Made
    anew it reads the stream from its start (t-1 again: the services' tracking knows it)."""
    handled: list[str] = []

    async def body(nc: Any, js: Any) -> None:
        handle, got = noting(handled)
        spec = Subscription(ACCEPTED, subjects.EVENTS_STREAM, "deleted", handle)
        async with pulling(PullConsumer(js, spec)):
            await wait_until_pulling(js, "deleted")
            await js.publish("hitl.evt.interaction.ResponseAccepted.t-1", b"{}")
            await asyncio.wait_for(got.wait(), 10)
            await js.delete_consumer(subjects.EVENTS_STREAM, "deleted")
            await wait_until_pulling(js, "deleted")  # made again, its pull request open
            await js.publish("hitl.evt.interaction.ResponseAccepted.t-2", b"{}")
            # (the replayed t-1 may come first, or after the consumer is made again)
            await asyncio.wait_for(until_noted(handled, got, "t-2"), 10)

    on_nats(nats_server, body)
    assert handled == ["t-1", "t-1", "t-2"]


@pytest.mark.parametrize("mode", ["jobs", "one by one"])
@pytest.mark.parametrize("later", ["published before", "published once it failed"])
def test_a_message_that_fails_holds_back_the_rest_of_its_thread(
        nats_server: EmbeddedNats, tmp_path: Path, mode: str, later: str) -> None:
    """The first message of t-1 fails once: the second of t-1 must wait for it, whether it
    comes in the same batch or (published only once the first failed) in a later one; t-2
    goes on. Both ways a consumer handles messages: as a batch of jobs (``prepare``) and one
    by one (``handle``)."""
    app = make_app(tmp_path)
    decided: list[str] = []
    failed_once: list[bool] = []

    async def body(nc: Any, js: Any) -> None:
        messages = [("t-1", 1), ("t-2", 1), ("t-1", 2)]
        if later == "published once it failed":
            held_back = messages.pop()
        for thread, n in messages:
            await js.publish(f"hitl.cmd.start.{thread}", f"{thread}:{n}".encode())
        done = asyncio.Event()

        def record(name: str) -> None:
            decided.append(name)
            if len(decided) == 3:
                done.set()

        async def fail_first(name: str) -> None:
            if name == "t-1:1" and not failed_once:
                failed_once.append(True)
                if later == "published once it failed":  # the pull request is still open
                    thread, n = held_back
                    await js.publish(f"hitl.cmd.start.{thread}", f"{thread}:{n}".encode())
                raise RuntimeError("store busy")

        async def prepare(msg: Any) -> Work:
            name = msg.data.decode()
            await fail_first(name)

            def decide() -> tuple[list[Any], None]:
                record(name)
                return [], None

            return Work(msg, Job(thread_of(msg), decide))

        async def handle(msg: Any) -> None:
            await fail_first(msg.data.decode())
            record(msg.data.decode())

        if mode == "jobs":
            spec = Subscription(subjects.START_ALL, subjects.COMMANDS_STREAM, "held",
                                prepare=prepare, app=app)
        else:
            spec = Subscription(subjects.START_ALL, subjects.COMMANDS_STREAM, "held", handle)
        await consume(js, spec, done)

    on_nats(nats_server, body)
    app.close()
    assert decided == ["t-2:1", "t-1:1", "t-1:2"]


def test_deliveries_held_back_are_not_counted_as_failures_of_the_message(
        nats_server: EmbeddedNats) -> None:
    """t-1:2 waits while t-1:1 meets an outage three times (three deliveries held back, which
    the server counts). Its own first failure is then its first attempt, not its fourth: it is
    delivered again, not quarantined (at three failures)."""
    policy = RetryPolicy(poison_attempts=3, redelivery_delay=0.1)
    handled: list[str] = []
    outages, failures = [0], [0]

    async def body(nc: Any, js: Any) -> None:
        for n in (1, 2):
            await js.publish("hitl.cmd.start.t-1", f"t-1:{n}".encode())
        done = asyncio.Event()

        async def handle(msg: Any) -> None:
            name = msg.data.decode()
            if name == "t-1:1" and outages[0] < 3:
                outages[0] += 1
                raise OSError("the store is unreachable")
            if name == "t-1:2" and not failures[0]:
                failures[0] += 1
                raise RuntimeError("failed once")
            handled.append(name)
            if name == "t-1:2":
                done.set()

        await consume(js, Subscription(subjects.START_ALL, subjects.COMMANDS_STREAM, "counted",
                                       handle), done, policy)
        quarantined = await js.stream_info(subjects.DLQ_STREAM)
        assert quarantined.state.messages == 0

    on_nats(nats_server, body)
    assert handled == ["t-1:1", "t-1:2"]
    assert outages == [3] and failures == [1]


def test_the_batch_publisher_stores_in_order_and_the_stream_drops_resends(
        nats_server: EmbeddedNats) -> None:
    async def body(nc: Any, js: Any) -> None:
        publisher = AckedPublisher(js, timeout=2.0)
        batch = [(f"hitl.evt.workflow.NodeCompleted.t-{n % 3}", json.dumps({"n": n}).encode(),
                  f"workflow:{n}", {"Hitl-Correlation-Id": f"c-{n}"}) for n in range(1, 201)]
        await publisher.publish(batch)
        await publisher.publish(batch[150:])  # re-sent after a crash: dropped by de-dup
        info = await js.stream_info(subjects.EVENTS_STREAM)
        assert info.state.messages == 200
        stored = [json.loads((await js.get_msg(subjects.EVENTS_STREAM, seq)).data)["n"]
                  for seq in (1, 100, 200)]
        assert stored == [1, 100, 200]
        kept = await js.get_msg(subjects.EVENTS_STREAM, 100)
        assert kept.headers["Hitl-Correlation-Id"] == "c-100"

        with pytest.raises(PublishError, match="503"):  # no stream takes this subject
            await publisher.publish([("nowhere.at.all", b"{}", "x:1", {})])
        await publisher.publish([("hitl.evt.workflow.NodeCompleted.t-9", b"{}", "workflow:201",
                                  {})])
        await publisher.close()

    on_nats(nats_server, body)


@pytest.mark.parametrize("linger", [0.0, 1.0])
def test_a_lingering_consumer_gathers_what_arrives_soon_after_into_one_batch(
        nats_server: EmbeddedNats, linger: float) -> None:
    batches: list[list[str]] = []

    async def body(nc: Any, js: Any) -> None:
        got_first, got_all = asyncio.Event(), asyncio.Event()

        def each() -> None:
            got_first.set()
            if sum(map(len, batches)) == 4:
                got_all.set()

        spec = Subscription(ACCEPTED, subjects.EVENTS_STREAM, "gathering", linger=linger)
        handle = batches_into(batches, each=each)
        async with pulling(PullConsumer(js, spec, handle_messages=handle)):
            await wait_until_pulling(js, "gathering")
            await js.publish("hitl.evt.interaction.ResponseAccepted.t-1", b"{}")
            if not linger:
                await asyncio.wait_for(got_first.wait(), 5)  # handed over alone, at once
            else:  # t-1 is delivered and held: the rest arrive within its linger
                await wait_until(js, "gathering", lambda info: info.num_ack_pending == 1)
            for thread in ("t-2", "t-3", "t-4"):
                await js.publish(f"hitl.evt.interaction.ResponseAccepted.{thread}", b"{}")
            await asyncio.wait_for(got_all.wait(), 5)

    on_nats(nats_server, body)
    if linger:
        assert batches == [["t-1", "t-2", "t-3", "t-4"]]
    else:
        assert batches[0] == ["t-1"]
        assert [thread for batch in batches for thread in batch] == ["t-1", "t-2", "t-3", "t-4"]


def test_a_lingering_consumer_hands_over_a_full_batch_without_waiting(
        nats_server: EmbeddedNats) -> None:
    """Four messages wait; the open pull request takes four: nothing more can come, so the
    batch goes at once instead of after the linger (a minute here)."""
    batches: list[list[str]] = []

    async def body(nc: Any, js: Any) -> None:
        for thread in ("t-1", "t-2", "t-3", "t-4", "t-5"):
            await js.publish(f"hitl.evt.interaction.ResponseAccepted.{thread}", b"{}")
        got_first = asyncio.Event()
        spec = Subscription(ACCEPTED, subjects.EVENTS_STREAM, "full", linger=60.0)
        handle = batches_into(batches, each=got_first.set)
        async with pulling(PullConsumer(js, spec, batch_size=4, handle_messages=handle)):
            await asyncio.wait_for(got_first.wait(), 10)

    on_nats(nats_server, body)
    assert batches == [["t-1", "t-2", "t-3", "t-4"]]


def test_a_caller_waiting_on_the_handling_cuts_the_linger_short(
        nats_server: EmbeddedNats) -> None:
    """A consumer that lingers a minute hands its batch over at once while a caller is in a
    ``hurried`` block (a query waiting to read its writes), whether the block began before the
    message came or while the batch lingered; outside the block it lingers again."""
    batches: list[list[str]] = []

    async def body(nc: Any, js: Any) -> None:
        handed = asyncio.Event()
        spec = Subscription(ACCEPTED, subjects.EVENTS_STREAM, "hurried", linger=60.0)
        consumer = PullConsumer(js, spec, handle_messages=batches_into(batches,
                                                                       each=handed.set))

        async def publish(thread: str) -> None:
            await js.publish(f"hitl.evt.interaction.ResponseAccepted.{thread}", b"{}")

        async def handed_over() -> None:  # well before the linger would have ended
            await asyncio.wait_for(handed.wait(), 10)
            handed.clear()

        async with pulling(consumer):
            await wait_until_pulling(js, "hurried")
            with consumer.hurried():  # the caller waits before the message comes
                await publish("t-1")
                await handed_over()
            await publish("t-2")  # no one waits: t-2 lingers, and t-3 joins it
            await wait_until(js, "hurried", lambda info: info.num_ack_pending == 1)
            await publish("t-3")
            await wait_until(js, "hurried", lambda info: info.num_ack_pending == 2)
            assert not handed.is_set()
            with consumer.hurried():  # a caller comes while the batch lingers
                await handed_over()

    on_nats(nats_server, body)
    assert batches == [["t-1"], ["t-2", "t-3"]]


def test_what_a_batch_does_as_a_whole_comes_after_its_save_and_a_failure_redelivers_it(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    """``then_all`` gets the saved jobs of each batch in stream order, before their messages
    are acknowledged; when it fails they are delivered again, as duplicates of saved jobs."""
    app = make_app(tmp_path)
    calls: list[list[tuple[str, str, bool]]] = []

    async def body(nc: Any, js: Any) -> None:
        for thread, n in (("t-1", 1), ("t-2", 1), ("t-1", 2)):
            await js.publish(f"hitl.cmd.start.{thread}", f"{thread}:{n}".encode(),
                             headers={"Nats-Msg-Id": f"{thread}:{n}"})
        done = asyncio.Event()

        async def prepare(msg: Any) -> Work:
            name = msg.data.decode()
            position = int(msg.metadata.sequence.stream)
            return Work(msg, Job(thread_of(msg), lambda: ([], name),
                                 Tracking("starts", position), on_duplicate=lambda: name))

        async def then_all(jobs: list[Job]) -> None:
            calls.append([(job.key, job.result, job.duplicate) for job in jobs])
            if len(calls) == 1:
                raise RuntimeError("the timers could not be set")
            info = await js.consumer_info(subjects.COMMANDS_STREAM, "whole")
            assert info.num_ack_pending >= len(jobs)  # not acknowledged yet
            if sum(map(len, calls)) >= 6:
                done.set()

        spec = Subscription(subjects.START_ALL, subjects.COMMANDS_STREAM, "whole",
                            prepare=prepare, app=app, then_all=then_all)
        await consume(js, spec, done, RetryPolicy(poison_attempts=5, redelivery_delay=0.1))

    on_nats(nats_server, body)
    app.close()
    first = [("t-1", "t-1:1", False), ("t-2", "t-2:1", False), ("t-1", "t-1:2", False)]
    assert calls[0] == first
    again = [item for call in calls[1:] for item in call]
    assert sorted(again) == sorted((key, result, True) for key, result, _ in first)
    assert [result for key, result, _ in again if key == "t-1"] == ["t-1:1", "t-1:2"]
