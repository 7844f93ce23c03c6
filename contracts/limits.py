"""Every size limit of the contract, in one place.

Each input is checked where it enters (CLI, HTTP gateway, NATS command handlers, CSV loader)
before anything is stored, and refused with an error that names the limit: exit 2 from the CLI,
HTTP 413 from the gateway, code ``too_large`` from a service (kept in the audit as a
``ResponseRejected`` for an answer). Sizes are bytes of compact UTF-8 JSON (:func:`json_size`),
or characters for the short strings that name things.

The events are sized from the inputs they carry, so nothing accepted at an edge can become an
event the NATS server refuses: :data:`MAX_EVENT_PAYLOAD_BYTES` bounds every event's payload
(the workflow service refuses to raise a request, or to keep a node's output, that would break
it), an envelope adds at most :data:`ENVELOPE_OVERHEAD_BYTES`, and :data:`NATS_MAX_PAYLOAD` (what
the embedded and deployed servers are configured with; the services refuse to start on a server
that allows less than :data:`REQUIRED_NATS_PAYLOAD`) leaves room above both.
"""

from __future__ import annotations

import json
from typing import Any, Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

# ---- names and keys (characters) ------------------------------------------------------------
#: A thread id (also a NATS subject token: letters, digits, ``_`` and ``-``).
MAX_THREAD_ID: Final = 128
#: An answer's action (``approve``, ``choose``, …).
MAX_ACTION: Final = 64
#: An idempotency key.
MAX_IDEMPOTENCY_KEY: Final = 200
#: A responder's, starter's or canceller's name.
MAX_NAME: Final = 200
#: A request id (a UUID).
MAX_REQUEST_ID: Final = 64
#: A cancel reason.
MAX_REASON: Final = 2_000
#: Names in one list: groups of a person, assignees or candidate groups of a request, voters.
MAX_GROUPS: Final = 100
#: A ``shown`` token (a request's version and digest).
MAX_SHOWN: Final = 100

# ---- payloads (bytes of compact JSON) -------------------------------------------------------
#: An answer's ``data`` (or, when it was not JSON, the text as typed).
MAX_ANSWER_BYTES: Final = 256 * KIB
#: A thread's initial state.
MAX_STATE_BYTES: Final = 256 * KIB
#: What one node may produce (its output, and its details): more than an answer, whose value a
#: person's node hands on.
MAX_OUTPUT_BYTES: Final = 512 * KIB
#: A request's prompt, once filled from the thread's state.
MAX_PROMPT_BYTES: Final = 64 * KIB
#: A request's context as shown to the responder (the node's context and its input fields).
MAX_CONTEXT_BYTES: Final = 256 * KIB
#: Choice options of one request, and the length of each.
MAX_OPTIONS: Final = 100
MAX_OPTION_CHARS: Final = 1_000

# ---- workflows ------------------------------------------------------------------------------
#: A CSV workflow file (or the CSV text sent over HTTP).
MAX_WORKFLOW_BYTES: Final = 256 * KIB
#: One CSV cell.
MAX_CELL_CHARS: Final = 64 * KIB
#: Nodes of one graph.
MAX_NODES: Final = 500

# ---- messages -------------------------------------------------------------------------------
#: A command message (StartThread carries the workflow and the initial state).
MAX_COMMAND_BYTES: Final = 1 * MIB
#: An event's payload: a paused node's requests together, an accepted answer (data and the
#: value it gives the graph: at most twice the answer, or the answer and an edit's original).
MAX_EVENT_PAYLOAD_BYTES: Final = 1 * MIB
#: What an envelope adds to its payload (ids, names, times), at most.
ENVELOPE_OVERHEAD_BYTES: Final = 2 * KIB
#: The largest event message: payload and envelope.
MAX_EVENT_BYTES: Final = MAX_EVENT_PAYLOAD_BYTES + ENVELOPE_OVERHEAD_BYTES
#: Headers and protocol framing NATS counts against max_payload, with room to spare.
HEADER_ALLOWANCE_BYTES: Final = 8 * KIB
#: The least max_payload a NATS server must allow for hitlflow to run on it.
REQUIRED_NATS_PAYLOAD: Final = max(MAX_EVENT_BYTES, MAX_COMMAND_BYTES) + HEADER_ALLOWANCE_BYTES
#: max_payload of the embedded nats-server and of the deployment files' servers.
NATS_MAX_PAYLOAD: Final = 2 * MIB

# ---- lists ----------------------------------------------------------------------------------
#: Items of one page of a list reply (threads, pending requests, audit entries, events).
MAX_PAGE_ITEMS: Final = 500
#: Bytes of one page of a list reply: a page ends before the item that would pass this (a
#: single item larger than it still comes, alone).
MAX_PAGE_BYTES: Final = 1 * MIB
#: Deadlines one ``timeouts check`` fires, or one ``timeouts list`` shows (each well under
#: 512 bytes in the reply, which is one message).
MAX_TIMEOUT_LIST: Final = 2_000


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (how the contract measures a payload)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          default=str).encode())


