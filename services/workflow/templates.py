"""Prompt templates: ``{field}`` is replaced by the thread state's value of ``field``.

Only plain names are substituted (no attribute or index access, no format specs), so a
template can never reach into objects. Unknown names are left as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def render(template: str, state: Mapping[str, Any]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        return _text(state[name]) if name in state else match.group(0)

    return _FIELD.sub(substitute, template)


def fields_of(template: str) -> list[str]:
    return _FIELD.findall(template)
