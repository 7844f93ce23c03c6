"""Health of a service process: ``/metrics`` (Prometheus), ``/healthz`` (alive) and
``/readyz`` (ready for work), served on ``HITLFLOW_METRICS_PORT`` (0: not served).

Each service in the process registers a :class:`Health`. Its :class:`Monitor`, a task on the
service's event loop, refreshes every ``HITLFLOW_HEALTH_INTERVAL`` seconds what needs a question
to NATS or a store (the store's reachability, consumer lag, relay lag, backlog gauges) and beats
a heartbeat; the HTTP server, in a thread of its own, only reads what the monitor recorded and
a few flags (NATS connected, consumer tasks running), so it answers even while the loop is
busy, and never adds work to the message path.

- ``/healthz`` is 200 while every service's loop has beaten within ``stale_after`` seconds
  (a loop stuck that long is a process to restart), else 503;
- ``/readyz`` is 200 when every service is connected to NATS, reached its store at its last
  check, and has its consumers running, else 503; both answer JSON naming each check.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from services.common.logging import get_logger
from services.common.metrics import REGISTRY

log = get_logger(__name__)

Probe = Callable[[], Awaitable[None]]
#: A check read at the time of the request: (ok, detail).
LiveCheck = Callable[[], tuple[bool, str]]


@dataclass
class Check:
    ok: bool = False
    detail: str = "not checked yet"


class Health:
    """What one service says about itself to ``/healthz`` and ``/readyz``."""

    def __init__(self, service: str, *, stale_after: float = 60.0) -> None:
        self.service = service
        self.stale_after = stale_after
        self.beat_at = time.monotonic()
        self._checks: dict[str, Check] = {}
        self._live: dict[str, LiveCheck] = {}
        self._lock = threading.Lock()

    def beat(self) -> None:
        self.beat_at = time.monotonic()

    def set(self, name: str, ok: bool, detail: str = "ok") -> None:
        with self._lock:
            self._checks[name] = Check(ok, detail)

    def live(self, name: str, check: LiveCheck) -> None:
        self._live[name] = check

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self.beat_at
        if age > self.stale_after:
            return False, f"event loop silent for {age:.0f} s"
        return True, "ok"

    def report(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        with self._lock:
            checks = {name: (c.ok, c.detail) for name, c in self._checks.items()}
        for name, check in self._live.items():
            try:
                checks[name] = check()
            except Exception as error:
                checks[name] = (False, repr(error))
        checks["alive"] = self.alive()
        ready = all(ok for ok, _ in checks.values())
        return ready, {name: {"ok": ok, "detail": detail} for name, (ok, detail) in
                       sorted(checks.items())}


_SERVICES: dict[str, Health] = {}
_SERVICES_LOCK = threading.Lock()


def register(health: Health) -> None:
    with _SERVICES_LOCK:
        _SERVICES[health.service] = health


def unregister(health: Health) -> None:
    with _SERVICES_LOCK:
        if _SERVICES.get(health.service) is health:
            del _SERVICES[health.service]


def registered() -> list[Health]:
    with _SERVICES_LOCK:
        return list(_SERVICES.values())


class Monitor:
    """Runs ``probes`` every ``interval`` seconds on the service's loop and beats its health.
    A probe that fails is logged (at most once a minute each) and tried again next time."""

    def __init__(self, health: Health, interval: float, probes: Iterable[Probe] = ()) -> None:
        self.health = health
        self.interval = interval
        self.probes = list(probes)
        self._warned: dict[int, float] = {}

    def add(self, probe: Probe) -> None:
        self.probes.append(probe)

    async def run(self) -> None:
        while True:
            self.health.beat()
            for index, probe in enumerate(self.probes):
                try:
                    async with asyncio.timeout(max(self.interval, 5.0)):
                        await probe()
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    now = time.monotonic()
                    if now - self._warned.get(index, -1e9) > 60:
                        self._warned[index] = now
                        log.warning("health_probe_failed", service=self.health.service,
                                    probe=getattr(probe, "__name__", str(index)),
                                    error=repr(error))
            self.health.beat()
            await asyncio.sleep(self.interval)


def _respond(start_response: Any, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


def wsgi_app() -> Callable[..., list[bytes]]:
    metrics = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return list(metrics(environ, start_response))
        services = registered()
        if path == "/healthz":
            states = {h.service: h.alive() for h in services}
            ok = all(alive for alive, _ in states.values())
            return _respond(start_response, "200 OK" if ok else "503 Service Unavailable", {
                "status": "ok" if ok else "failing",
                "services": {name: {"ok": alive, "detail": detail}
                             for name, (alive, detail) in states.items()}})
        if path == "/readyz":
            reports = {h.service: h.report() for h in services}
            ok = bool(reports) and all(ready for ready, _ in reports.values())
            return _respond(start_response, "200 OK" if ok else "503 Service Unavailable", {
                "status": "ready" if ok else "not ready",
                "services": {name: {"ready": ready, "checks": checks}
                             for name, (ready, checks) in reports.items()}})
        return _respond(start_response, "404 Not Found",
                        {"error": f"unknown path {path!r}; expected /metrics, /healthz or "
                                  "/readyz"})

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` of this process, in a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self._server = make_server(host, port, wsgi_app(), server_class=_Server,
                                   handler_class=_QuietHandler)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="hitlflow-health")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health_endpoint", url=self.url, paths="/metrics /healthz /readyz")
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_health(host: str, port: int) -> HealthServer | None:
    """Start the endpoint on ``port`` (0: none)."""
    if not port:
        return None
    return HealthServer(host, port).start()
