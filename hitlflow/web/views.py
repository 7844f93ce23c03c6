"""What the web pages show, computed from the projections' replies. Pure: no I/O, no clock of
its own (``now`` is passed in), so each rule is tested without a browser."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from contracts.limits import MAX_ANSWER_BYTES
from contracts.queries import AnalyticsReply, Metrics, PendingInteraction, TimelineEvent
from hitlflow.display import span
from services.common.responses import ACTIONS

#: The interaction types in the order the pages list them.
TYPES = tuple(ACTIONS)
SORTS = ("urgent", "newest", "oldest")
#: Longest edited text the live diff compares (a diff of more is shown when the answer is sent).
MAX_DIFF_CHARS = 200_000


class FormError(ValueError):
    """A form field that cannot become the answer's data; the message names the field and what
    was expected."""


# -- the inbox ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxFilter:
    type: str | None = None
    graph: str | None = None
    assignee: str | None = None
    sort: str = "urgent"

    @classmethod
    def of(cls, params: Mapping[str, str]) -> InboxFilter:
        """From the query string; unknown values are dropped, never an error."""
        kind = params.get("type") or None
        sort = params.get("sort") or "urgent"
        return cls(type=kind if kind in TYPES else None, graph=params.get("graph") or None,
                   assignee=params.get("assignee") or None,
                   sort=sort if sort in SORTS else "urgent")

    def query(self) -> str:
        """The filter as a query string (for the live refresh of the rows)."""
        values = {"type": self.type, "graph": self.graph, "assignee": self.assignee,
                  "sort": self.sort}
        return urlencode({k: v for k, v in values.items() if v})


@dataclass(frozen=True)
class InboxRow:
    request: PendingInteraction
    graph: str
    waiting: str
    deadline: str | None
    left: str | None
    overdue: bool
    url: str


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def request_url(request: PendingInteraction) -> str:
    return f"/ui/requests/{request.thread_id}/{request.id}"


def countdown(deadline: datetime | None, now: datetime) -> tuple[str | None, bool]:
    """``("1h 05m left", False)``, ``("overdue by 12s", True)`` or ``(None, False)``."""
    if deadline is None:
        return None, False
    remaining = (_utc(deadline) - now).total_seconds()
    if remaining >= 0:
        return f"{span(remaining)} left", False
    return f"overdue by {span(-remaining)}", True


def span_since(moment: datetime, now: datetime) -> str:
    """How long ago ``moment`` was: ``12m 05s``."""
    return span(max((now - _utc(moment)).total_seconds(), 0.0))


def inbox_rows(items: Iterable[PendingInteraction], graphs: Mapping[str, str],
               wanted: InboxFilter, now: datetime) -> list[InboxRow]:
    """The requests that pass the filter, in its order: ``urgent`` (the nearest deadline first,
    those without one after them, newest first), ``newest`` or ``oldest``."""
    rows = []
    for item in items:
        graph = graphs.get(item.thread_id, "")
        if wanted.type and item.interaction_type != wanted.type:
            continue
        if wanted.graph and graph != wanted.graph:
            continue
        if wanted.assignee and wanted.assignee not in (*item.assignees, item.claimed_by):
            continue
        left, overdue = countdown(item.deadline, now)
        rows.append(InboxRow(
            request=item, graph=graph, waiting=span_since(item.created_at, now),
            deadline=_utc(item.deadline).isoformat() if item.deadline else None,
            left=left, overdue=overdue, url=request_url(item)))

    def newest(row: InboxRow) -> float:
        return -_utc(row.request.created_at).timestamp()

    if wanted.sort == "newest":
        rows.sort(key=newest)
    elif wanted.sort == "oldest":
        rows.sort(key=lambda row: -newest(row))
    else:
        rows.sort(key=lambda row: (row.request.deadline is None,
                                   _utc(row.request.deadline).timestamp()
                                   if row.request.deadline else 0.0, newest(row)))
    return rows


# -- answering: the form as the answer's data ---------------------------------------------------


FieldKind = Literal["text", "textarea", "number", "integer", "checkbox", "select", "json"]


@dataclass(frozen=True)
class FormField:
    """One input of a form generated from a node's ``response_schema``."""

    name: str
    label: str
    kind: FieldKind
    required: bool = False
    description: str = ""
    options: tuple[str, ...] = ()

    @property
    def input_name(self) -> str:
        return f"field.{self.name}"


#: The field a text answer is given in when the schema names none (the type's own rule:
#: ``text`` or ``response``).
RESPONSE_FIELD = "response"


