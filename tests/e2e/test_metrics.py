"""/metrics, /healthz and /readyz of the services, scraped over HTTP while they do real work:
the figures move with it (commands by outcome, resume latency, consumers, relay, backlog,
deadlines, quarantine)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts import subjects
from hitlflow.settings import Settings
from hitlflow.stack import free_port
from hitlflow.testing import HitlTestStack
from tests.conftest import EXAMPLE_AGENTS
from tests.helpers import wait_for
from tests.service.test_timeouts import approval_flow


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[tuple[HitlTestStack, str]]:
    port = free_port()
    settings = Settings(home=tmp_path, metrics_port=port, health_interval=0.2)
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS], settings=settings) as stack:
        yield stack, f"http://127.0.0.1:{port}"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(f"{base}/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(figures: dict[Any, float], name: str, **labels: str) -> float:
    return figures.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_endpoints_say_ready_and_name_each_check(
        observed: tuple[HitlTestStack, str]) -> None:
    _, base = observed
    assert json.loads(get(f"{base}/healthz")[1])["status"] == "ok"
    _, body = wait_for(lambda: (r := get(f"{base}/readyz"))[0] == 200 and r,
                            what="/readyz to say ready")
    report = json.loads(body)["services"]
    assert set(report) == {"workflow", "interaction", "timeout", "projections"}
    for name, service in report.items():
        assert service["ready"], name
        assert {"nats", "store", "consumers", "alive"} <= set(service["checks"]), name
    assert get(f"{base}/nothing")[0] == 404


def test_the_figures_move_with_real_work(observed: tuple[HitlTestStack, str]) -> None:
    hitl, base = observed
    before = scrape(base)
    thread, late = f"m-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
    hitl.assert_paused(hitl.start(approval_flow({}), {"request": "r"}, thread_id=thread))
    wait_for(lambda: value(scrape(base), "hitlflow_pending_requests") >= 1,
             what="the backlog gauge to count the open request")
    assert not hitl.resume(thread, "choose").ok  # refused: invalid_response
    assert hitl.resume(thread, "approve").ok
    # a deadline that passes: fired once, by its timer or the sweep
    hitl.assert_paused(hitl.start(approval_flow({"timeout_seconds": 1, "on_timeout": "fail"}),
                                  {"request": "r"}, thread_id=late))
    wait_for(lambda: value(scrape(base), "hitlflow_deadlines_pending") >= 1, timeout=5,
             what="the deadline to be counted as pending")
    wait_for(lambda: (v := hitl.status(late)) is not None and v.status == "timed_out",
             timeout=30, what="the deadline to fire")
    # a message no retry can help
    poison = subjects.cancel_subject(hitl.client.principal, late)
    hitl.call(hitl.client.nc.jetstream().publish(poison, b"not json"))

    def moved() -> dict[Any, float] | None:
        now = scrape(base)
        d = {key: now.get(key, 0.0) - before.get(key, 0.0) for key in now}
        done = (value(d, "hitlflow_commands_total", command="start", outcome="ok") >= 2
                and value(d, "hitlflow_commands_total", command="resume", outcome="ok") >= 1
                and value(d, "hitlflow_commands_total", command="resume",
                          outcome="invalid_response") >= 1
                and value(d, "hitlflow_commands_total", command="cancel",
                          outcome="invalid_command") >= 1
                and value(d, "hitlflow_quarantined_total", source="workflow-cancel") >= 1
                and sum(value(d, "hitlflow_deadlines_fired_total", by=by)
                        for by in ("schedule", "sweep")) == 1
                and value(d, "hitlflow_relay_published_total", service="workflow") >= 10
                and value(d, "hitlflow_consumer_delivered_total",
                          consumer="interaction-resume") >= 2
                and value(d, "hitlflow_consumer_delivered_total", consumer="projections") >= 10
                and value(d, "hitlflow_resume_latency_seconds_count") >= 2)
        return d if done else None

    delta = wait_for(moved, timeout=15, what="the counters to show the work")
    assert value(delta, "hitlflow_resume_latency_seconds_sum") > 0
    now = scrape(base)
    wait_for(lambda: value(scrape(base), "hitlflow_pending_requests") == 0,
             what="the backlog to empty")
    # counted every health interval: one count may fall between the deadline's due time and
    # its firing
    wait_for(lambda: value(scrape(base), "hitlflow_deadlines_due") == 0,
             what="no deadline to be past due and not fired")
    for consumer in ("workflow-start", "interaction-resume", "timeout-deadlines", "projections"):
        assert ("hitlflow_consumer_pending", (("consumer", consumer),)) in now, consumer
    assert value(now, "hitlflow_relay_lag", service="workflow") >= 0
    assert value(now, "hitlflow_projections_leader") == 1
