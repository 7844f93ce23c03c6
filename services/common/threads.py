"""Blocking calls made from the event loop, in worker threads that never outlive their task.

``asyncio.to_thread`` runs a call in a worker thread; cancelling the task that awaits it
does not stop the thread, which runs on. A service stopping cancels its tasks and then closes
its store: a store call still running in such a thread then used a closed SQLite connection,
which crashed the process (a segmentation fault in ``sqlite3``). :func:`in_thread` is
``asyncio.to_thread`` whose cancellation takes effect once the call has returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


async def in_thread(call: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """``await asyncio.to_thread(call, *args, **kwargs)``; cancelled, it first waits for the
    call to return (however often it is cancelled meanwhile), then raises the cancellation."""
    running = asyncio.ensure_future(asyncio.to_thread(call, *args, **kwargs))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():
            try:
                await asyncio.wait({running})
            except asyncio.CancelledError:
                continue
        if not running.cancelled():
            running.exception()  # retrieved: the cancellation is what the caller gets
        raise
