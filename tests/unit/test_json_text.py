"""JSON text read and written quickly, the same as the json module's: the encoders made once
(``contracts/jsontext.py``'s, and through it the views', the audit chain's and what a request
shows) write what ``json.dumps`` with the same options writes, so what the views store and
what the chain hashes do not change; ``loads`` reads what ``json.loads`` reads, and the
stores' transcoder decodes what eventsourcing's decodes."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import shown_digest
from contracts.jsontext import encoder, loads
from projections.chain import canonical
from projections.db import dumps
from projections.event import payload_json
from services.common.transcoding import QuickJSONTranscoder

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
           | st.integers(min_value=2**63 - 5, max_value=2**64 + 5).map(lambda n: n * -1)
           | st.integers(min_value=2**63 - 5, max_value=2**64 + 5))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)


@given(values)
def test_the_same_text_as_json_dumps(value: Any) -> None:
    assert payload_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                                             default=str)
    assert canonical(value) == dumps(value) == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@given(prompt=st.text(), context=st.dictionaries(st.text(), values, max_size=4),
       options=st.lists(st.text(), max_size=3))
def test_what_a_request_shows_has_the_same_digest(prompt: str, context: dict[str, Any],
                                                 options: list[str]) -> None:
    text = json.dumps({"context": context, "options": options, "prompt": prompt},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        expected = hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError:  # a lone surrogate: not text any edge lets in
        return
    assert shown_digest(prompt, context, options) == expected


def test_values_json_cannot_hold_are_written_as_text() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert payload_json({"at": moment}) == json.dumps({"at": moment}, separators=(",", ":"),
                                                      default=str)


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


@settings(max_examples=300)
@given(value=values | st.text(), sort_keys=st.booleans())
def test_the_encoder_writes_what_json_dumps_writes(value: Any, sort_keys: bool) -> None:
    for default in (str, None):
        assert encoder(sort_keys=sort_keys, default=default)(value) == json.dumps(
            value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
            default=default)


def test_the_encoder_refuses_what_json_cannot_hold_unless_given_a_default() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    assert encoder(sort_keys=True)({"at": when}) == '{"at":"2026-01-02 00:00:00+00:00"}'
    with pytest.raises(TypeError, match="datetime is not JSON serializable"):
        encoder(sort_keys=True, default=None)({"at": when})


def _transcoders() -> tuple[JSONTranscoder, QuickJSONTranscoder]:
    plain, quick = JSONTranscoder(), QuickJSONTranscoder()
    for transcoder in (plain, quick):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    return plain, quick


PLAIN, QUICK = _transcoders()


def decoded(transcoder: JSONTranscoder, data: bytes) -> str:
    """What ``transcoder`` makes of ``data``, as text: the value's repr (NaN is not equal to
    itself, and a Decimal equals a float of its value), or the error it raises."""
    try:
        return repr(transcoder.decode(data))
    except Exception as error:
        return f"raises {type(error).__name__}: {error}"


#: What eventsourcing encodes as {"_type_": …, "_data_": …}, and things that look like it.
encoded = (st.datetimes(timezones=st.just(UTC)) | st.uuids()
           | st.decimals(allow_nan=False) | st.just("_type_")
           | st.fixed_dictionaries({"_type_": st.sampled_from(["uuid_hex", "decimal_str"]),
                                    "_data_": st.sampled_from(
                                        ["1", "00000000000000000000000000000001"])}))
states = st.dictionaries(st.text(max_size=8) | st.just("_type_"),
                         values | encoded | st.lists(encoded, max_size=2)
                         | st.dictionaries(st.text(max_size=3), encoded, max_size=2),
                         max_size=6)


@given(states)
def test_the_stores_transcoder_decodes_what_eventsourcings_decodes(state: dict[str, Any]
                                                                    ) -> None:
    data = PLAIN.encode(state)
    assert QUICK.encode(state) == data  # what is written does not change
    assert decoded(QUICK, data) == decoded(PLAIN, data)


@pytest.mark.parametrize("text", [
    b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-12-03T10:00:00+00:00"},"a":1}',
    b'{"a":{"b":{"_type_":"uuid_hex","_data_":"00000000000000000000000000000001"}}}',
    b'{"_type_":"decimal_str","_data_":"1.5"}',
    b'{"a":"_type_","b":{"_type_":"decimal_str","_data_":"2"}}',
    b'{"a":{"_type_":"decimal_str","_data_":"2","c":3}}',
    b'{"a":12345678901234567890123,"b":{"_type_":"decimal_str","_data_":"2"}}',
])
def test_the_stores_transcoder_on_each_way_through_it(text: bytes) -> None:
    assert decoded(QUICK, text) == decoded(PLAIN, text)


def test_the_stores_transcoder_refuses_what_eventsourcing_refuses() -> None:
    unknown = b'{"a":{"_type_":"no_such","_data_":"x"}}'
    for transcoder in (PLAIN, QUICK):
        with pytest.raises(TranscodingNotRegisteredError):
            transcoder.decode(unknown)
        with pytest.raises(ValueError):
            transcoder.decode(b'{"a":')
