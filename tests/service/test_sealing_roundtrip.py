"""A thread's personal values come back from a store exactly as they were sealed, and as
their digests once the thread is erased: whatever JSON they hold (NaN, integers past 64 bits,
values inside a paused thread's requests). (A lone surrogate never gets this far: the edges
refuse text that is not valid Unicode.)"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hitlflow.settings import Settings
from projections.chain import PLAIN, digest
from services.common import sealing
from services.common.sealing import SEAL, SealingMapper, erased
from services.workflow.application import WorkflowService


class Recorded:
    """A domain event as the mapper sees one: its state is its ``__dict__``."""

    originator_id: uuid.UUID


text = st.characters(exclude_categories=["Cs"])
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(text, max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(text, max_size=4), inner, max_size=3), max_leaves=8)
personal = st.sampled_from(["prompt", "context", "inputs", "output", "data", "reason"])
plain = st.sampled_from(sorted(PLAIN - {"thread_id", "timestamp"}))
requests = st.lists(st.dictionaries(personal | plain, values, max_size=4), max_size=2)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkflowService]:
    home: Path = tmp_path_factory.mktemp("sealing")
    app = WorkflowService(Settings(home=home).store_env("workflow"))
    yield app
    app.close()


def _event(thread_id: str, fields: dict[str, Any]) -> Recorded:
    event = Recorded()
    event.__dict__.update(originator_id=uuid.uuid4(), originator_version=1,
                          thread_id=thread_id, **fields)
    return event


def _text(state: dict[str, Any]) -> str:
    """Comparable text of a state (NaN equals NaN here)."""
    return json.dumps({k: v for k, v in state.items() if k != "originator_id"}, sort_keys=True)


def _digests(value: Any) -> Any:
    """What an erased thread reads back: each personal value as its digest."""
    return erased(digest(value))


@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(personal | plain, values, max_size=5), nested=requests)
def test_sealed_values_come_back_as_they_were(workflow: WorkflowService,
                                             fields: dict[str, Any],
                                             nested: list[dict[str, Any]]) -> None:
    mapper = workflow.mapper
    assert isinstance(mapper, SealingMapper) and mapper.keys is not None
    thread_id = f"t-{uuid.uuid4()}"
    event = _event(thread_id, {**fields, "interactions": nested})
    before = _text(event.__dict__)
    stored = mapper.to_stored_event(event)
    back = mapper.to_domain_event(stored)
    assert SEAL not in back.__dict__
    assert _text(back.__dict__) == before

    # erased: every personal value reads as its digest, every plain one as it was
    assert mapper.keys.erase(thread_id)
    gone = mapper.to_domain_event(stored).__dict__
    for name, value in fields.items():
        expected = value if name in PLAIN or value is None else _digests(value)
        assert _text({name: gone[name]}) == _text({name: expected})
    for item, was in zip(gone["interactions"], nested, strict=True):
        for name, value in was.items():
            expected = value if name in PLAIN or value is None else _digests(value)
            assert _text({name: item[name]}) == _text({name: expected})


def test_values_only_json_reads_come_back(workflow: WorkflowService) -> None:
    """NaN and an integer past 64 bits: the quick reader (orjson) refuses each, and the values
    still come back."""
    mapper = workflow.mapper
    for context in ({"n": 2**80}, {"x": math.nan}):
        event = _event(f"t-{uuid.uuid4()}", {"prompt": "p", "context": context})
        back = mapper.to_domain_event(mapper.to_stored_event(event))
        assert back.prompt == "p" and _text(back.context) == _text(context)


def test_a_key_s_cipher_is_made_once_and_forgotten_when_its_thread_is_erased(
        workflow: WorkflowService) -> None:
    keys = workflow.mapper.keys
    assert keys is not None
    thread_id = f"t-{uuid.uuid4()}"
    workflow.mapper.to_stored_event(_event(thread_id, {"prompt": "p"}))
    key = keys.key(thread_id, create=False)
    assert key is not None
    held = keys.cipher(key)
    assert keys.cipher(key) is held  # every event of the thread: the same cipher
    assert keys.erase(thread_id)
    assert keys.key(thread_id, create=False) is None
    assert keys.cipher(key) is not held  # the old one was dropped with the key


def test_only_the_ciphers_made_last_are_held(workflow: WorkflowService,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A cipher holds kilobytes of OpenSSL state: as many as the data keys held in memory
    made the services' memory grow by a kilobyte per paused thread."""
    monkeypatch.setattr(sealing, "CIPHERS_HELD", 8)
    keys = workflow.mapper.keys
    assert keys is not None
    threads = [f"t-{uuid.uuid4()}" for _ in range(30)]
    for thread_id in threads:
        back = workflow.mapper.to_domain_event(workflow.mapper.to_stored_event(
            _event(thread_id, {"prompt": thread_id})))
        assert back.prompt == thread_id
    assert len(keys._ciphers) == 8
    first = keys.key(threads[0], create=False)
    recent = keys.key(threads[-1], create=False)
    assert first is not None and recent is not None
    held = keys.cipher(recent)
    assert keys.cipher(recent) is held  # the last thread's, still held
    assert first not in keys._ciphers  # the first's went long ago (and comes back if asked)
    assert len(keys._ciphers) == 8
    old = workflow.mapper.to_domain_event(workflow.mapper.to_stored_event(
        _event(threads[0], {"prompt": "again"})))
    assert old.prompt == "again" and first in keys._ciphers
