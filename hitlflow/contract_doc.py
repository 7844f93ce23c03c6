"""``docs/contract.md``, generated from the code: the subject table (contracts/catalog.py), the
wire models (contracts/), the limits (contracts/limits.py) and the examples that a test sends,
exactly as written here, to a real stack (``hitlflow contract`` prints it)."""

from __future__ import annotations

import inspect
import json
from typing import Any

from pydantic import BaseModel

from contracts.catalog import (
    CHANNELS,
    ENDING_EVENTS,
    EVENT_SERVICES,
    EXAMPLES,
    FIELD_LIMITS,
    REFUSAL_CODES,
    Channel,
    Example,
    event_types,
)
from contracts.commands import (
    CancelThread,
    CommandReply,
    ResumeThread,
    StartThread,
    TaskCommand,
)
from contracts.events import PAYLOADS, EventEnvelope
from contracts.limits import LIMITS, MAX_THREAD_ID
from contracts.notifications import Notification
from contracts.queries import (
    AuditQuery,
    MineQuery,
    PendingQuery,
    ThreadQuery,
    ThreadsQuery,
    TimelineQuery,
)
from contracts.subjects import CORRELATION_HEADER, REPLY_TO_HEADER
from contracts.timeouts import TimeoutInteraction
from contracts.workflow import NodeSpec, WorkflowSpec


