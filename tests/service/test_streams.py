"""A service starting while JetStream does not answer yet (a cluster electing its stream
leaders, a server restarting) asks again instead of exiting; when JetStream never answers, it
says what is missing. Real nats-server processes from the wheel."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from structlog.testing import capture_logs

from contracts import subjects
from hitlflow.stack import EmbeddedNats, free_port, nats_server_binary, port_is_free
from services.common.messaging import JetStreamNotReadyError, ensure_streams
from tests.helpers import wait_for


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def without_jetstream(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A nats-server on ``port`` with JetStream off."""
    server = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: not port_is_free("127.0.0.1", port), what="nats-server to listen")
        yield server
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_without_jetstream_it_asks_again_then_says_what_is_missing(
        port: int, without_jetstream: subprocess.Popen[bytes]) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        with capture_logs() as logs, pytest.raises(JetStreamNotReadyError,
                                                   match="is JetStream enabled"):
            await ensure_streams(nc.jetstream(), timeout=1.5)
        assert len([e for e in logs if e["event"] == "jetstream_not_ready"]) >= 2
    finally:
        await nc.close()


async def test_streams_are_made_once_jetstream_answers(
        tmp_path: Path, port: int, without_jetstream: subprocess.Popen[bytes]) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", reconnect_time_wait=0.2,
                            max_reconnect_attempts=-1)
    server = EmbeddedNats(tmp_path / "nats", port)
    try:
        waiting = asyncio.create_task(ensure_streams(nc.jetstream(), timeout=60))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # still asking
        without_jetstream.terminate()  # the server comes back, with JetStream this time
        await asyncio.to_thread(without_jetstream.wait, 10)
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(waiting, 60)
        info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
        assert info.config.name == subjects.EVENTS_STREAM
    finally:
        await nc.close()
        server.stop()
