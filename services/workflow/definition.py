"""Loading and checking CSV workflows (the guide's columns).

Every problem names the file, the row (line of the CSV, header = 1) and the column, so an
author can go straight to it. Problems are of two severities:

- **errors** stop a run: the file cannot be read, a required column is missing, an agent type
  is unknown, a next node does not exist, a context is not a JSON object, an interaction's
  context is wrong (unknown ``interaction_type``, a choice without ``options``, a condition that
  does not parse, an invalid ``response_schema``, ``batch``, ``otherwise`` or ``fallback``).
  :func:`load_workflow` refuses such a graph; nothing is guessed.
- **warnings** do not stop a run but are almost always mistakes: a node no path reaches, an
  input field (or a prompt's ``{field}`` without a ``|default``, or a condition's name) that is
  not an input of the start node and that no upstream node produces, or that some path to the
  node misses (the shortest such path is named), an input or interaction node with no next
  node (its output is never used), a loop of automatic nodes that never pauses.

:func:`check_workflow` returns both; ``hitlflow validate`` prints both.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonschema import SchemaError, ValidationError, validators

from contracts.events import INTERACTION_TYPES
from contracts.limits import MAX_CELL_CHARS, MAX_NODES, MAX_WORKFLOW_BYTES, describe, json_size
from contracts.timeouts import policy_problem
from contracts.workflow import NodeSpec, WorkflowSpec
from services.common.responses import InteractionError, decide
from services.workflow.agents import INTERACTION_AGENT_TYPES, AgentRegistry
from services.workflow.conditions import ConditionError
from services.workflow.conditions import parse as parse_condition
from services.workflow.templates import placeholders

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
#: Names a batch node's prompt may use besides the thread state's fields.
BATCH_FIELDS = ("batch_number", "total_batches", "items_count", "batch_items")
DEFAULT_BATCH_SIZE = 5
#: The response a conditional node takes when its condition is false, when it names none.
DEFAULT_OTHERWISE: dict[str, dict[str, Any]] = {
    "approval": {"action": "approve",
                 "data": {"reason": "approved automatically: the condition was false"}},
    "edit": {"action": "approve", "data": {}},
}
FALLBACK_WHEN = ("on_error", "always")

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    file: str
    row: int
    column: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.row}" if self.row else self.file
        column = f" [{self.column}]" if self.column else ""
        return f"{where}{column}: {self.message}"

    def describe(self) -> str:
        """``file:row [column]: error: message`` (the severity spelled out)."""
        where, _, message = str(self).partition(": ")
        return f"{where}: {self.severity}: {message}"


class WorkflowError(ValueError):
    """A CSV workflow that cannot be run; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Report:
    """What :func:`check_workflow` found: the graph (None when it has errors) and problems."""

    spec: WorkflowSpec | None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class BatchConfig:
    items_field: str
    size: int


@dataclass(frozen=True)
class FallbackConfig:
    when: str
    to: str | None
    action: str | None
    data: dict[str, Any] | None


def interaction_type_of(node: NodeSpec) -> str | None:
    """The interaction type a node asks for, or None when it is not an interaction node."""
    if node.agent_type not in INTERACTION_AGENT_TYPES:
        return None
    declared = node.context.get("interaction_type")
    implied = INTERACTION_AGENT_TYPES[node.agent_type]
    return str(declared) if declared else implied


def batch_of(node: NodeSpec) -> BatchConfig | None:
    """The node's batch settings (context ``batch``: a size, or ``{"items", "size"}``)."""
    raw = node.context.get("batch")
    if raw is None:
        return None
    items = node.input_fields[0] if len(node.input_fields) == 1 else ""
    size = DEFAULT_BATCH_SIZE
    if isinstance(raw, dict):
        items = str(raw.get("items") or items)
        size = int(raw.get("size", size))
    elif isinstance(raw, int) and not isinstance(raw, bool):
        size = raw
    return BatchConfig(items, size)


