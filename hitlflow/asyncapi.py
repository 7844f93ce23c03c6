"""The NATS contract as an AsyncAPI 3 document, generated from the same subject table
(``contracts/catalog.py``) and wire models as ``docs/contract.md``: the two cannot disagree,
and a test keeps the table equal to the subscriptions the services make
(``tests/unit/test_asyncapi.py``).

``hitlflow contract --format asyncapi`` prints it (JSON), ``--format html`` as one page with no
outside resources; the HTTP gateway serves both (``/asyncapi``, ``/asyncapi.html``).

The document describes hitlflow as the application: it *receives* commands, queries and
control requests, and *sends* events, notifications and quarantine records. Each channel also
says how to reach it (``x-hitlflow-transport``: ``jetstream`` = publish to the stream named in
``x-hitlflow-stream`` and wait for its acknowledgement, ``request`` = a core NATS request,
``core`` = subscribe) since AsyncAPI's NATS bindings carry no such field.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts.catalog import CHANNELS, EVENT_SERVICES, REFUSAL_CODES, Channel, event_types
from contracts.events import PAYLOADS, EventEnvelope
from contracts.subjects import (
    CORRELATION_HEADER,
    DLQ_ERROR_HEADER,
    DLQ_REF_HEADER,
    DLQ_SIZE_HEADER,
    DLQ_SOURCE_HEADER,
    DLQ_STREAM_SEQ_HEADER,
    DLQ_SUBJECT_HEADER,
    DLQ_THREAD_HEADER,
    REPLY_TO_HEADER,
    THREAD_ID_PATTERN,
)

ASYNCAPI_VERSION = "3.0.0"
SCHEMA_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{([a-z_]+)\}")

#: What each parameter of a subject stands for.
PARAMETERS: dict[str, dict[str, Any]] = {
    "thread_id": {"description": "The thread: 1-128 letters, digits, '_' or '-', starting "
                                 f"with a letter or digit ({THREAD_ID_PATTERN}). The subject is "
                                 "the authority: a body naming another thread is refused.",
                  "examples": ["order-1042"]},
    "service": {"description": "The service that saved the event.",
                "enum": ["workflow", "interaction", "timeout"]},
    "event_type": {"description": "The event's type (past tense).",
                   "enum": sorted(PAYLOADS)},
    "request_id": {"description": "The interaction request the timer belongs to."},
    "principal": {"description": "Who sends the command: the principal's name as one subject "
                                 "token ('.', '*', '>', spaces and '%' written %2E, %2A, %3E, "
                                 "%20, %25). Each NATS user may publish only under its own "
                                 "name.", "examples": ["erp"]},
    "source": {"description": "Who gave up on the message: a consumer's durable name, or "
                              "relay-<service>."},
    "store": {"description": "The service whose store is meant.",
              "enum": ["workflow", "interaction", "timeout", "projections"]},
}

_REPLY_TO = {"type": "string", "description": "An inbox subject of yours (subscribe to it "
             "before publishing): the outcome, a CommandReply, is published there."}
_CORRELATION = {"type": "string", "maxLength": 200,
                "description": "Optional: carried into every event the command causes (same "
                               "header) and every log line about it."}


def channel_id(channel: Channel) -> str:
    """A stable id: ``hitl.cmd.resume.{thread_id}`` → ``hitl-cmd-resume-thread_id``."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", channel.subject.replace("{", "").replace("}", ""))


def nats_pattern(address: str) -> str:
    """The subject filter an address stands for: each ``{parameter}`` a ``*``."""
    return _PARAM.sub("*", address)


def _schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [EventEnvelope, *PAYLOADS.values()]
    for channel in CHANNELS:
        models += [m for m in (channel.message, channel.reply) if m is not None]
    unique = list(dict.fromkeys(models))
    _, top = models_json_schema([(m, "validation") for m in unique], ref_template=SCHEMA_REF)
    return dict(sorted(top.get("$defs", {}).items()))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(model=model.__name__)}


def _command_headers() -> dict[str, Any]:
    return {"type": "object", "properties": {
        REPLY_TO_HEADER: _REPLY_TO, CORRELATION_HEADER: _CORRELATION,
        "Nats-Msg-Id": {"type": "string", "description": "Optional: the stream drops a "
                        "second message with the same id within 15 minutes."}}}


