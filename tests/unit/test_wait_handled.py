"""``wait_handled`` ends at its deadline even when the NATS client drops the cancellation that
was to end it (Python 3.11's ``asyncio.wait_for``, which nats-py's requests use, can lose a
cancellation that arrives as the awaited answer does). The stand-in below does only that: it
answers every ``consumer_info`` and swallows a cancellation; the real server's behaviour is in
``tests/service/test_timeouts.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import Any

from services.common.consumer import wait_handled


class DropsCancellations:
    """A consumer that never catches up, behind a client that loses a cancellation."""

    dropped = False

    async def stream_info(self, stream: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(last_seq=10))

    async def consumer_info(self, stream: str, durable: str, timeout: float | None = None
                            ) -> Any:
        # an answer that takes longer than the whole wait: the deadline passes during it, and
        # its cancellation is dropped, as wait_for may on 3.11 (once: the test's own guard of
        # 5 s gets through)
        if self.dropped:
            await asyncio.sleep(0.3)
        else:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.3)
                return self.info()
            self.dropped = True
        return self.info()

    @staticmethod
    def info() -> Any:
        return SimpleNamespace(num_pending=3, num_ack_pending=1,
                               ack_floor=SimpleNamespace(stream_seq=6))


def test_the_wait_ends_at_its_deadline_though_its_cancellation_was_dropped() -> None:
    async def main() -> tuple[int, float]:
        started = time.monotonic()
        left = await asyncio.wait_for(
            wait_handled(DropsCancellations(), "HITL_EVENTS", "deadlines",  # type: ignore[arg-type]
                         timeout=0.2), 5)
        return left, time.monotonic() - started

    left, took = asyncio.run(main())
    assert left == 4  # what the consumer still had to handle
    assert took < 4  # not the outer 5 s guard
