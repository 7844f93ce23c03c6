"""Stopping a service's tasks."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from services.common.runtime import cancel_and_wait


def test_a_task_that_dropped_its_cancellation_is_cancelled_again() -> None:
    async def main() -> None:
        dropped = asyncio.Event()

        async def stubborn() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:  # as asyncio.wait_for on Python 3.11 may do
                dropped.set()
            await asyncio.sleep(30)

        task = asyncio.create_task(stubborn(), name="stubborn")
        polite = asyncio.create_task(asyncio.sleep(30))
        await asyncio.sleep(0)
        with capture_logs() as logs:
            await asyncio.wait_for(cancel_and_wait([task, polite], again_after=0.05), 5)
        assert dropped.is_set() and task.cancelled() and polite.cancelled()
        assert [(e["event"], e["task"]) for e in logs] == [("task_cancelled_again", "stubborn")]

    asyncio.run(main())