def _event_headers() -> dict[str, Any]:
    return {"type": "object", "required": ["Nats-Msg-Id"], "properties": {
        "Nats-Msg-Id": {"type": "string", "description": "<service>:<position>: a re-published "
                        "event is dropped by the stream."},
        CORRELATION_HEADER: {"type": "string", "description": "The correlation id of the "
                             "command that caused the event, when it had one."}}}


def _dlq_headers() -> dict[str, Any]:
    described = {DLQ_ERROR_HEADER: "why no retry could help", DLQ_SOURCE_HEADER:
                 "the consumer, or relay-<service>", DLQ_SUBJECT_HEADER: "the original subject",
                 DLQ_THREAD_HEADER: "the thread, when known", DLQ_SIZE_HEADER:
                 "the original's size in bytes (the body is empty when it did not fit)",
                 DLQ_STREAM_SEQ_HEADER: "the original's sequence in its stream",
                 DLQ_REF_HEADER: "<service>:<position> of an event kept in its store"}
    return {"type": "object", "required": [DLQ_ERROR_HEADER, DLQ_SOURCE_HEADER],
            "properties": {name: {"type": "string", "description": text}
                           for name, text in described.items()}}


def _event_messages() -> dict[str, Any]:
    """One message per event type: the envelope, with that type's payload."""
    messages = {}
    for name in event_types():
        messages[name] = {
            "name": name, "title": name,
            "summary": f"{name}, published by the {EVENT_SERVICES.get(name, '')} service.",
            "contentType": "application/json", "headers": _event_headers(),
            "payload": {"allOf": [_ref(EventEnvelope), {
                "type": "object",
                "properties": {"event_type": {"const": name},
                               "payload": _ref(PAYLOADS[name])}}]},
        }
    return messages