def _how(channel: Channel) -> str:
    """How an integrator uses a subject."""
    if channel.kind == "command":
        return f"JetStream publish to `{channel.stream}`; the reply goes to `Hitl-Reply-To`"
    if channel.kind == "event":
        return f"published to `{channel.stream}` (JetStream: consume it, durably)"
    if channel.kind == "internal":
        return f"internal to the timeout service (`{channel.stream}`)"
    if channel.kind == "quarantine":
        return f"kept in `{channel.stream}`; read it with `hitlflow doctor`"
    if channel.transport == "core":
        return "core NATS: subscribe"
    return "NATS request/reply"


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """A JSON Schema property as a short type name: ``string``, ``object``, ``Cursor | null``."""
    if "$ref" in schema:
        return str(schema["$ref"].rsplit("/", 1)[-1])
    if "anyOf" in schema:
        return " | ".join(_type(s, defs) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items") or schema.get("prefixItems") or {}
        inner = _type(items, defs) if isinstance(items, dict) else "any"
        return f"list of {inner}"
    if kind == "object" or (kind is None and "additionalProperties" in schema):
        return "object"
    return str(kind or "any")


def _rules(schema: dict[str, Any]) -> list[str]:
    rules = []
    for key, text in (("minLength", "≥ {} chars"), ("maxLength", "≤ {} chars"),
                      ("minimum", "≥ {}"), ("maximum", "≤ {}"),
                      ("exclusiveMinimum", "> {}"), ("minItems", "≥ {} items")):
        for variant in [schema, *schema.get("anyOf", [])]:
            if key in variant:
                rules.append(text.format(variant[key]))
    return rules


def fields_table(model: type[BaseModel]) -> str:
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    rows = ["| field | type | required | default / limits |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        if name == "schema_version":
            continue
        notes = _rules(prop)
        limit = FIELD_LIMITS.get((model.__name__, name))
        if limit:
            value, unit, _ = LIMITS[limit]
            notes.append(f"≤ {value:,} {unit} as JSON ([{limit}](#limits))")
        if name not in required and "default" in prop:
            notes.insert(0, f"default `{json.dumps(prop['default'])}`")
        kind = _type(prop, defs).replace("|", "or")
        rows.append(f"| `{name}` | {kind} | {'yes' if name in required else ''} "
                    f"| {'; '.join(notes)} |")
    return "\n".join(rows)


def _example(number: int, example: Example) -> str:
    how = ("JetStream publish, with a `Hitl-Reply-To` header naming your inbox"
           if example.transport == "jetstream" else "NATS request")
    parts = [f"### {number}. {example.title}", "",
             f'<!-- example subject="{example.subject}" transport="{example.transport}" -->',
             f"Send ({how}) to `{example.subject}`:", "",
             "```json", json.dumps(example.body, indent=2), "```", "",
             "The reply has (at least) these fields:", "",
             "```json", json.dumps(example.reply, indent=2), "```"]
    if example.note:
        parts += ["", example.note]
    return "\n".join(parts)


def _subjects() -> str:
    rows = ["| subject | kind | how to send | thread named by | message | reply | service |",
            "|---|---|---|---|---|---|---|"]
    for channel in CHANNELS:
        rows.append(
            f"| `{channel.subject}` | {channel.kind} | {_how(channel)} "
            f"| {channel.thread or '—'} | {_name(channel.message)} | {_name(channel.reply)} "
            f"| {channel.service} |")
    rows += ["", *(f"- `{c.subject}`: {c.summary}" for c in CHANNELS)]
    return "\n".join(rows)


def _name(model: type[BaseModel] | None) -> str:
    return f"`{model.__name__}`" if model is not None else "—"


def _events() -> str:
    rows = ["| event | service | ends the thread | payload fields |", "|---|---|---|---|"]
    for name in event_types():
        model = PAYLOADS[name]
        fields = ", ".join(f"`{f}`" for f in model.model_fields if f != "schema_version")
        ending = f"yes: `{ENDING_EVENTS[name]}`" if name in ENDING_EVENTS else ""
        rows.append(f"| `{name}` | {EVENT_SERVICES.get(name, '')} | {ending} | {fields} |")
    return "\n".join(rows)


def _limits() -> str:
    rows = ["| limit | value | what it bounds |", "|---|---|---|"]
    rows += [f"| `{name}` | {value:,} {unit} | {what} |"
             for name, (value, unit, what) in LIMITS.items()]
    return "\n".join(rows)


def _codes() -> str:
    rows = ["| code | HTTP | meaning |", "|---|---|---|"]
    rows += [f"| `{code}` | {status} | {meaning} |"
             for code, (status, meaning) in REFUSAL_CODES.items()]
    return "\n".join(rows)


def render() -> str:
    """The whole document, as ``docs/contract.md`` holds it."""
    models = "\n\n".join(f"### `{m.__name__}`\n\n{inspect.cleandoc(m.__doc__ or '')}\n\n"
                         f"{fields_table(m)}"
                         for m in (StartThread, WorkflowSpec, NodeSpec, ResumeThread,
                                   TaskCommand, CancelThread, TimeoutInteraction,
                                   CommandReply))
    queries = "\n\n".join(f"### `{m.__name__}`\n\n{fields_table(m)}"
                          for m in (ThreadQuery, ThreadsQuery, PendingQuery, MineQuery,
                                    TimelineQuery, AuditQuery))
    examples = "\n\n".join(_example(i, e) for i, e in enumerate(EXAMPLES, 1))
    return f"""# The NATS contract

<!-- Generated by `hitlflow contract` from contracts/ (catalog.py, the models, limits.py):
     edit those, then run `hitlflow contract > docs/contract.md`. A test keeps the two equal
     and sends every example below to a real stack. -->

Everything a system needs to drive hitlflow over NATS without reading its code: the subjects,
the messages and their limits, the events, and examples to copy. The wire models are pydantic
models in `contracts/` (`schema_version: 1`; unknown fields are refused).

## Rules

- **Thread ids** are 1-{MAX_THREAD_ID} letters, digits, `_` or `-`, starting with a letter or
  digit: they are subject tokens.
- **The subject names the sender and the thread.** A command is sent to
  `hitl.cmd.<verb>.<principal>.<thread_id>`: the principal is who sends it (on a stack with
  users, each NATS user may publish only under its own name, so the audit records who really
  sent it), and the thread id is the last part. A principal's name is written with `.`, `*`,
  `>`, blanks and `%` as `%2E`, `%2A`, `%3E`, `%20`/`%09` and `%25`. Every query about one
  thread ends with the thread id too. A body that names another thread is refused
  (`invalid_command` for a command, `invalid_query` for a query) and the attempt is kept in
  the audit of the thread the subject names.
- **Who may answer** a request is the request's: its `assignees`, `candidate_groups` or
  `quorum`, and its claimant once someone claimed it (`forbidden` otherwise). A system user
  may act for a person (`on_behalf_of`, with the person's `groups`); the audit keeps both.
- **Answers are bound to what was shown:** an answer carries the request's `shown` (from its
  `InteractionRequested` event, its notification or its pending entry); an answer to an earlier
  version (the request was escalated, reassigned or delegated since) is refused `stale_view`.
- **Commands are JetStream publishes** to the `HITL_COMMANDS` stream: once the publish is
  acknowledged the command is stored and will be decided, even if no service is running yet.
  To get its outcome, put an inbox subject of yours in the `{REPLY_TO_HEADER}` header and
  subscribe to it before publishing: the service that decides the command publishes a
  `CommandReply` there. `{CORRELATION_HEADER}` (optional) is carried into every event the
  command causes (same header) and every log line about it.
- **Queries are NATS requests** (request/reply, answered by the projections service). Lists
  come in pages: at most `limit` items and 1 MiB; pass the reply's `next` back as `after`.
- **Events** are published to the `HITL_EVENTS` stream once saved (durable; read them with a
  JetStream consumer, from any point in the stream). **Notifications** are core NATS: only
  subscribers connected at the time get them.
- **Idempotency:** a resume command's `idempotency_key` makes it safe to send again: the same
  key gets the first outcome and changes nothing. Commands are also de-duplicated by the
  stream's `Nats-Msg-Id` header when you set one.
- **Sizes:** every input has a limit ([Limits](#limits)); over it, the command is refused with
  `too_large` and nothing changes.
- **Text** is UTF-8: a lone surrogate (JSON can spell one as an escape, `"\\ud800"`) is refused
  `invalid_command` (and audited, for an answer); the CLI and HTTP (422) refuse it before
  anything is sent.

## Subjects

Service names: `workflow` (runs graphs), `interaction` (decides answers), `timeout` (deadlines),
`projections` (status, audit, analytics views). Streams: `HITL_COMMANDS`, `HITL_EVENTS`,
`HITL_SCHEDULES`.

{_subjects()}

## Commands and their reply

{models}

### Refusal codes

A `CommandReply` with `ok: false` carries one of these `code`s and an `error` in words naming
what was expected; the HTTP gateway answers with the status shown.

{_codes()}

## Queries

Each reply model has the list (or `thread`), `next` where it pages (a cursor: pass it back as
`after`, as it came), and `error` (`code`, `error`) when the query was refused. Reply models:
`contracts/queries.py`.

{queries}

## Events

Every event travels in an envelope:

{fields_table(EventEnvelope)}

The subject is `hitl.evt.<service>.<event_type>.<thread_id>`; the `Nats-Msg-Id` header is
`<service>:<position>`, so a re-published event is dropped by the stream. The `payload` of each
event type (models in `contracts/events.py` and `contracts/timeouts.py`):

{_events()}

A notification (`hitl.notify.<thread_id>`, also POSTed to webhooks):

{fields_table(Notification)}

## Limits

Sizes are bytes of compact UTF-8 JSON, or characters for names. The NATS servers hitlflow runs on
must allow messages of `nats_required_payload`: the services refuse to start otherwise.

{_limits()}

## Examples

Start a thread from raw NATS, look at it, answer it, and read its history. Each example is sent
exactly as written by the test suite, in this order, to a fresh stack, and its reply checked.
With the `nats` CLI: subscribe to your inbox (`nats sub _INBOX.me`), then
`nats pub SUBJECT 'BODY' -H Hitl-Reply-To:_INBOX.me` for a command (the stream stores it), and
`nats request SUBJECT 'BODY'` for a query.

{examples}
"""