def fallback_of(node: NodeSpec) -> FallbackConfig | None:
    """The node's automated fallback (context ``fallback``), if it has one."""
    raw = node.context.get("fallback")
    if not isinstance(raw, dict):
        return None
    data, to = raw.get("data"), raw.get("to")
    return FallbackConfig(when=str(raw.get("when", "on_error")),
                          to=to if isinstance(to, str) else None,  # else an error of its own
                          action=raw.get("action"), data=data if isinstance(data, dict) else None)


def otherwise_of(node: NodeSpec, kind: str) -> dict[str, Any] | None:
    """The response a conditional node takes when its condition is false."""
    raw = node.context.get("otherwise")
    if isinstance(raw, dict):
        return raw
    return DEFAULT_OTHERWISE.get(kind)


def split_target(target: str) -> tuple[str, str | None]:
    """``file.csv::Graph`` → (file, graph); a bare path has no graph name."""
    if "::" in target:
        path, graph = target.rsplit("::", 1)
        return path, graph or None
    return target, None


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        size = path.stat().st_size
        if size > MAX_WORKFLOW_BYTES:
            raise WorkflowError([Problem(str(path), 0, "", _too_big(size))])
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise WorkflowError(
            [Problem(str(path), 0, "", f"cannot read file: {error.strerror}")]
        ) from error
    except UnicodeDecodeError as error:
        raise WorkflowError(
            [Problem(str(path), 0, "", f"cannot read file: not UTF-8 text ({error.reason})")]
        ) from error
    return rows_from_text(text, str(path))


def _too_big(size: int) -> str:
    return (f"the workflow is {size:,} bytes, more than the {describe(MAX_WORKFLOW_BYTES)} a "
            "workflow may be (limits: docs/contract.md#limits)")


