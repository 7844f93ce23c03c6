"""The AsyncAPI document: generated from the subject table, valid for the AsyncAPI parser, and
the table equal to what the services really subscribe to (so the document cannot drift from
the handlers)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock, Mock

import pytest
from faststream.nats import NatsBroker

from contracts import subjects
from contracts.catalog import CHANNELS, EVENT_SERVICES, Channel
from contracts.commands import ResumeThread
from hitlflow.asyncapi import channel_id, nats_pattern, render_document, render_html
from hitlflow.settings import Settings
from projections.main import ProjectionsRuntime
from services.common.erasure import subscribe_erase
from services.interaction import handlers as interaction_handlers
from services.timeout import handlers as timeout_handlers
from services.workflow import handlers as workflow_handlers
from tests.conftest import ROOT

NPM_TOOLS = ROOT / ".npm-tools"
#: Channels a service receives on (it must subscribe to them); the others it sends on.
RECEIVED = ("command", "query", "control")


def overlaps(a: str, b: str) -> bool:
    """Could one subject match both filters (``*`` one token, ``>`` the rest)?"""
    left, right = a.split("."), b.split(".")
    for index, (x, y) in enumerate(zip(left, right, strict=False)):
        if ">" in (x, y):
            rest_left, rest_right = len(left) - index, len(right) - index
            return rest_left >= 1 and rest_right >= 1
        if x != y and "*" not in (x, y):
            return False
    return len(left) == len(right)


def resume_channel() -> str:
    """The id of the channel that takes ResumeThread (its subject comes from the table)."""
    return channel_id(next(c for c in CHANNELS if c.message is ResumeThread))


def received(channel: Channel) -> bool:
    return channel.kind in RECEIVED or (channel.kind == "internal"
                                        and channel.subject.startswith("hitl.sched.fire"))


def subscriptions(tmp_path: Path) -> dict[str, list[tuple[str, str]]]:
    """Every subject filter each service subscribes to, with its stream ("" for core NATS),
    as the services' own code builds them."""
    found: dict[str, list[tuple[str, str]]] = {}

    def consumers(service: str, subs: list[Any]) -> None:
        for sub in subs:
            filters = [sub.subject] if isinstance(sub.subject, str) else list(sub.subject)
            found.setdefault(service, []).extend((f, sub.stream) for f in filters)

    consumers("workflow", workflow_handlers.subscriptions(Mock(), Mock()))
    consumers("interaction", interaction_handlers.subscriptions(Mock(), Mock()))
    consumers("interaction", interaction_handlers.notification_subscriptions(Mock(), Mock()))
    consumers("timeout", timeout_handlers.subscriptions(Mock(), Mock()))
    nc = Mock(subscribe=AsyncMock(), jetstream=Mock())
    asyncio.run(timeout_handlers.serve_control(nc, Mock(), 1.0))
    found["timeout"] += [(call.args[0], "") for call in nc.subscribe.call_args_list]
    for service in ("workflow", "interaction", "timeout"):  # what every ServiceRuntime adds
        nc = Mock(subscribe=AsyncMock())
        asyncio.run(subscribe_erase(nc, service, Mock()))
        found[service] += [(call.args[0], "") for call in nc.subscribe.call_args_list]
    runtime = ProjectionsRuntime(Settings(home=tmp_path))
    try:
        broker = NatsBroker()
        runtime._register(broker)
        found["projections"] = [(s.subject.broker_address, "") for s in broker.subscribers]
        consumers("projections", [runtime.events_subscription()])
    finally:
        runtime.db.close()
    return found


def test_every_subscription_is_a_channel_of_the_table(tmp_path: Path) -> None:
    for service, subs in subscriptions(tmp_path).items():
        for subject, stream in subs:
            if stream == subjects.EVENTS_STREAM:
                [events] = [c for c in CHANNELS if c.kind == "event"]
                assert overlaps(subject, nats_pattern(events.subject)), subject
                parts = subject.split(".")
                if len(parts) > 4 and parts[3] not in ("*", ">"):  # one event type: published?
                    assert EVENT_SERVICES[parts[3]] == parts[2], subject
                continue
            handled = [c for c in CHANNELS if received(c) and service in c.service.split(", ")
                       and overlaps(subject, nats_pattern(c.subject))]
            assert handled, f"{service} subscribes to {subject}: not in contracts/catalog.py"
            assert all((c.stream or "") == stream for c in handled), (subject, stream)


def test_every_channel_a_service_receives_on_is_subscribed(tmp_path: Path) -> None:
    subs = subscriptions(tmp_path)
    for channel in CHANNELS:
        if not received(channel):
            continue
        for service in channel.service.split(", "):
            mine = [s for s, _ in subs[service]]
            assert any(overlaps(s, nats_pattern(channel.subject)) for s in mine), (
                f"{channel.subject}: the table says {service} handles it, but it "
                "subscribes to no such subject")


def test_every_subject_the_services_send_on_is_a_channel() -> None:
    sent = [subjects.event_subject("workflow", "ThreadStarted", "t-1"),
            subjects.resume_subject("erp", "t-1"),
            subjects.notify_subject("t-1"), subjects.dlq_subject("workflow-start"),
            subjects.schedule_subject("r-1", "t-1"), subjects.schedule_fire_subject("t-1"),
            subjects.timeout_subject("t-1")]
    for subject in sent:
        assert any(overlaps(subject, nats_pattern(c.subject)) for c in CHANNELS), subject


def test_the_document_has_every_channel_with_its_models() -> None:
    doc = render_document()
    for channel in CHANNELS:
        entry = doc["channels"][channel_id(channel)]
        assert entry["address"] == channel.subject
        if channel.message is not None and channel.kind != "event":
            assert channel.message.__name__ in entry["messages"]
            assert channel.message.__name__ in doc["components"]["schemas"]
    resume = doc["operations"][f"receive-{resume_channel()}"]
    assert resume["reply"]["address"]["location"] == "$message.header#/Hitl-Reply-To"
    assert "ThreadStarted" in doc["channels"]["hitl-evt-service-event_type-thread_id"][
        "messages"]
    page = render_html()
    resume_address = next(c.subject for c in CHANNELS if c.message is ResumeThread)
    assert resume_address in page and "<script" not in page


def test_the_document_is_valid_asyncapi(tmp_path: Path) -> None:
    if shutil.which("node") is None or not (NPM_TOOLS / "node_modules").is_dir():
        pytest.skip("needs node and the AsyncAPI parser from npm: run 'make npm-tools'")
    path = tmp_path / "asyncapi.json"
    path.write_text(json.dumps(render_document()))
    done = subprocess.run(["node", str(ROOT / "tests" / "asyncapi" / "validate.mjs"), str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NPM_TOOLS": str(NPM_TOOLS)}, check=False)
    report = json.loads(done.stdout)
    errors = [d for d in report["diagnostics"] if d["severity"] in ("error", "warning")]
    assert done.returncode == 0 and report["parsed"] and not errors, done.stdout + done.stderr

    broken = render_document()
    broken["operations"][f"receive-{resume_channel()}"]["action"] = "publish"
    path.write_text(json.dumps(broken))
    refused = subprocess.run(["node", str(ROOT / "tests" / "asyncapi" / "validate.mjs"),
                              str(path)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "NPM_TOOLS": str(NPM_TOOLS)}, check=False)
    assert refused.returncode == 1  # the validator does catch a broken document