def _message(model: type[BaseModel], channel: Channel, *, reply: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {"name": model.__name__, "title": model.__name__,
                               "contentType": "application/json", "payload": _ref(model)}
    doc = (model.__doc__ or "").strip()
    if doc and not doc.startswith(("A frozen", "Usage docs")):
        message["summary"] = " ".join(doc.split())
    if channel.kind == "command" and not reply:
        message["headers"] = _command_headers()
    return message


def render_document() -> dict[str, Any]:
    """The AsyncAPI 3 document (a JSON-ready dict)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    reply_channels: dict[str, Any] = {}
    for channel in CHANNELS:
        cid = channel_id(channel)
        names: list[str] = []
        if channel.kind == "event":
            for name, message in _event_messages().items():
                messages[name] = message
                names.append(name)
        elif channel.kind == "quarantine":
            messages["QuarantinedMessage"] = {
                "name": "QuarantinedMessage", "title": "Quarantined message",
                "summary": "The original body, unchanged (empty when it did not fit).",
                "contentType": "application/octet-stream", "headers": _dlq_headers(),
                "payload": {"description": "the original message's body"}}
            names.append("QuarantinedMessage")
        elif channel.message is not None:
            key = channel.message.__name__
            messages.setdefault(key, _message(channel.message, channel))
            names.append(key)
        entry: dict[str, Any] = {
            "address": channel.subject, "title": channel.subject,
            "description": channel.summary,
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
            "x-hitlflow-kind": channel.kind, "x-hitlflow-transport": channel.transport,
            "x-hitlflow-service": channel.service,
        }
        if channel.stream:
            entry["x-hitlflow-stream"] = channel.stream
        if channel.thread:
            entry["x-hitlflow-thread"] = channel.thread
        params = _PARAM.findall(channel.subject)
        if params:
            entry["parameters"] = {p: dict(PARAMETERS[p]) for p in params}
        channels[cid] = entry
        receives = channel.kind in ("command", "query", "control") or (
            channel.kind == "internal" and channel.subject.startswith("hitl.sched.fire"))
        operation: dict[str, Any] = {
            "action": "receive" if receives else "send",
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": channel.summary,
            "messages": [{"$ref": f"#/channels/{cid}/messages/{n}"} for n in names],
        }
        if channel.reply is not None:
            reply_name = channel.reply.__name__
            messages.setdefault(reply_name, _message(channel.reply, channel, reply=True))
            rid = f"{reply_name}-reply"
            if rid not in reply_channels:
                reply_channels[rid] = {
                    "address": None, "title": f"{reply_name} (reply)",
                    "description": ("The inbox named by the command's Hitl-Reply-To header."
                                    if channel.kind == "command" else
                                    "The reply subject of the NATS request."),
                    "messages": {reply_name: {"$ref": f"#/components/messages/{reply_name}"}}}
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{rid}"},
                "messages": [{"$ref": f"#/channels/{rid}/messages/{reply_name}"}]}
            if channel.kind == "command":
                operation["reply"]["address"] = {
                    "location": f"$message.header#/{REPLY_TO_HEADER}",
                    "description": "The subject the sender named in its Hitl-Reply-To header."}
        operations[f"{operation['action']}-{cid}"] = operation
    channels.update(reply_channels)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "hitlflow NATS contract",
            "version": "0.1.0",
            "description": (
                "Workflows that pause for people and resume on their answer. Commands are "
                "JetStream publishes (stored, then decided; the outcome goes to Hitl-Reply-To), "
                "queries are NATS requests, events are published to HITL_EVENTS once saved. "
                "Refusal codes: " + ", ".join(REFUSAL_CODES) + ". Generated from the code "
                "(hitlflow contract --format asyncapi); docs/contract.md says the same in words."),
        },
        "defaultContentType": "application/json",
        "servers": {"embedded": {
            "host": "127.0.0.1:4322", "protocol": "nats",
            "description": "The embedded stack of `hitlflow up` (a cluster: every node's URL)."}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": dict(sorted(messages.items())), "schemas": _schemas()},
    }


def render_json() -> str:
    return json.dumps(render_document(), indent=2) + "\n"


def render_html() -> str:
    """The document as one HTML page: channels, operations and message schemas (no scripts,
    no outside resources)."""
    doc = render_document()
    esc = html.escape
    rows = []
    for cid, channel in doc["channels"].items():
        if channel["address"] is None:
            continue
        ops = [f"{esc(op['action'])}" for op in doc["operations"].values()
               if op["channel"]["$ref"] == f"#/channels/{cid}"]
        reply = next((op["reply"]["messages"][0]["$ref"].rsplit("/", 1)[-1]
                      for op in doc["operations"].values()
                      if op["channel"]["$ref"] == f"#/channels/{cid}" and "reply" in op), "")
        names = ", ".join(f'<a href="#msg-{esc(n)}">{esc(n)}</a>' for n in channel["messages"])
        replied = f'<a href="#msg-{esc(reply)}">{esc(reply)}</a>' if reply else ""
        stream = f" → {esc(channel['x-hitlflow-stream'])}" if "x-hitlflow-stream" in channel else ""
        rows.append(
            f"<tr id=\"ch-{esc(cid)}\"><td><code>{esc(channel['address'])}</code></td>"
            f"<td>{esc(channel['x-hitlflow-kind'])}</td><td>{' '.join(ops)}</td>"
            f"<td>{esc(channel['x-hitlflow-transport'])}{stream}</td><td>{names}</td>"
            f"<td>{replied}</td>"
            f"<td>{esc(channel['description'])}</td></tr>")
    sections = []
    for name, message in doc["components"]["messages"].items():
        payload = json.dumps(message["payload"], indent=2)
        headers = (f"<h4>headers</h4><pre>{esc(json.dumps(message['headers'], indent=2))}</pre>"
                   if "headers" in message else "")
        sections.append(f"<section id=\"msg-{esc(name)}\"><h3>{esc(name)}</h3>"
                        f"<p>{esc(message.get('summary', ''))}</p>{headers}"
                        f"<h4>payload</h4><pre>{esc(payload)}</pre></section>")
    schemas = "".join(
        f"<section id=\"schema-{esc(name)}\"><h3>{esc(name)}</h3>"
        f"<pre>{esc(json.dumps(schema, indent=2))}</pre></section>"
        for name, schema in doc["components"]["schemas"].items())
    info = doc["info"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(info['title'])} {esc(info['version'])}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #ccc; padding: .3em .5em; vertical-align: top; text-align: left; }}
pre {{ background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 13px; }}
</style></head><body>
<h1>{esc(info['title'])}
<small>{esc(info['version'])} · AsyncAPI {esc(doc['asyncapi'])}</small></h1>
<p>{esc(info['description'])}</p>
<h2>Channels</h2>
<table><tr><th>address</th><th>kind</th><th>hitlflow</th><th>transport</th><th>messages</th>
<th>reply</th><th>what</th></tr>
{''.join(rows)}
</table>
<h2>Messages</h2>
{''.join(sections)}
<h2>Schemas</h2>
{schemas}
</body></html>
"""
