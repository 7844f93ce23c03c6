"""Loading and checking CSV workflows (the guide's columns).

Every problem names the file, the row (line of the CSV, header = 1) and the column, so an
author can go straight to it. Loading refuses a graph with any error; nothing is guessed.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.events import INTERACTION_TYPES
from contracts.workflow import NodeSpec, WorkflowSpec
from services.workflow.agents import INTERACTION_AGENT_TYPES, AgentRegistry

REQUIRED_COLUMNS = ("graph_name", "node_name", "agent_type")
KNOWN_COLUMNS = (
    "graph_name",
    "node_name",
    "agent_type",
    "next_on_success",
    "next_on_failure",
    "prompt",
    "input_fields",
    "output_field",
    "context",
    "description",
)
_FIELD_SPLIT = re.compile(r"[|,]")


@dataclass(frozen=True)
class Problem:
    file: str
    row: int
    column: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.row}" if self.row else self.file
        column = f" [{self.column}]" if self.column else ""
        return f"{where}{column}: {self.message}"


class WorkflowError(ValueError):
    """A CSV workflow that cannot be run; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def interaction_type_of(node: NodeSpec) -> str | None:
    """The interaction type a node asks for, or None when it is not an interaction node."""
    if node.agent_type not in INTERACTION_AGENT_TYPES:
        return None
    declared = node.context.get("interaction_type")
    implied = INTERACTION_AGENT_TYPES[node.agent_type]
    return str(declared) if declared else implied


def split_target(target: str) -> tuple[str, str | None]:
    """``file.csv::Graph`` → (file, graph); a bare path has no graph name."""
    if "::" in target:
        path, graph = target.rsplit("::", 1)
        return path, graph or None
    return target, None


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise WorkflowError(
            [Problem(str(path), 0, "", f"cannot read file: {error.strerror}")]
        ) from error
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows: list[tuple[int, dict[str, str]]] = []
    for record in reader:
        cleaned = {k: (v or "").strip() for k, v in record.items() if k is not None}
        if any(cleaned.values()):
            rows.append((reader.line_num, cleaned))
    return header, rows


def graph_names(path: Path) -> list[str]:
    _, rows = read_rows(path)
    seen: dict[str, None] = {}
    for _, row in rows:
        seen.setdefault(row.get("graph_name", ""), None)
    return [name for name in seen if name]


def load_workflow(
    target: str | Path, graph: str | None = None, registry: AgentRegistry | None = None
) -> WorkflowSpec:
    """Load and check one graph of a CSV file; raises :class:`WorkflowError`."""
    path_text, graph_from_target = split_target(str(target))
    path = Path(path_text)
    file = str(path)
    header, rows = read_rows(path)
    problems = [
        Problem(file, 1, column, f"missing required column {column!r}")
        for column in REQUIRED_COLUMNS
        if column not in header
    ]
    if problems:
        raise WorkflowError(problems)

    names = [n for n in dict.fromkeys(r.get("graph_name", "") for _, r in rows) if n]
    wanted = graph or graph_from_target
    if wanted is None:
        if len(names) != 1:
            raise WorkflowError([Problem(file, 0, "graph_name",
                f"file holds graphs {names}: name one as {file}::GRAPH")])
        wanted = names[0]
    selected = [(line, r) for line, r in rows if r.get("graph_name") == wanted]
    if not selected:
        raise WorkflowError([Problem(file, 0, "graph_name",
            f"no graph named {wanted!r} (graphs in file: {', '.join(names) or 'none'})")])

    nodes: list[NodeSpec] = []
    seen: dict[str, int] = {}
    for line, row in selected:
        node, row_problems = _node_from_row(file, line, row, registry)
        problems.extend(row_problems)
        if node is None:
            continue
        if node.name in seen:
            problems.append(Problem(file, line, "node_name",
                f"duplicate node {node.name!r} (first defined on row {seen[node.name]})"))
            continue
        seen[node.name] = line
        nodes.append(node)

    for node in nodes:
        for column in ("next_on_success", "next_on_failure"):
            target_node = getattr(node, column)
            if target_node and target_node not in seen:
                problems.append(Problem(file, node.row, column,
                    f"next node {target_node!r} does not exist in graph {wanted!r}"))
    if problems:
        raise WorkflowError(problems)
    return WorkflowSpec(graph_name=wanted, source=file, nodes=tuple(nodes))


def _node_from_row(
    file: str, line: int, row: dict[str, str], registry: AgentRegistry | None
) -> tuple[NodeSpec | None, list[Problem]]:
    problems: list[Problem] = []
    name = row.get("node_name", "")
    agent_type = row.get("agent_type", "")
    if not name:
        problems.append(Problem(file, line, "node_name", "empty node name"))
    if not agent_type:
        problems.append(Problem(file, line, "agent_type", "empty agent type"))
    elif registry is not None and not registry.knows(agent_type):
        problems.append(Problem(file, line, "agent_type",
            f"unknown agent type {agent_type!r}; expected a built-in "
            "(input, output, echo, default, branching, *_interaction, human) "
            "or a registered agent (HITLFLOW_AGENTS or entry point hitlflow.agents)"))

    context: dict[str, Any] = {}
    raw_context = row.get("context", "")
    if raw_context:
        try:
            parsed = json.loads(raw_context)
        except json.JSONDecodeError as error:
            problems.append(Problem(file, line, "context",
                f"invalid JSON ({error.msg} at character {error.pos}); expected a JSON object"))
        else:
            if isinstance(parsed, dict):
                context = parsed
            else:
                problems.append(Problem(file, line, "context",
                    f"expected a JSON object, got {type(parsed).__name__}"))
    if problems:
        return None, problems

    node = NodeSpec(
        name=name,
        agent_type=agent_type,
        next_on_success=row.get("next_on_success") or None,
        next_on_failure=row.get("next_on_failure") or None,
        prompt=row.get("prompt", ""),
        input_fields=tuple(f.strip() for f in _FIELD_SPLIT.split(row.get("input_fields", ""))
                           if f.strip()),
        output_field=row.get("output_field") or None,
        context=context,
        row=line,
    )
    problems.extend(_interaction_problems(file, node))
    return node, problems


def _interaction_problems(file: str, node: NodeSpec) -> list[Problem]:
    if node.agent_type not in INTERACTION_AGENT_TYPES:
        return []
    problems: list[Problem] = []
    kind = interaction_type_of(node)
    implied = INTERACTION_AGENT_TYPES[node.agent_type]
    if kind is None:
        problems.append(Problem(file, node.row, "context",
            "agent type 'human' needs \"interaction_type\" in context, one of "
            f"{', '.join(INTERACTION_TYPES)}"))
        return problems
    if kind not in INTERACTION_TYPES:
        problems.append(Problem(file, node.row, "context",
            f"unknown interaction_type {kind!r}; expected one of {', '.join(INTERACTION_TYPES)}"))
        return problems
    if implied and kind != implied:
        problems.append(Problem(file, node.row, "context",
            f"interaction_type {kind!r} contradicts agent type {node.agent_type!r}"))
    options = node.context.get("options")
    if kind == "choice":
        if not isinstance(options, list) or not options:
            problems.append(Problem(file, node.row, "context",
                "a choice interaction needs \"options\": a non-empty list of strings"))
        elif not all(isinstance(o, str) and o for o in options):
            problems.append(Problem(file, node.row, "context",
                "every choice option must be a non-empty string"))
    timeout = node.context.get("timeout_seconds")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        problems.append(Problem(file, node.row, "context",
            "timeout_seconds must be a positive number of seconds"))
    return problems
