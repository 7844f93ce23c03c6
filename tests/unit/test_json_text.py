"""The views' and the audit chain's JSON encoders, made once, write what ``json.dumps`` with the
same options writes: what the views store and what the chain hashes do not change."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from projections.chain import canonical
from projections.db import dumps
from projections.event import payload_json

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(values)
def test_the_same_text_as_json_dumps(value: Any) -> None:
    assert payload_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                                             default=str)
    assert canonical(value) == dumps(value) == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def test_values_json_cannot_hold_are_written_as_text() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert payload_json({"at": moment}) == json.dumps({"at": moment}, separators=(",", ":"),
                                                      default=str)