def schema_fields(schema: Mapping[str, Any] | None) -> list[FormField]:
    """The inputs for an object schema's properties (in its order), and ``response`` for the
    person's words when the schema has neither ``response`` nor ``text``. Not an object schema
    with properties: no fields (the page asks for plain text)."""
    if not schema or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        return []
    listed = schema.get("required")
    required: list[Any] = listed if isinstance(listed, list) else []
    fields: list[FormField] = []
    properties: dict[str, Any] = schema["properties"]
    if RESPONSE_FIELD not in properties and "text" not in properties:
        fields.append(FormField(RESPONSE_FIELD, "Response", "textarea", required=True))
    for name, given in properties.items():
        spec = given if isinstance(given, dict) else {}
        label = str(spec.get("title") or name.replace("_", " ").capitalize())
        description = str(spec.get("description") or "")
        if isinstance(spec.get("enum"), list) and spec["enum"]:
            kind: FieldKind = "select"
            options = tuple(json.dumps(v) if not isinstance(v, str) else v
                            for v in spec["enum"])
            fields.append(FormField(name, label, kind, name in required, description, options))
            continue
        kind = {"string": "textarea" if name in (RESPONSE_FIELD, "text") else "text",
                "number": "number", "integer": "integer",
                "boolean": "checkbox"}.get(str(spec.get("type")), "json")
        fields.append(FormField(name, label, kind, name in required, description))
    return fields


def _field_value(form_field: FormField, raw: str | None, schema: Mapping[str, Any]) -> Any:
    """The typed value of one field; ``None`` for an optional field left empty."""
    spec = schema["properties"].get(form_field.name)
    spec = spec if isinstance(spec, dict) else {}
    if form_field.kind == "checkbox":
        return raw is not None
    text = (raw or "").strip() if form_field.kind != "textarea" else (raw or "")
    if text.strip() == "":
        return None
    label = form_field.label
    if form_field.kind == "select":
        for value in spec["enum"]:
            if (value if isinstance(value, str) else json.dumps(value)) == text:
                return value
        raise FormError(f"{label}: expected one of {', '.join(form_field.options)}")
    if form_field.kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise FormError(f"{label}: expected a whole number, got {text!r}") from None
    if form_field.kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise FormError(f"{label}: expected a number, got {text!r}") from None
        if not math.isfinite(number):
            raise FormError(f"{label}: expected a finite number, got {text!r}")
        return int(number) if number.is_integer() and "." not in text else number
    if form_field.kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise FormError(f"{label}: expected JSON ({error.msg} at character {error.pos})") \
                from None
    return text


def answer_from_form(request: PendingInteraction, form: Mapping[str, str]) -> tuple[str, Any]:
    """The action and data a submitted form stands for, by the request's type. Only shape is
    checked here (a number field holds a number); whether the answer fits the request is the
    interaction service's decision, which the page shows as it comes back."""
    # browsers send a textarea's line breaks as CRLF (the HTML standard): the text typed is
    # what the answer carries, with the line breaks it had
    form = {k: v.replace("\r\n", "\n") for k, v in form.items()}
    action = form.get("action", "")
    kind = request.interaction_type
    if action not in ACTIONS.get(kind, ()):
        raise FormError(f"the form sent action {action!r}; a {kind} request takes "
                        f"{', '.join(ACTIONS.get(kind, ()))}")
    data: dict[str, Any] = {}
    if kind == "approval" or (kind == "edit" and action == "reject"):
        if form.get("reason", "").strip():
            data["reason"] = form["reason"].strip()
    elif kind == "edit" and action == "edit":
        data["edited"] = form.get("edited", "")
    elif kind == "choice":
        choice = form.get("choice", "")
        if not choice.isdigit():
            raise FormError("choose one of the options")
        data["choice"] = int(choice)
        if form.get("justification", "").strip():
            data["justification"] = form["justification"].strip()
    elif kind == "text_input":
        fields = schema_fields(request.response_schema)
        if not fields:
            data["text"] = form.get("text", "")
        else:
            assert request.response_schema is not None
            schema = {"properties": {RESPONSE_FIELD: {"type": "string"},
                                     **request.response_schema["properties"]}}
            for form_field in fields:
                value = _field_value(form_field, form.get(form_field.input_name), schema)
                if value is not None:
                    data[form_field.name] = value
    elif kind == "conversation" and action == "respond":
        data["message"] = form.get("message", "")
    size = len(json.dumps(data, ensure_ascii=False).encode())
    if size > MAX_ANSWER_BYTES:
        raise FormError(f"the answer is {size:,} bytes; the most an answer may carry is "
                        f"{MAX_ANSWER_BYTES:,} bytes")
    return action, data


# -- the edit page's diff -----------------------------------------------------------------------


@dataclass(frozen=True)
class DiffLine:
    kind: Literal["same", "added", "removed"]
    text: str

    @property
    def sign(self) -> str:
        return {"same": " ", "added": "+", "removed": "-"}[self.kind]


