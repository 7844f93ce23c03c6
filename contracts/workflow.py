"""The workflow definition as it travels inside a StartThread command.

A thread runs on exactly the definition it started with: the workflow service stores it by
digest, so a later change to the CSV file never changes a running thread.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field

from contracts.base import Contract


class NodeSpec(Contract):
    """One CSV row."""

    name: str = Field(min_length=1)
    agent_type: str = Field(min_length=1)
    next_on_success: str | None = None
    next_on_failure: str | None = None
    prompt: str = ""
    input_fields: tuple[str, ...] = ()
    output_field: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    #: 1-based line of the CSV file the node came from (for error messages).
    row: int = 0


class WorkflowSpec(Contract):
    """A graph: its nodes in file order; the first node is where a thread starts."""

    graph_name: str = Field(min_length=1)
    source: str = ""
    nodes: tuple[NodeSpec, ...] = Field(min_length=1)

    @property
    def digest(self) -> str:
        """Content digest of the graph (source path and row numbers excluded)."""
        body = [n.model_dump(exclude={"row", "schema_version"}) for n in self.nodes]
        canonical = json.dumps(
            {"graph_name": self.graph_name, "nodes": body}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def start(self) -> str:
        return self.nodes[0].name
