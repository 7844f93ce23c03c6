"""A proven cluster, reduced to fit the suite: 3 nats-server nodes from the wheel on loopback
ports (streams at R3), PostgreSQL stores and views, two replicas of each service as
``hitlflow serve`` processes. Under steady load one NATS node and one replica of each service
are killed and brought back; every thread ends exactly once, no answer is lost or doubled, no
deadline is missed or fired twice (checked in the event stores), and every replica is ready
again. The full-size run and its figures: ``python -m bench.cluster`` (bench/README.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.cluster import Plan, trial
from tests.conftest import POSTGRES_DSN

pytestmark = pytest.mark.postgres


@pytest.mark.timeout(300)
def test_the_cluster_survives_a_node_and_a_replica_of_each_service_killed(
        tmp_path: Path) -> None:
    if not POSTGRES_DSN:
        pytest.skip("the cluster runs on PostgreSQL: set HITLFLOW_TEST_POSTGRES_DSN")
    plan = Plan(threads=60, in_flight=12, timed_every=4, deadline=4.0, replicas=2,
                faults=True, fault_after=2.0, down_for=6.0, limit=180.0)
    result = asyncio.run(trial(plan, tmp_path, POSTGRES_DSN))
    assert not result.unfinished, result
    assert not result.problems, result.problems
    assert result.completed == 45 and result.timed_out == 15
    assert set(result.readyz.values()) == {200}, result.readyz  # every replica ready again
    assert result.log_lines_with_correlation > 0
    print(result)