def rows_from_text(
    text: str, file: str = "<text>",
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and non-empty rows (with their line numbers) of CSV text; a text or cell over
    its limit, or text that is not CSV, raises :class:`WorkflowError` naming row and column."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_WORKFLOW_BYTES:
        raise WorkflowError([Problem(file, 0, "", _too_big(size))])
    # the module's own cap (131,072) would end the read with an error of csv's: the workflow
    # as a whole is capped above, each cell below
    csv.field_size_limit(MAX_WORKFLOW_BYTES + 1)
    reader = csv.DictReader(io.StringIO(text))
    rows: list[tuple[int, dict[str, str]]] = []
    problems: list[Problem] = []
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        for record in reader:
            cleaned = {k: (v or "").strip() for k, v in record.items()
                       if k is not None and isinstance(v, str | None)}
            for column, value in cleaned.items():
                if len(value) > MAX_CELL_CHARS:
                    problems.append(Problem(file, reader.line_num, column,
                        f"cell is {len(value):,} characters, more than the {MAX_CELL_CHARS:,} "
                        "a cell may hold (limits: docs/contract.md#limits)"))
            if any(cleaned.values()):
                rows.append((reader.line_num, cleaned))
    except csv.Error as error:
        raise WorkflowError([Problem(file, reader.line_num, "",
                                     f"not readable as CSV: {error}")]) from error
    if problems:
        raise WorkflowError(problems[:20])
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
    """Load and check one graph of a CSV file; raises :class:`WorkflowError` on any error."""
    report = check_workflow(target, graph, registry)
    if report.errors or report.spec is None:
        raise WorkflowError(report.errors)
    return report.spec


def parse_workflow(
    text: str, graph: str | None = None, registry: AgentRegistry | None = None,
    source: str = "<text>",
) -> WorkflowSpec:
    """Load and check one graph of CSV text (e.g. sent over HTTP); ``source`` names it in errors."""
    report = check_workflow(source, graph, registry, text=text)
    if report.errors or report.spec is None:
        raise WorkflowError(report.errors)
    return report.spec


def check_workflow(
    target: str | Path, graph: str | None = None, registry: AgentRegistry | None = None,
    *, text: str | None = None,
) -> Report:
    """Every error and warning of one graph of a CSV file (raises only when it is unreadable
    or names no graph)."""
    path_text, graph_from_target = split_target(str(target))
    path = Path(path_text)
    file = str(path)
    header, rows = read_rows(path) if text is None else rows_from_text(text, file)
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
    if len(selected) > MAX_NODES:
        raise WorkflowError([Problem(file, selected[MAX_NODES][0], "node_name",
            f"graph {wanted!r} has {len(selected):,} nodes, more than the {MAX_NODES:,} a graph "
            "may have (limits: docs/contract.md#limits)")])

    nodes: list[NodeSpec] = []
    seen: dict[str, int] = {}
    rows_ok = True
    for line, row in selected:
        node, row_problems = _node_from_row(file, line, row, registry)
        problems.extend(row_problems)
        if node is None:
            rows_ok = False
            # the row is wrong, but its node exists: don't report edges to it as dangling
            seen.setdefault(row.get("node_name", ""), line)
            continue
        if node.name in seen:
            rows_ok = False
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
        fallback = fallback_of(node)
        if fallback is not None and fallback.to and fallback.to not in seen:
            problems.append(Problem(file, node.row, "context",
                f"fallback node {fallback.to!r} does not exist in graph {wanted!r}"))

    errors = sorted((p for p in problems if p.severity == "error"), key=lambda p: p.row)
    warnings = [p for p in problems if p.severity == "warning"]
    if rows_ok and nodes:
        warnings += _graph_warnings(file, nodes)
    spec = None if errors else WorkflowSpec(graph_name=wanted, source=file, nodes=tuple(nodes))
    return Report(spec, errors, sorted(warnings, key=lambda p: p.row))


def spec_problems(spec: WorkflowSpec) -> list[Problem]:
    """The errors of a graph that did not come through :func:`load_workflow` (e.g. a StartThread
    published by another system): unusable interaction settings and missing next nodes."""
    names = {node.name for node in spec.nodes}
    problems: list[Problem] = []
    if len(spec.nodes) > MAX_NODES:
        return [Problem(spec.source, 0, "node_name",
                        f"the graph has {len(spec.nodes):,} nodes, more than the {MAX_NODES:,} "
                        "a graph may have (limits: docs/contract.md#limits)")]
    for node in spec.nodes:
        texts = {"graph_name": spec.graph_name, "node_name": node.name,
                 "agent_type": node.agent_type, "next_on_success": node.next_on_success or "",
                 "next_on_failure": node.next_on_failure or "",
                 "output_field": node.output_field or ""}
        problems += [Problem(spec.source, node.row, column,
                             f"node {node.name[:100]!r}: {column} contains control characters")
                     for column, text in texts.items()
                     if any(ch < " " or ch == "\x7f" for ch in text)]
        cells = {"prompt": len(node.prompt), "context": json_size(node.context),
                 "input_fields": len(",".join(node.input_fields))}
        problems += [Problem(spec.source, node.row, column,
                             f"node {node.name[:100]!r}: {column} is {size:,} characters, more "
                             f"than the {MAX_CELL_CHARS:,} a cell may hold")
                     for column, size in cells.items() if size > MAX_CELL_CHARS]
        problems += _interaction_problems(spec.source, node)
        fallback = fallback_of(node)
        targets = [("next_on_success", node.next_on_success),
                   ("next_on_failure", node.next_on_failure),
                   ("context", fallback.to if fallback else None)]
        problems += [Problem(spec.source, node.row, column,
                             f"node {node.name!r}: next node {target!r} does not exist")
                     for column, target in targets if target and target not in names]
    if len(names) != len(spec.nodes):
        problems.append(Problem(spec.source, 0, "node_name", "node names are not unique"))
    return problems


def _node_from_row(
    file: str, line: int, row: dict[str, str], registry: AgentRegistry | None
) -> tuple[NodeSpec | None, list[Problem]]:
    problems: list[Problem] = []
    name = row.get("node_name", "")
    agent_type = row.get("agent_type", "")
    if not name:
        problems.append(Problem(file, line, "node_name", "empty node name"))
    for column in ("graph_name", "node_name", "agent_type", "next_on_success",
                   "next_on_failure", "output_field"):
        if any(ch < " " or ch == "\x7f" for ch in row.get(column, "")):
            problems.append(Problem(file, line, column,
                "contains control characters; expected printable text"))
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
        return [Problem(file, node.row, "context",
                        f"{key!r} applies to interaction nodes only (node {node.name!r} runs "
                        f"agent {node.agent_type!r})")
                for key in ("condition", "batch", "fallback", "otherwise", "response_schema")
                if key in node.context]
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
    problems += [Problem(file, node.row, "context", message)
                 for message in _audience_problems(node, kind)]
    timeout = node.context.get("timeout_seconds")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        problems.append(Problem(file, node.row, "context",
            "timeout_seconds must be a positive number of seconds"))
    if "on_timeout" in node.context:
        policy_error = policy_problem(node.context["on_timeout"])
        if policy_error:
            problems.append(Problem(file, node.row, "context", f"on_timeout: {policy_error}"))
    if problems:
        return problems
    messages = [
        *_schema_problems(node),
        *_condition_problems(node, kind),
        *_batch_problems(node),
        *_fallback_problems(node, kind),
    ]
    return [Problem(file, node.row, "context", m) for m in messages]


def _names_problem(value: Any, what: str) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return f"{what} must be a list of names (non-empty strings), got {json.dumps(value)}"
    return None


def _audience_problems(node: NodeSpec, kind: str) -> list[str]:
    """Who may answer: ``assignees`` (people), ``candidate_groups``, or a ``quorum``."""
    context = node.context
    problems = [problem for key in ("assignees", "candidate_groups") if key in context
                if (problem := _names_problem(context[key], key))]
    raw = context.get("quorum")
    if raw is None:
        return problems
    example = ('{"approvals": 2, "of": ["alice", "bob", "carol"]} or '
               '{"approvals": 2, "group": "finance"}')
    if kind != "approval":
        return [*problems, f"a quorum decides approvals only, not a {kind} interaction"]
    if not isinstance(raw, dict):
        return [*problems, f"quorum must be an object, e.g. {example}"]
    unknown = sorted(set(raw) - {"approvals", "of", "group", "reject"})
    approvals = raw.get("approvals")
    if unknown:
        problems.append(f"quorum has unknown keys {', '.join(map(repr, unknown))}; "
                        f"expected {example}")
    elif isinstance(approvals, bool) or not isinstance(approvals, int) or approvals < 1:
        problems.append(f"quorum \"approvals\" must be a whole number of at least 1, got "
                        f"{approvals!r}")
    elif ("of" in raw) == ("group" in raw):
        problems.append(f"quorum needs exactly one of \"of\" (people) or \"group\": {example}")
    elif "of" in raw:
        problem = _names_problem(raw["of"], "quorum \"of\"")
        if problem:
            problems.append(problem)
        elif len(set(raw["of"])) < approvals:
            problems.append(f"quorum asks for {approvals} approvals of "
                            f"{len(set(raw['of']))} voter(s): more than its electorate")
    elif not isinstance(raw["group"], str) or not raw["group"]:
        problems.append("quorum \"group\" must name a group")
    if raw.get("reject", "veto") not in ("veto", "majority"):
        problems.append(f"quorum \"reject\" must be \"veto\" (one reject decides) or "
                        f"\"majority\", got {raw.get('reject')!r}")
    if "assignees" in context or "candidate_groups" in context:
        problems.append("a quorum names its voters; it takes no assignees or candidate_groups")
    return problems


def _schema_problems(node: NodeSpec) -> list[str]:
    schema = node.context.get("response_schema")
    if schema is None:
        return []
    if not isinstance(schema, dict):
        return [f"response_schema must be a JSON Schema object, got {type(schema).__name__}"]
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        return [f"response_schema is not a valid JSON Schema at {where}: {error.message}"]
    return []


def _response_problem(node: NodeSpec, kind: str, what: str, response: Any) -> str | None:
    """Would ``response`` (``{"action", "data"}``) be accepted from a person at this node?"""
    if not isinstance(response, dict) or not isinstance(response.get("action"), str):
        return (f"{what} must be an object with \"action\" (and optional \"data\"), e.g. "
                "{\"action\": \"approve\"}")
    unknown = sorted(set(response) - {"action", "data", "when", "to"})
    if unknown:
        return f"{what} has unknown keys {', '.join(map(repr, unknown))}"
    data = response.get("data")
    try:
        decide(kind, list(node.context.get("options") or []), {}, response["action"], data)
    except InteractionError as error:
        return f"{what} is not a valid {kind} response: {error}"
    schema = node.context.get("response_schema")
    if isinstance(schema, dict) and not _schema_problems(node):
        try:
            validators.validator_for(schema)(schema).validate(data or {})
        except ValidationError as error:
            return f"{what} data does not satisfy response_schema: {error.message}"
    return None


def _condition_problems(node: NodeSpec, kind: str) -> list[str]:
    problems: list[str] = []
    if "condition" in node.context:
        try:
            parse_condition(node.context["condition"])
        except ConditionError as error:
            problems.append(str(error))
        otherwise = otherwise_of(node, kind)
        if otherwise is None:
            problems.append(
                f"a conditional {kind} interaction needs \"otherwise\": the response taken "
                "when the condition is false, e.g. "
                + ('{"action": "choose", "data": {"choice": 1}}' if kind == "choice" else
                   '{"action": "respond", "data": {"text": "..."}}' if kind == "text_input" else
                   '{"action": "end"}'))
        else:
            problem = _response_problem(node, kind, "\"otherwise\"", otherwise)
            if problem:
                problems.append(problem)
    elif "otherwise" in node.context:
        problems.append("\"otherwise\" is taken only when a \"condition\" is false, and this "
                        "node has no condition")
    return problems


def _batch_problems(node: NodeSpec) -> list[str]:
    raw = node.context.get("batch")
    if raw is None:
        return []
    example = '"batch": {"items": "items", "size": 5} (or "batch": 5)'
    if isinstance(raw, bool) or not isinstance(raw, int | dict):
        return [f"batch must be a size or an object, e.g. {example}"]
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"items", "size"})
        if unknown:
            return [f"batch has unknown keys {', '.join(map(repr, unknown))}; expected {example}"]
        size = raw.get("size", DEFAULT_BATCH_SIZE)
        items = raw.get("items")
        if items is not None and (not isinstance(items, str) or not items):
            return ["batch \"items\" must name the state field that holds the list of items"]
    else:
        size = raw
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return [f"batch size must be a whole number of at least 1, got {size!r}"]
    config = batch_of(node)
    if config is None or not config.items_field:
        return ["a batch needs the field that holds the items: \"batch\": {\"items\": \"FIELD\"}"
                " (or exactly one input field)"]
    return []