def as_text(value: Any) -> str:
    """A value as a person edits it: text as it is, anything else as indented JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)


def diff_lines(original: str, edited: str) -> list[DiffLine]:
    """Line by line, what the edit removed and added (unchanged lines kept for context)."""
    lines: list[DiffLine] = []
    for line in difflib.ndiff(original.splitlines(), edited.splitlines()):
        tag, text = line[:1], line[2:]
        if tag == " ":
            lines.append(DiffLine("same", text))
        elif tag == "+":
            lines.append(DiffLine("added", text))
        elif tag == "-":
            lines.append(DiffLine("removed", text))
    return lines


# -- the conversation page's transcript ---------------------------------------------------------


def transcript(events: Iterable[TimelineEvent], node: str) -> list[dict[str, Any]]:
    """The turns of the conversation at ``node`` so far: the history its last completion
    carried (each turn's prompt, action, message and responder)."""
    history: list[dict[str, Any]] = []
    for event in events:
        payload = event.payload
        if event.event_type != "NodeCompleted" or payload.get("node") != node:
            continue
        output = payload.get("output")
        if isinstance(output, dict) and isinstance(output.get("history"), list):
            history = [turn for turn in output["history"] if isinstance(turn, dict)]
    return history


# -- the thread page: who answered what ---------------------------------------------------------


#: Events of the timeline a person reads first (the rest are listed too, less loudly).
MILESTONES = frozenset({"ThreadStarted", "ThreadPaused", "ThreadResumed", "ThreadCompleted",
                        "ThreadFailed", "ThreadCancelled", "ThreadTimedOut",
                        "InteractionRequested", "ResponseAccepted", "ResponseRejected",
                        "InteractionTimedOut", "InteractionEscalated", "VoteCast"})


def event_summary(event: TimelineEvent) -> str:
    """One line of what the event says, for the timeline table."""
    p = event.payload
    kind = event.event_type
    who = p.get("responder") or p.get("principal")
    if kind == "ThreadStarted":
        return f"started {p.get('graph_name', '')} by {p.get('started_by', '?')}"
    if kind == "InteractionRequested":
        return f"{p.get('interaction_type')} request at {p.get('node_name')}"
    if kind == "ResponseAccepted":
        return f"{who or '?'} answered {p.get('action')}"
    if kind == "ResponseRejected":
        return f"answer refused ({p.get('code')}) from {who or '?'}"
    if kind in ("NodeCompleted", "NodeFailed"):
        return f"{p.get('node')} → {p.get('next_node') or 'end'}"
    if kind == "ThreadPaused":
        return f"waiting at {p.get('node')}"
    if kind in ("ThreadFailed", "ThreadCancelled"):
        return str(p.get("error") or p.get("reason") or "")
    if kind == "VoteCast":
        return f"{p.get('voter')} voted {p.get('action')}"
    return ""


# -- the dashboard's charts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str
    #: Share of the chart's width, 0-100.
    width: float


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    bars: list[Bar] = field(default_factory=list)

    @property
    def height(self) -> int:
        return 24 * len(self.bars) + 8


def chart(title: str, values: Mapping[str, float | None], unit: str = "",
          fmt: str = "{:,.0f}", limit: int = 12) -> Chart:
    """A horizontal bar chart of the largest ``limit`` values (None: left out)."""
    known = sorted(((k, v) for k, v in values.items() if v is not None),
                   key=lambda kv: (-kv[1], kv[0]))[:limit]
    top = max((v for _, v in known), default=0.0) or 1.0
    return Chart(title, unit, [Bar(label, value, fmt.format(value) + unit,
                                   round(100.0 * value / top, 2)) for label, value in known])


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.1f}s" if seconds < 60 else span(seconds)


def rate_text(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


@dataclass(frozen=True)
class Dashboard:
    overall: Metrics
    by_type: list[tuple[str, Metrics]]
    by_node: list[tuple[str, Metrics]]
    charts: list[Chart]
    bottlenecks: list[tuple[str, int]]
    workload: list[tuple[str, int]]


def dashboard(reply: AnalyticsReply) -> Dashboard:
    """The figures and charts of the operator dashboard, all from one analytics reply."""
    by_type = sorted(reply.per_type.items())
    by_node = sorted(reply.per_node.items(), key=lambda kv: (-kv[1].total, kv[0]))
    charts = [
        chart("Requests by type", {k: m.total for k, m in by_type}),
        chart("Open requests (backlog) by node", {k: m.pending for k, m in by_node}),
        chart("Response time p50 by node", {k: m.p50_response_time_s for k, m in by_node},
              "s", "{:,.1f}"),
        chart("Response time p95 by node", {k: m.p95_response_time_s for k, m in by_node},
              "s", "{:,.1f}"),
        chart("Response time p95 by type", {k: m.p95_response_time_s for k, m in by_type},
              "s", "{:,.1f}"),
        chart("Approval rate by node", {k: None if m.approval_rate is None
                                        else 100 * m.approval_rate for k, m in by_node},
              "%", "{:,.1f}"),
        chart("Timeout rate by type", {k: None if m.timeout_rate is None
                                       else 100 * m.timeout_rate for k, m in by_type},
              "%", "{:,.1f}"),
    ]
    return Dashboard(
        overall=reply.overall, by_type=by_type, by_node=by_node, charts=charts,
        bottlenecks=[(b.node, b.interaction_count) for b in reply.bottlenecks],
        workload=sorted(reply.workload.items(), key=lambda kv: (-kv[1], kv[0])))


def json_text(value: Any) -> str:
    """A value exactly as stored, as indented JSON (what the pages show of contexts)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
