"""Prompt and output templates: ``{field}`` is replaced by the thread state's value of ``field``.

The grammar is deliberately tiny:

- ``{field}``: the value of ``field`` (text as it is, anything else as JSON);
- ``{field|default}``: the same, or the text ``default`` when the state has no ``field``
  (everything after ``|`` up to ``}``, taken literally; it may be empty but may not hold
  ``{`` or ``}``);
- a field name is a plain identifier (letters, digits, ``_``), so attribute or index access,
  format specs and expressions are not part of it, and a template can never reach into objects;
- any other brace is text: ``{"amount": 10}`` in a prompt stays as written.

A template never leaves a placeholder in its output: a field the state does not have, written
without a default, renders as the marker ``(no field)`` (:func:`missing_marker`), and
:func:`fill` says which fields it had to mark, so the caller can record them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^{}]*))?\}")


@dataclass(frozen=True)
class Placeholder:
    """One ``{name}`` or ``{name|default}`` of a template."""

    name: str
    #: The text used when the state has no ``name``; None when the template gives none.
    default: str | None = None


@dataclass(frozen=True)
class Rendered:
    """A filled template and the fields it had to show as the marker (in order, once each)."""

    text: str
    missing: tuple[str, ...] = ()


def missing_marker(name: str) -> str:
    """What a field the state lacks, written without a default, renders as."""
    return f"(no {name})"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def fill(template: str, state: Mapping[str, Any]) -> Rendered:
    """``template`` filled from ``state``, with the names of the fields shown as the marker."""
    missing: dict[str, None] = {}

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in state:
            return _text(state[name])
        if default is not None:
            return default
        missing[name] = None
        return missing_marker(name)

    return Rendered(_FIELD.sub(substitute, template), tuple(missing))


def render(template: str, state: Mapping[str, Any]) -> str:
    """``template`` filled from ``state`` (see :func:`fill`)."""
    return fill(template, state).text


def placeholders(template: str) -> list[Placeholder]:
    """Every placeholder of ``template``, in order (a field used twice appears twice)."""
    return [Placeholder(m.group(1), m.group(2)) for m in _FIELD.finditer(template)]


def fields_of(template: str) -> list[str]:
    """The plain field names ``template`` uses, in order (defaults left out)."""
    return [p.name for p in placeholders(template)]