def _fallback_problems(node: NodeSpec, kind: str) -> list[str]:
    raw = node.context.get("fallback")
    if raw is None:
        return []
    example = ('{"to": "NODE"} or {"action": "approve", "data": {...}}, '
               'optionally with "when": "on_error" | "always"')
    if not isinstance(raw, dict):
        return [f"fallback must be an object: {example}"]
    when = raw.get("when", "on_error")
    if when not in FALLBACK_WHEN:
        return [f"fallback \"when\" must be one of {', '.join(FALLBACK_WHEN)}, got {when!r}"]
    has_to, has_action = "to" in raw, "action" in raw
    if has_to == has_action:
        return [f"fallback needs exactly one of \"to\" (a node) or \"action\": {example}"]
    if has_to:
        if not isinstance(raw["to"], str) or not raw["to"]:
            return ["fallback \"to\" must name a node of the graph"]
        extra = sorted(set(raw) - {"to", "when"})
        return [f"fallback with \"to\" takes no {', '.join(map(repr, extra))}"] if extra else []
    problem = _response_problem(node, kind, "fallback", raw)
    return [problem] if problem else []


# -- graph-level checks (warnings) ------------------------------------------------------------


def _edges(node: NodeSpec) -> list[str]:
    fallback = fallback_of(node)
    targets = [node.next_on_success, node.next_on_failure, fallback.to if fallback else None]
    return [t for t in targets if t]


