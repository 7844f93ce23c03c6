"""Reading and writing JSON text quickly without changing what it says.

:func:`encoder` writes what ``json.dumps`` writes with the options given, without the
encoder ``json.dumps`` (and ``JSONEncoder.encode``) builds on every call.

orjson reads JSON several times faster than the json module, but not always the same way: it
refuses NaN, Infinity and lone surrogates (which ``json.dumps`` writes and ``json.loads``
reads), and it reads an integer beyond 64 bits as a float (``2**70`` would come back as
``1.1805916207174113e+21``). :func:`loads` gives exactly what ``json.loads`` gives: text that
holds a run of 19 digits or more (where such an integer could be) and text orjson refuses go
to the json module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

import orjson

#: Every digit as "9": a run of 19 digits becomes ``_LONG_RUN`` (a translation and a substring
#: search cost a fraction of a regular expression's search, which costs more than json.loads).
_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
_LONG_RUN = b"9" * 19


class NotQuick(ValueError):
    """JSON text orjson may read otherwise than the json module (or not at all)."""


def quick_loads(raw: bytes) -> Any:
    """UTF-8 JSON text read by orjson, which then reads it as ``json.loads`` does; raises
    :class:`NotQuick` for text it might read otherwise, or refuses (the caller reads that
    the slow way)."""
    if _LONG_RUN in raw.translate(_DIGITS_AS_NINES):
        raise NotQuick("a run of 19 digits: an integer orjson would read as a float")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise NotQuick(str(error)) from None


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, read by orjson where orjson reads the same."""
    try:
        return quick_loads(text.encode(errors="surrogatepass") if isinstance(text, str)
                           else text)
    except NotQuick:
        return json.loads(text)


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encoder(*, sort_keys: bool, default: Callable[[Any], Any] | None = str
            ) -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
    default=default)``, the same text, from one C encoder made here (without the check for
    circular values: JSON read from anywhere holds none). ``default=None`` refuses what JSON
    cannot hold, as ``json.dumps`` does without one."""
    slow = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
                            default=default).encode
    if c_make_encoder is None:  # a Python without the json accelerator
        return slow
    fast = c_make_encoder(None, default or _refuse, encode_basestring, None, ":", ",",
                          sort_keys, False, True)

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return str(encode_basestring(value))
        return "".join(fast(value, 0))

    return encode
