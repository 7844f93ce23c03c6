"""Shared base of every wire contract."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

#: Any JSON value (what crosses a boundary as data: state, response data, outputs).
JSON = Any


class Contract(BaseModel):
    """A frozen, strict, versioned wire model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