def _reachable(start: str, edges: dict[str, list[str]]) -> set[str]:
    found = {start}
    queue = deque([start])
    while queue:
        for target in edges.get(queue.popleft(), []):
            if target not in found:
                found.add(target)
                queue.append(target)
    return found


def _graph_warnings(file: str, nodes: list[NodeSpec]) -> list[Problem]:
    by_name = {n.name: n for n in nodes}
    edges = {n.name: [t for t in _edges(n) if t in by_name] for n in nodes}
    start = nodes[0]
    reachable = _reachable(start.name, edges)
    flow = field_flow(nodes)
    warnings: list[Problem] = []

    def warn(node: NodeSpec, column: str, message: str) -> None:
        warnings.append(Problem(file, node.row, column, message, "warning"))

    for node in nodes:
        if node.name not in reachable:
            warn(node, "node_name", f"node {node.name!r} is unreachable: no path from the start "
                 f"node {start.name!r} leads to it, so it never runs")
            continue
        if not node.next_on_success and (
            interaction_type_of(node) is not None or node.agent_type == "input"
        ):
            warn(node, "next_on_success", f"node {node.name!r} has no next_on_success, so a "
                 "thread ends right after it and nothing uses its output; name the next node")
        if node is start or node.name not in flow.may:  # reached only by routes never taken
            continue
        for column, name in _field_uses(node):
            use = {"input_fields": f"input field {name!r}", "prompt": f"prompt field {{{name}}}",
                   "context": f"condition name {name!r}"}[column]
            if name not in flow.may[node.name]:
                warn(node, column, f"{use} is produced by no node upstream of {node.name!r} and "
                     f"is not an input of the start node {start.name!r}: it is missing unless "
                     "the initial state has it")
            elif name not in flow.must[node.name]:
                path = flow.path_missing(node.name, name) or []
                warn(node, column, f"{use} is not produced on {describe_path(path, by_name)}")
    warnings += _automatic_loops(file, nodes, edges)
    return warnings


