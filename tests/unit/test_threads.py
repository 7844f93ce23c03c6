"""A blocking call in a worker thread never outlives the task that awaits it: a service that
cancels its tasks and then closes its store must not have a store call still running."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.threads import in_thread


def test_a_cancelled_task_ends_only_once_its_call_has_returned() -> None:
    started, release = threading.Event(), threading.Event()
    returned: list[str] = []

    def store_call() -> str:
        started.set()
        release.wait(10)
        returned.append("returned")
        return "rows"

    async def main() -> None:
        task = asyncio.create_task(in_thread(store_call))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()  # cancelled again (as a stopping service does after a second)
        await asyncio.sleep(0.05)
        assert not task.done()  # the call is still running: so is its task
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert returned == ["returned"]

    asyncio.run(main())


def test_results_and_errors_pass_through() -> None:
    def fails() -> None:
        raise ValueError("no such thread")

    async def main() -> None:
        assert await in_thread(divmod, 7, 2) == (3, 1)
        assert await in_thread(sorted, [3, 1], reverse=True) == [3, 1]
        with pytest.raises(ValueError, match="no such thread"):
            await in_thread(fails)

    asyncio.run(main())


def test_a_call_that_fails_while_its_task_is_cancelled_ends_in_the_cancellation() -> None:
    started, release = threading.Event(), threading.Event()

    def fails() -> None:
        started.set()
        release.wait(10)
        raise OSError("the store went away")

    async def main() -> None:
        task = asyncio.create_task(in_thread(fails))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
