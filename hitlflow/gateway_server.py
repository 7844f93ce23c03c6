"""The HTTP gateway served on a running asyncio loop: uvicorn's ``Server`` on a socket bound
beforehand (:func:`hitlflow.stack.gateway_socket`: a taken port is an error that says what to
do, before anything starts), started when it listens. ``hitlflow serve gateway`` runs one in
its own process; ``hitlflow up --one-process`` runs one on the stack's loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from hitlflow.settings import Settings
from hitlflow.stack import http_url
from services.common.logging import get_logger

log = get_logger(__name__)

#: Seconds open requests have to finish once the gateway is asked to stop.
GRACEFUL_STOP = 5
#: How often :meth:`GatewayServer.start` looks whether uvicorn listens yet.
STARTED_POLL = 0.02


class GatewayStartError(RuntimeError):
    """The HTTP gateway stopped before it listened (its own error is logged above)."""


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: whoever runs the loop stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GatewayServer:
    """The gateway's app (:func:`hitlflow.gateway.create_app`) served on ``sock``."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self.url = http_url(str(sock.getsockname()[0]), self.port)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Return once the gateway listens, connected to NATS; raises
        :class:`GatewayStartError` if it stops first, or
        :class:`~hitlflow.settings.SettingsError` for settings it cannot run with."""
        from hitlflow.gateway import create_app

        config = uvicorn.Config(create_app(self.settings), lifespan="on", log_config=None,
                                log_level="warning", access_log=False,
                                timeout_graceful_shutdown=GRACEFUL_STOP)
        server = self._server = _Server(config)
        task = self._task = asyncio.create_task(self._serve(server), name="hitlflow-gateway")
        while not server.started:
            done, _ = await asyncio.wait({task}, timeout=STARTED_POLL)
            if done:
                task.result()
                raise GatewayStartError(f"the HTTP gateway on {self.url} stopped before it "
                                        "listened")
        log.info("gateway_listening", url=self.url, docs=f"{self.url}/docs")

    async def _serve(self, server: _Server) -> None:
        try:
            await server.serve(sockets=[self.sock])
        except SystemExit:  # how uvicorn says that the app's startup failed (logged)
            raise GatewayStartError(
                f"the HTTP gateway on {self.url} did not start (its error is logged above: "
                "e.g. NATS not reachable with its credentials)") from None

    async def stop(self) -> None:
        """Stop listening, give open requests :data:`GRACEFUL_STOP` seconds, disconnect."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), GRACEFUL_STOP + 5)
            except TimeoutError:
                log.warning("gateway_stop_timed_out", url=self.url)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            except Exception as error:  # failed while starting: said then
                log.debug("gateway_stopped_with_error", error=repr(error))
        self.sock.close()
        self._server = self._task = None