def _field_uses(node: NodeSpec) -> list[tuple[str, str]]:
    """(column, field) for each field the node uses, once per field: its prompt's fields
    without a default (batch fields aside), its condition's names, its input fields. A field
    used in several places is named where a person would see it missing first: the prompt,
    then the condition, then the input fields. Listed input fields first, as in the CSV."""
    column_of: dict[str, str] = {}
    extra = set(BATCH_FIELDS) if batch_of(node) else set()
    for placeholder in placeholders(node.prompt):
        if placeholder.default is None and placeholder.name not in extra:
            column_of.setdefault(placeholder.name, "prompt")
    if isinstance(node.context.get("condition"), str):
        try:
            condition = parse_condition(node.context["condition"])
        except ConditionError:
            condition = None
        for name in sorted(condition.names if condition else ()):
            column_of.setdefault(name, "context")
    for name in node.input_fields:
        column_of.setdefault(name, "input_fields")
    order = {"input_fields": 0, "prompt": 1, "context": 2}
    return sorted(((column, name) for name, column in column_of.items()),
                  key=lambda use: order[use[0]])


# -- which fields are defined where: a data-flow analysis over the graph ----------------------

Route = Literal["success", "failure", "fallback"]
#: The CSV column (or context key) each route is written in.
ROUTE_COLUMNS: dict[str, str] = {"success": "next_on_success", "failure": "next_on_failure",
                                 "fallback": "context fallback"}