def describe(size: int) -> str:
    """``262,144 bytes (256 KiB)``: a size as people read it in an error."""
    if size >= MIB and size % MIB == 0:
        return f"{size:,} bytes ({size // MIB} MiB)"
    if size >= KIB and size % KIB == 0:
        return f"{size:,} bytes ({size // KIB} KiB)"
    return f"{size:,} bytes"


class TooLargeError(ValueError):
    """An input larger than its limit."""

    code = "too_large"

    def __init__(self, what: str, size: int, limit: int, unit: str = "bytes") -> None:
        self.what = what
        self.size = size
        self.limit = limit
        if unit == "bytes":
            message = (f"{what} is {size:,} bytes, more than the {describe(limit)} allowed "
                       "(limits: docs/contract.md#limits)")
        else:
            message = (f"{what} is {size:,} {unit}, more than the {limit:,} allowed "
                       "(limits: docs/contract.md#limits)")
        super().__init__(message)


class NotTextError(ValueError):
    """An input holding text that is not Unicode: a lone surrogate, which JSON can spell as an
    escape (``"\\ud800"``) and Python's json module reads, but no UTF-8 message can carry."""

    code = "invalid_command"

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} holds text that is not valid Unicode (a lone surrogate, such "
                         "as the JSON escape \\ud800 without its pair); expected UTF-8 text")


def check_size(what: str, value: Any, limit: int) -> int:
    """The JSON size of ``value``; raises :class:`TooLargeError` naming ``what`` over ``limit``,
    :class:`NotTextError` when it holds text no message can carry."""
    try:
        size = json_size(value)
    except UnicodeEncodeError:
        raise NotTextError(what) from None
    if size > limit:
        raise TooLargeError(what, size, limit)
    return size


def check_bytes(what: str, size: int, limit: int) -> None:
    """Raise :class:`TooLargeError` when ``size`` (already measured) is over ``limit``."""
    if size > limit:
        raise TooLargeError(what, size, limit)


LIMITS: Final[dict[str, tuple[int, str, str]]] = {
    # name: (value, unit, what it bounds)
    "thread_id": (MAX_THREAD_ID, "characters", "a thread id (letters, digits, _ and -)"),
    "action": (MAX_ACTION, "characters", "an answer's action"),
    "idempotency_key": (MAX_IDEMPOTENCY_KEY, "characters", "an idempotency key"),
    "name": (MAX_NAME, "characters", "a responder's, starter's or canceller's name"),
    "request_id": (MAX_REQUEST_ID, "characters", "a request id"),
    "reason": (MAX_REASON, "characters", "a cancel reason"),
    "groups": (MAX_GROUPS, "names", "groups of a person; assignees, candidate groups or voters "
                                    "of a request"),
    "shown": (MAX_SHOWN, "characters", "a shown token (a request's version and digest)"),
    "answer": (MAX_ANSWER_BYTES, "bytes", "an answer's data as JSON (or its text as typed)"),
    "state": (MAX_STATE_BYTES, "bytes", "a thread's initial state as JSON"),
    "output": (MAX_OUTPUT_BYTES, "bytes", "one node's output (and details) as JSON"),
    "prompt": (MAX_PROMPT_BYTES, "bytes", "a request's prompt, filled from the state"),
    "context": (MAX_CONTEXT_BYTES, "bytes", "a request's context as shown, as JSON"),
    "options": (MAX_OPTIONS, "options", "choice options of one request"),
    "option": (MAX_OPTION_CHARS, "characters", "one choice option"),
    "workflow": (MAX_WORKFLOW_BYTES, "bytes", "a CSV workflow (file or text)"),
    "cell": (MAX_CELL_CHARS, "characters", "one CSV cell"),
    "nodes": (MAX_NODES, "nodes", "nodes of one graph"),
    "command": (MAX_COMMAND_BYTES, "bytes", "a command message"),
    "event_payload": (MAX_EVENT_PAYLOAD_BYTES, "bytes", "an event's payload as JSON"),
    "event": (MAX_EVENT_BYTES, "bytes", "an event message (payload and envelope)"),
    "nats_max_payload": (NATS_MAX_PAYLOAD, "bytes",
                         "max_payload of the embedded and deployed NATS servers"),
    "nats_required_payload": (REQUIRED_NATS_PAYLOAD, "bytes",
                              "the least max_payload a NATS server must allow"),
    "page_items": (MAX_PAGE_ITEMS, "items", "items of one page of a list reply"),
    "page_bytes": (MAX_PAGE_BYTES, "bytes", "one page of a list reply"),
    "timeout_list": (MAX_TIMEOUT_LIST, "deadlines",
                     "deadlines one 'timeouts check' fires or one 'timeouts list' shows"),
}
