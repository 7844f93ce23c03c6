"""services/common/jsontext.py reads every JSON text as the json module does."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.jsontext import loads

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
           | st.integers(min_value=2**63 - 5, max_value=2**64 + 5).map(lambda n: n * -1)
           | st.integers(min_value=2**63 - 5, max_value=2**64 + 5))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same types all through (1 == 1.0 == True is not enough), NaN included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=400)
@given(value=values, ascii_only=st.booleans(), as_bytes=st.booleans())
def test_reads_what_json_reads(value: Any, ascii_only: bool, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    if not ascii_only and any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return  # not UTF-8 text: nothing writes it (json.dumps escapes it by default)
    given_text: str | bytes = text.encode() if as_bytes else text
    assert same(loads(given_text), json.loads(text))


def test_the_cases_orjson_reads_differently() -> None:
    for text in ("[1180591620717411303424]", "-9999999999999999999", "[NaN, Infinity]",
                 '"\\ud800"', '{"n": 18446744073709551616}'):
        assert same(loads(text), json.loads(text)), text
        assert same(loads(text.encode()), json.loads(text)), text