@dataclass(frozen=True)
class Step:
    """One edge of the graph: ``source`` goes to ``target`` by ``route``."""

    source: str
    target: str
    route: Route
    #: Does the state hold the source's output field after this edge?
    carries_output: bool


def steps_of(node: NodeSpec) -> list[Step]:
    """The edges leaving a node, in the order success, failure, fallback.

    A node's output field is written whichever route it takes (an agent that returns a
    failure result, a person who rejects or ends, a fallback), with one exception: a choice
    or text input request has no failure answer, so its ``next_on_failure`` is taken only when
    the request cannot be made, and then nothing is written. An agent that raises also takes
    ``next_on_failure`` without output; that is an error, which this analysis does not model.

    A fallback taken ``always`` replaces the person: the node only ever goes to the fallback's
    ``to``, or by the route its response takes.
    """
    kind = interaction_type_of(node)
    fallback = fallback_of(node)
    routes: list[tuple[Route, str | None]] = [
        ("success", node.next_on_success), ("failure", node.next_on_failure),
        ("fallback", fallback.to if fallback else None)]
    if fallback is not None and fallback.when == "always":
        taken = "fallback" if fallback.to else _fallback_route(node, kind, fallback)
        routes = [(route, target) for route, target in routes if taken in (None, route)]
    return [Step(node.name, target, route,
                 not (route == "failure" and kind in ("choice", "text_input")))
            for route, target in routes if target]


def _fallback_route(node: NodeSpec, kind: str | None, fallback: FallbackConfig) -> str | None:
    """The route a fallback response takes (None when it is not a valid response)."""
    if kind not in INTERACTION_TYPES:
        return None
    try:
        return decide(kind, list(node.context.get("options") or []), {},
                      str(fallback.action or ""), fallback.data).route
    except InteractionError:
        return None


def branch_name(node: NodeSpec, route: Route) -> str | None:
    """How an author names a route that is not the node's success: ``reject`` for an approval
    or edit, ``end`` for a conversation, ``fallback`` for a fallback's ``to``, else
    ``next_on_failure``."""
    if route == "success":
        return None
    if route == "fallback":
        return "fallback"
    kind = interaction_type_of(node)
    if kind in ("approval", "edit"):
        return "reject"
    if kind == "conversation":
        return "end"
    return "next_on_failure"


def describe_path(path: list[Step], nodes: dict[str, NodeSpec]) -> str:
    """``the path through `reject`: start → … → end (approve_gate's next_on_failure)``."""
    if not path:
        return "the path that starts at it"
    names = " → ".join([path[0].source, *(step.target for step in path)])
    branches = [(branch_name(nodes[s.source], s.route), s) for s in path if s.route != "success"]
    if not branches:
        return f"the path {names}"
    through = " and ".join(dict.fromkeys(f"`{name}`" for name, _ in branches))
    where = ", ".join(f"{s.source}'s {ROUTE_COLUMNS[s.route]}" for _, s in branches)
    return f"the path through {through}: {names} ({where})"


