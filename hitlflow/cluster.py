"""hitlflow at scale on one machine: a NATS cluster of nats-server processes from the wheel on
loopback ports (routes, JetStream, streams replicated on every node), PostgreSQL stores and
views, and several replicas of each service, each a ``hitlflow serve`` process with a home,
a log file and a /metrics port of its own (as on separate hosts).

The cluster test (tests/e2e/test_cluster.py) and its full-size run (``python -m bench.cluster``)
start one, kill a NATS node and a replica of each service under load, and bring them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hitlflow.stack import SERVICES, EmbeddedNats, ServiceProcess, free_ports
from services.common.logging import get_logger
from services.common.messaging import check_server, connect, ensure_streams

log = get_logger(__name__)


class NatsCluster:
    """``size`` nats-server processes routed into one cluster (``hitlflow``), JetStream on
    each; a node stopped and started again keeps its ports and data."""

    def __init__(self, root: Path, size: int = 3, host: str = "127.0.0.1") -> None:
        drawn = free_ports(2 * size, host)
        ports = list(zip(drawn[::2], drawn[1::2], strict=True))  # (client, cluster) per node
        routes = ",".join(f"nats://{host}:{cluster}" for _, cluster in ports)
        self.nodes = [
            EmbeddedNats(root / f"nats-{index + 1}", client, host, name=f"nats-{index + 1}",
                         extra_args=("--cluster_name", "hitlflow",
                                     "--cluster", f"nats://{host}:{cluster}",
                                     "--routes", routes))
            for index, (client, cluster) in enumerate(ports)]

    @property
    def url(self) -> str:
        """Every node's URL: clients fail over between them."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def kill(self, index: int) -> None:
        """SIGKILL one node (its data stays on disk)."""
        self.nodes[index].stop(kill=True)

    def restart(self, index: int) -> None:
        self.nodes[index].start()

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    async def create_streams(self, replicas: int, timeout: float = 60.0) -> None:
        """The hitlflow streams, replicated on ``replicas`` nodes, once the cluster has a
        JetStream leader (it takes a few seconds after the nodes start)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                nc = await connect(self.url, name="hitlflow-cluster", reconnect_attempts=3)
                try:
                    check_server(nc, self.url)
                    await ensure_streams(nc.jetstream(), replicas)
                    return
                finally:
                    await nc.close()
            except Exception as error:
                if loop.time() > deadline:
                    raise
                log.info("cluster_not_ready", error=repr(error))
                await asyncio.sleep(0.5)


@dataclass
class Replica:
    service: str
    index: int
    process: ServiceProcess
    metrics_port: int
    log: Path

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"


@dataclass
class ServiceReplicas:
    """``replicas`` ``hitlflow serve`` processes of each service against one NATS URL and one
    PostgreSQL schema; ``env`` holds the settings they share."""

    root: Path
    nats_url: str
    env: dict[str, str]
    replicas: int = 2
    services: tuple[str, ...] = SERVICES
    members: dict[str, list[Replica]] = field(default_factory=dict)

    def _replica(self, service: str, index: int, port: int) -> Replica:
        home = self.root / f"{service}-{index}"
        home.mkdir(parents=True, exist_ok=True)
        log_path = home / "service.log"
        env = {**self.env, "HITLFLOW_HOME": str(home), "HITLFLOW_METRICS_PORT": str(port)}
        return Replica(service, index, ServiceProcess(service, self.nats_url, env, log=log_path),
                       port, log_path)

    async def start(self, timeout: float = 120.0) -> None:
        ports = iter(free_ports(len(self.services) * self.replicas))
        self.members = {service: [self._replica(service, i, next(ports))
                                  for i in range(self.replicas)]
                        for service in self.services}
        await asyncio.gather(*(r.process.start(timeout) for r in self.all()))

    def all(self) -> list[Replica]:
        return [replica for members in self.members.values() for replica in members]

    def kill(self, service: str, index: int) -> None:
        """SIGKILL one replica: no goodbye, its unacknowledged messages go to the others."""
        process = self.members[service][index].process.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)

    async def restart(self, service: str, index: int, timeout: float = 120.0) -> None:
        replica = self.members[service][index]
        await replica.process.wait()
        await replica.process.start(timeout)

    async def stop(self) -> None:
        await asyncio.gather(*(r.process.stop() for r in self.all()), return_exceptions=True)


def unique_schema(prefix: str = "c") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
