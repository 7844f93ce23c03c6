"""Audit records keep their hash once a thread's personal values are erased."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from contracts.events import EventEnvelope
from projections.chain import digest, digested, link, record
from projections.erasure import erased_payload

PAUSED = {"node": "gate", "interactions": [{
    "id": "r1", "thread_id": "t1", "node_name": "gate", "interaction_type": "approval",
    "prompt": "Approve salary 120000 for Ada?", "context": {"ssn": "123-45-6789"},
    "options": [], "timeout_seconds": 60.0, "on_timeout": None, "assignees": ["bob"],
    "response_schema": None, "batch_index": 0, "batch_size": 1, "schema_version": 1}]}


def _env(payload: dict[str, object]) -> EventEnvelope:
    return EventEnvelope(event_type="ThreadPaused", service="workflow", thread_id="t1",
                         event_id="e", aggregate_id="a", aggregate_version=4, position=9,
                         occurred_at=datetime(2026, 3, 1, tzinfo=UTC), payload=payload)


def test_personal_values_are_digests_in_the_record() -> None:
    text = record(_env(PAUSED))
    assert "123-45-6789" not in text and "Ada" not in text
    assert '"assignees":["bob"]' in text and '"node":"gate"' in text


def test_an_erased_payload_has_the_same_record_and_link() -> None:
    erased = erased_payload(PAUSED)
    assert "123-45-6789" not in str(erased)
    assert digested(erased) == digested(PAUSED)
    assert link("prev", _env(erased)) == link("prev", _env(PAUSED))


def test_a_changed_value_changes_the_link() -> None:
    changed = {**PAUSED, "interactions": [{**PAUSED["interactions"][0],  # type: ignore[index]
                                           "prompt": "Approve salary 1 for Ada?"}]}
    assert link("", _env(changed)) != link("", _env(PAUSED))


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3)))
def test_a_digest_is_the_sha256_of_the_canonical_json(value: Any) -> None:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    try:
        expected = hashlib.sha256(text.encode()).hexdigest()
    except UnicodeEncodeError:  # a lone surrogate: not text any edge lets in
        return
    if isinstance(value, dict) and value.get("erased") is True and "sha256" in value:
        return  # an erased value's kept digest
    assert digest(value) == expected