@dataclass(frozen=True)
class FieldFlow:
    """Which state fields are defined when each reachable node runs.

    ``must[node]``: produced on every path from the start node to it (or inputs of the start
    node); ``may[node]``: produced on at least one. Unreachable nodes are in neither.
    """

    start: str
    initial: frozenset[str]
    steps: dict[str, list[Step]]
    outputs: dict[str, str | None]
    must: dict[str, frozenset[str]]
    may: dict[str, frozenset[str]]
    _trees: dict[str, dict[str, Step | None]] = field(default_factory=dict, repr=False,
                                                      compare=False)

    def produces(self, step: Step, name: str) -> bool:
        return step.carries_output and self.outputs[step.source] == name

    def path_missing(self, node: str, name: str) -> list[Step] | None:
        """The shortest path from the start node to ``node`` on which no node produces
        ``name`` (ties: success before failure before fallback), or None when there is none."""
        if name in self.initial:
            return None
        came_by = self._paths_missing(name)
        if node not in came_by:
            return None
        path: list[Step] = []
        back = came_by[node]
        while back is not None:
            path.append(back)
            back = came_by[back.source]
        return path[::-1]

    def _paths_missing(self, name: str) -> dict[str, Step | None]:
        """Breadth first from the start node over the edges that do not produce ``name``: the
        last step of a shortest such path to each node it reaches (computed once per field)."""
        if name in self._trees:
            return self._trees[name]
        came_by: dict[str, Step | None] = {self.start: None}
        queue = deque([self.start])
        while queue:
            for step in self.steps[queue.popleft()]:
                if step.target not in came_by and not self.produces(step, name):
                    came_by[step.target] = step
                    queue.append(step.target)
        self._trees[name] = came_by
        return came_by


def field_flow(nodes: list[NodeSpec]) -> FieldFlow:
    """Must- and may-be-defined fields at each node's entry, iterated to a fixed point: a
    node's set is the intersection (must) or union (may) over its incoming edges of what the
    source had plus the source's output on that edge; the start node has its input fields."""
    by_name = {n.name: n for n in nodes}
    start = nodes[0]
    steps = {n.name: [s for s in steps_of(n) if s.target in by_name] for n in nodes}
    outputs = {n.name: n.output_field for n in nodes}
    initial = frozenset(start.input_fields)
    reachable = _reachable(start.name, {n: [s.target for s in out] for n, out in steps.items()})
    incoming: dict[str, list[Step]] = {n: [] for n in reachable}
    for name in reachable:
        for step in steps[name]:
            incoming[step.target].append(step)

    def after(step: Step, held: frozenset[str]) -> frozenset[str]:
        output = outputs[step.source]
        return held | {output} if output and step.carries_output else held

    def solve(join: Callable[[frozenset[str], frozenset[str]], frozenset[str]],
              top: frozenset[str]) -> dict[str, frozenset[str]]:
        found = {n: top for n in reachable}
        pending = deque(n for n in by_name if n in reachable)
        queued = set(pending)
        while pending:
            name = pending.popleft()
            queued.discard(name)
            held = initial if name == start.name else top
            for step in incoming[name]:
                held = join(held, after(step, found[step.source]))
            if held != found[name]:
                found[name] = held
                for step in steps[name]:
                    if step.target not in queued:
                        queued.add(step.target)
                        pending.append(step.target)
        return found

    everything = initial | {o for o in outputs.values() if o}
    must = solve(frozenset.intersection, frozenset(everything))
    may = solve(frozenset.union, frozenset())
    return FieldFlow(start.name, initial, steps, outputs, must, may)


def _automatic_loops(file: str, nodes: list[NodeSpec],
                     edges: dict[str, list[str]]) -> list[Problem]:
    automatic = {n.name for n in nodes if interaction_type_of(n) is None}
    auto_edges = {n: [t for t in edges[n] if t in automatic] for n in automatic}
    back_edges: dict[str, list[str]] = {n: [] for n in automatic}
    for source, targets in auto_edges.items():
        for target in targets:
            back_edges[target].append(source)
    reported: set[str] = set()
    problems: list[Problem] = []
    for node in nodes:
        if node.name not in automatic or node.name in reported:
            continue
        # the nodes it reaches that reach it back: its loop (itself alone when there is none)
        loop = _reachable(node.name, auto_edges) & _reachable(node.name, back_edges)
        if any(node.name in auto_edges[t] for t in loop):
            members = [n.name for n in nodes if n.name in loop]
            reported |= loop
            problems.append(Problem(file, node.row, "next_on_success",
                f"nodes {' → '.join(members)} form a loop with no interaction node: a thread "
                "that enters it never pauses and fails after too many steps", "warning"))
    return problems
