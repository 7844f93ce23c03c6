"""The timeout service's timers on a real nats-server: a batch of deadline changes leaves one
NATS schedule per pending request, as its last change left it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.errors import NotFoundError

from contracts import subjects
from contracts.timeouts import TimeoutInteraction
from hitlflow.stack import EmbeddedNats
from services.common.messaging import connect, ensure_streams
from services.timeout.application import Timer
from services.timeout.index import stamp
from services.timeout.timers import Timers

SOON = datetime.now(UTC) + timedelta(hours=1)


def timer(request: str, *, step: int = 0, armed: bool = True, due: datetime = SOON) -> Timer:
    return Timer(request, f"thread-{request}", step, due, armed)


async def held(js: Any, request: str) -> Any:
    """The schedule message held for ``request``, or None."""
    try:
        return await js.get_last_msg(subjects.SCHEDULES_STREAM,
                                     subjects.schedule_subject(request, f"thread-{request}"))
    except NotFoundError:
        return None


def test_a_batch_leaves_each_request_the_schedule_its_last_change_set(
        nats_server: EmbeddedNats) -> None:
    later = SOON + timedelta(minutes=5)

    async def main() -> None:
        nc = await connect(nats_server.url, name="test", reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            timers = Timers(js)
            await timers.apply([(timer("a"), "corr-a"), (timer("gone"), None)])
            assert await held(js, "gone") is not None
            await timers.apply([
                (timer("b"), None),
                (timer("gone", armed=False), None),        # answered: its schedule goes
                (timer("a", step=1, due=later), "corr-a"),  # reminded: a new deadline
                (timer("c"), None),
                (timer("c", armed=False), None),            # set and cleared in one batch
            ])
            assert await held(js, "gone") is None and await held(js, "c") is None
            a, b = await held(js, "a"), await held(js, "b")
            assert a.headers["Nats-Schedule"] == f"@at {stamp(later)}"
            assert a.headers["Nats-Schedule-Target"] == subjects.schedule_fire_subject(
                "thread-a")
            assert a.headers[subjects.CORRELATION_HEADER] == "corr-a"
            assert subjects.CORRELATION_HEADER not in b.headers
            command = TimeoutInteraction.model_validate_json(a.data)
            assert (command.request_id, command.step, command.due_at) == ("a", 1, later)
            info = await js.stream_info(subjects.SCHEDULES_STREAM)
            assert info.state.messages == 2  # one per pending request

            # the same schedule set again after a clear is held again (no de-duplication)
            await timers.apply([(timer("b", armed=False), None)])
            await timers.apply([(timer("b"), None)])
            assert await held(js, "b") is not None
        finally:
            await nc.close()

    asyncio.run(main())
