"""Workflow domain: the Thread aggregate and how a graph advances. No I/O.

A thread runs node after node until a node needs a person (ThreadPaused), the graph ends
(ThreadCompleted) or something fails (ThreadFailed). Answers arrive as ThreadResumed; once
every pending request of the paused node is answered the thread runs on.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from pydantic import ValidationError

from contracts.events import InteractionSpec
from contracts.limits import (
    MAX_CONTEXT_BYTES,
    MAX_EVENT_PAYLOAD_BYTES,
    MAX_OPTION_CHARS,
    MAX_OPTIONS,
    MAX_OUTPUT_BYTES,
    MAX_PROMPT_BYTES,
    TooLargeError,
    check_size,
    json_size,
)
from contracts.workflow import NodeSpec, WorkflowSpec
from services.common.responses import InteractionError, decide
from services.workflow.agents import AgentContext, AgentRegistry, AgentResult
from services.workflow.conditions import ConditionError, Evaluation
from services.workflow.conditions import parse as parse_condition
from services.workflow.definition import (
    FallbackConfig,
    batch_of,
    fallback_of,
    interaction_type_of,
    otherwise_of,
)
from services.workflow.templates import fill

NAMESPACE = UUID("6f1d3c52-3b0e-4c1e-9d47-1f0a4d0c9e11")
#: Steps one advance may take without pausing: guards against loops of automatic nodes.
MAX_STEPS_PER_ADVANCE = 1000
#: Longest error message kept in a NodeFailed or ThreadFailed (an agent's exception may say more).
MAX_ERROR_CHARS = 2_000
#: Largest state value a NodeDecided keeps whole in ``inputs`` (bigger ones: size and digest).
MAX_DECIDED_INPUT_BYTES = 4_096
#: Context keys that steer an interaction rather than being shown to the responder.
CONTROL_KEYS = frozenset({
    "interaction_type", "options", "timeout_seconds", "on_timeout", "assignees",
    "candidate_groups", "quorum", "response_schema", "condition", "batch", "fallback",
    "urgency", "otherwise", "sensitive",
})


def thread_uuid(thread_id: str) -> UUID:
    return uuid5(NAMESPACE, f"thread:{thread_id}")


def workflow_uuid(digest: str) -> UUID:
    return uuid5(NAMESPACE, f"workflow:{digest}")


def interaction_id(thread_id: str, pause_number: int, index: int) -> str:
    return str(uuid5(NAMESPACE, f"interaction:{thread_id}:{pause_number}:{index}"))


class ThreadError(Exception):
    """Base of the workflow rules' refusals."""

    code = "thread_error"


class ThreadNotWaitingError(ThreadError):
    """An answer for a request the thread is not waiting on."""

    code = "not_waiting"


class ThreadFinishedError(ThreadError):
    """A change to a thread that has already ended."""

    code = "thread_ended"


class RequestBuildError(ThreadError):
    """An interaction request that cannot be built from its node and the thread's state."""

    code = "request_failed"


class Graph:
    """A validated workflow definition, indexed by node name."""

    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        self.nodes: dict[str, NodeSpec] = {node.name: node for node in spec.nodes}

    def node(self, name: str) -> NodeSpec:
        return self.nodes[name]


class WorkflowDefinition(Aggregate):
    """A workflow version, stored once by digest; threads refer to it."""

    @staticmethod
    def create_id(digest: str) -> UUID:
        return workflow_uuid(digest)

    @event("Registered")
    def __init__(self, digest: str, graph_name: str, spec: dict[str, Any]) -> None:
        self.digest = digest
        self.graph_name = graph_name
        self.spec = spec

    def graph(self) -> Graph:
        return Graph(WorkflowSpec.model_validate(self.spec))


class Thread(Aggregate):
    @staticmethod
    def create_id(thread_id: str) -> UUID:
        return thread_uuid(thread_id)

    @event("ThreadStarted")
    def __init__(
        self,
        thread_id: str,
        graph_name: str,
        workflow_digest: str,
        inputs: dict[str, Any],
        started_by: str,
        start_node: str,
        on_behalf_of: str | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.graph_name = graph_name
        self.workflow_digest = workflow_digest
        self.inputs = inputs
        self.started_by = started_by
        self.state: dict[str, Any] = dict(inputs)
        self.status = "running"
        self.current_node: str | None = start_node
        self.pending: dict[str, dict[str, Any]] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.pause_count = 0
        self.conversation: list[dict[str, Any]] = []
        self.output: Any = None
        self.error: str | None = None

    # -- events -----------------------------------------------------------------------------

    @event("NodeCompleted")
    def _node_completed(
        self,
        node: str,
        output: Any,
        output_field: str | None,
        route: str | None,
        next_node: str | None,
        duration_ms: float,
        details: dict[str, Any] | None = None,
        conversation_turn: dict[str, Any] | None = None,
    ) -> None:
        if output_field:
            self.state[output_field] = output
        if conversation_turn:
            self.conversation.append(conversation_turn)
        self.answers = {}
        self.output = output
        self.current_node = next_node

    @event("NodeFailed")
    def _node_failed(self, node: str, error: str, next_node: str | None) -> None:
        self.current_node = next_node

    @event("CommandRefused")
    def _command_refused(self, command: str, code: str, reason: str) -> None:
        """A record only: the refused command changed nothing."""

    @event("NodeDecided")
    def _node_decided(
        self, node: str, interaction_type: str, expression: str, inputs: dict[str, Any],
        result: bool, action: str, data: dict[str, Any] | None, value: Any, route: str,
    ) -> None:
        """A record only: the NodeCompleted that follows moves the thread on."""

    @event("FallbackTaken")
    def _fallback_taken(
        self, node: str, interaction_type: str, reason: str, error: str | None,
        next_node: str | None, action: str | None, data: dict[str, Any] | None, value: Any,
        route: str | None,
    ) -> None:
        """A record only: the NodeCompleted that follows moves the thread on."""

    @event("ThreadPaused")
    def _paused(self, node: str, interactions: list[dict[str, Any]]) -> None:
        self.status = "paused"
        self.pause_count += 1
        self.pending = {spec["id"]: spec for spec in interactions}
        self.answers = {}

    @event("ThreadResumed")
    def _resumed(
        self,
        node: str,
        interaction_id: str,
        action: str,
        data: dict[str, Any] | None,
        value: Any,
        route: str,
        responder: str,
        by_timeout: bool = False,
        waiting_on: int = 0,
    ) -> None:
        spec = self.pending.pop(interaction_id)
        self.answers[interaction_id] = {
            "action": action, "data": data, "value": value, "route": route,
            "responder": responder, "batch_index": spec.get("batch_index", 0),
            "prompt": spec.get("prompt", ""), "by_timeout": by_timeout,
            "items": (spec.get("context") or {}).get("batch_items"),
        }
        if not self.pending:
            self.status = "running"

    @event("ThreadCompleted")
    def _completed(self, node: str, output: Any) -> None:
        self.status = "completed"
        self.current_node = None

    @event("ThreadFailed")
    def _failed(self, node: str | None, error: str) -> None:
        self.status = "failed"
        self.error = error

    @event("ThreadTimedOut")
    def _timed_out(self, node: str, interaction_id: str) -> None:
        self.status = "timed_out"
        self.pending = {}

    @event("ThreadCancelled")
    def _cancelled(self, reason: str, requested_by: str, on_behalf_of: str | None = None) -> None:
        self.status = "cancelled"
        self.pending = {}

    # -- commands ---------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "failed", "timed_out", "cancelled")

    def resume(
        self,
        interaction_id: str,
        action: str,
        data: dict[str, Any] | None,
        value: Any,
        route: str,
        responder: str,
        *,
        by_timeout: bool = False,
    ) -> None:
        """Take one accepted answer; raises when the thread does not wait on that request."""
        if self.ended:
            raise ThreadFinishedError(f"thread {self.thread_id!r} is {self.status}")
        if interaction_id not in self.pending:
            raise ThreadNotWaitingError(
                f"thread {self.thread_id!r} is not waiting on request {interaction_id}"
            )
        self._resumed(self.current_node or "", interaction_id, action, data, value, route,
                      responder, by_timeout, len(self.pending) - 1)

    def time_out(self, interaction_id: str) -> None:
        if self.ended:
            raise ThreadFinishedError(f"thread {self.thread_id!r} is {self.status}")
        if interaction_id not in self.pending:
            raise ThreadNotWaitingError(
                f"thread {self.thread_id!r} is not waiting on request {interaction_id}"
            )
        self._timed_out(self.current_node or "", interaction_id)

    def record_refused(self, command: str, code: str, reason: str) -> None:
        """Keep a command for this thread that was refused before it could act."""
        self._command_refused(command, code, reason[:MAX_ERROR_CHARS])

    def cancel(self, reason: str, requested_by: str, on_behalf_of: str | None = None) -> None:
        if self.ended:
            raise ThreadFinishedError(f"thread {self.thread_id!r} is already {self.status}")
        self._cancelled(reason, requested_by, on_behalf_of)

    def advance(
        self,
        graph: Graph,
        agents: AgentRegistry,
        now: Callable[[], datetime],
        request_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """Run automatic nodes until the thread pauses, completes or fails."""
        steps = 0
        while self.status == "running":
            steps += 1
            if steps > MAX_STEPS_PER_ADVANCE:
                self._failed(self.current_node, f"more than {MAX_STEPS_PER_ADVANCE} steps "
                             "without a pause: does the graph loop through automatic nodes?")
                return
            assert self.current_node is not None
            node = graph.node(self.current_node)
            kind = interaction_type_of(node)
            if kind is not None:
                if not self.answers:
                    # pauses, or decides without a person (condition false, fallback)
                    self._ask(node, kind, now, request_defaults or {})
                    continue
                self._complete_interaction_node(node, kind)
            else:
                self._run_agent(node, agents)

    # -- helpers ----------------------------------------------------------------------------

    def _finish_node(
        self, node: NodeSpec, output: Any, route: str, duration_ms: float,
        details: dict[str, Any] | None = None, conversation_turn: dict[str, Any] | None = None,
    ) -> None:
        try:
            # every output is kept in the thread's events and state: a loop that feeds a node
            # its own output (or a long conversation) would otherwise grow without bound
            check_size(f"the output of node {node.name!r} (with its details)",
                       [output, details, conversation_turn], MAX_OUTPUT_BYTES)
        except TooLargeError as error:
            self._fail_node(node, f"OutputTooLargeError: {error}")
            return
        next_node = node.next_on_success if route == "success" else node.next_on_failure
        self._node_completed(node.name, output, node.output_field, route, next_node,
                             round(duration_ms, 3), details, conversation_turn)
        if next_node is None:
            self._completed(node.name, output)

    def _run_agent(self, node: NodeSpec, agents: AgentRegistry) -> None:
        inputs = {f: self.state.get(f) for f in node.input_fields}
        prompt = fill(node.prompt, self.state)
        ctx = AgentContext(
            thread_id=self.thread_id, node_name=node.name, agent_type=node.agent_type,
            prompt=prompt.text, context=node.context,
            state=dict(self.state), conversation=tuple(self.conversation),
        )
        started = time.perf_counter()
        try:
            if node.agent_type == "input":
                missing = [f for f in node.input_fields if f not in self.state]
                if missing:
                    raise KeyError(f"thread state has no {', '.join(map(repr, missing))}")
            result = agents.get(node.agent_type)(inputs, ctx)
        except Exception as error:
            message = _error_text(error)
            self._node_failed(node.name, message, node.next_on_failure)
            if node.next_on_failure is None:
                self._failed(node.name, f"node {node.name!r} failed: {message}")
            return
        duration_ms = (time.perf_counter() - started) * 1000
        # the prompt's fields the state lacked (shown as the marker), for the audit
        unfilled = {"missing_fields": list(prompt.missing)} if prompt.missing else {}
        if isinstance(result, AgentResult):
            self._finish_node(node, result.value, "success" if result.success else "failure",
                              duration_ms, {**(result.details or {}), **unfilled} or None)
        else:
            self._finish_node(node, result, "success", duration_ms, unfilled or None)

    def _ask(
        self, node: NodeSpec, kind: str, now: Callable[[], datetime],
        defaults: Mapping[str, Any],
    ) -> None:
        """Pause for a person, unless the node's fallback policy or its condition says not to.

        A condition that cannot be evaluated asks the person (the safe side) and says why in
        the request's context. A request that cannot be built takes the node's fallback, or
        fails the node when it has none.
        """
        fallback = fallback_of(node)
        if fallback is not None and fallback.when == "always":
            self._take_fallback(node, kind, fallback, "policy", None)
            return
        asked_because: dict[str, Any] | None = None
        if "condition" in node.context:
            try:
                evaluation = parse_condition(node.context["condition"]).evaluate(self.state)
            except ConditionError as error:
                asked_because = {"condition": node.context["condition"], "error": str(error)}
            else:
                if not evaluation.result:
                    self._decide_without_person(node, kind, evaluation)
                    return
                asked_because = {"condition": evaluation.expression,
                                 "inputs": evaluation.inputs, "result": True}
        try:
            self._pause_at(node, kind, now, defaults, asked_because)
        except RequestBuildError as error:
            if fallback is not None:
                self._take_fallback(node, kind, fallback, "request_failed", str(error))
                return
            self._fail_node(node, f"RequestBuildError: {error}")

    def _fail_node(self, node: NodeSpec, message: str) -> None:
        message = message[:MAX_ERROR_CHARS]
        self._node_failed(node.name, message, node.next_on_failure)
        if node.next_on_failure is None:
            self._failed(node.name, f"node {node.name!r} failed: {message}")

    def _shown(self, node: NodeSpec, kind: str) -> dict[str, Any]:
        """The context a person is shown: the node's context and its input fields."""
        shown = {k: v for k, v in node.context.items() if k not in CONTROL_KEYS}
        for field in node.input_fields:
            shown.setdefault(field, self.state.get(field))
        if kind == "edit" and "original_content" not in shown and len(node.input_fields) == 1:
            shown["original_content"] = self.state.get(node.input_fields[0])
        return shown

    def _decide_without_person(self, node: NodeSpec, kind: str, evaluation: Evaluation) -> None:
        """The condition was false: take the node's ``otherwise`` response, by the same rules."""
        response = otherwise_of(node, kind) or {}
        action, data = str(response.get("action", "")), response.get("data")
        try:
            decision = decide(kind, list(node.context.get("options") or []),
                              self._shown(node, kind), action, data)
        except InteractionError as error:
            self._fail_node(node, f"its \"otherwise\" response is invalid: {error}")
            return
        self._node_decided(node.name, kind, evaluation.expression,
                           _summarised(evaluation.inputs), False, action, data, decision.value,
                           decision.route)
        self._finish_node(node, decision.value, decision.route, 0.0,
                          {"action": action, "decided_by": "condition"})

    def _take_fallback(self, node: NodeSpec, kind: str, fallback: FallbackConfig, reason: str,
                       error: str | None) -> None:
        """The automated fallback: route to its node, or decide with its response."""
        if fallback.to:
            value = {"fallback": True, "reason": reason, "error": error}
            self._fallback_taken(node.name, kind, reason, error, fallback.to, None, None, value,
                                 None)
            self._node_completed(node.name, value, node.output_field, None, fallback.to, 0.0,
                                 {"fallback": reason})
            return
        action = str(fallback.action or "")
        try:
            decision = decide(kind, list(node.context.get("options") or []),
                              self._shown(node, kind), action, fallback.data)
        except InteractionError as invalid:
            self._fail_node(node, f"its fallback response is invalid: {invalid}")
            return
        self._fallback_taken(node.name, kind, reason, error, None, action, fallback.data,
                             decision.value, decision.route)
        self._finish_node(node, decision.value, decision.route, 0.0,
                          {"action": action, "fallback": reason})

    def _batch_specs(self, node: NodeSpec, spec: dict[str, Any]) -> list[dict[str, Any]]:
        """One request per batch of the node's items (the guide's batch interaction)."""
        try:
            batch = batch_of(node)
        except (TypeError, ValueError) as error:
            raise RequestBuildError(f"invalid batch settings: {error}") from error
        assert batch is not None
        items = self.state.get(batch.items_field)
        if not isinstance(items, list):
            raise RequestBuildError(
                f"batch items field {batch.items_field!r} holds "
                f"{'nothing' if items is None else type(items).__name__}; expected a list"
            )
        if batch.size < 1:
            raise RequestBuildError(f"batch size must be at least 1, got {batch.size}")
        chunks = [items[i:i + batch.size] for i in range(0, len(items), batch.size)]
        shown = {k: v for k, v in spec["context"].items() if k != batch.items_field}
        specs = []
        for index, chunk in enumerate(chunks):
            extra = {"batch_number": index + 1, "total_batches": len(chunks),
                     "batch_items": chunk, "items_count": len(chunk)}
            prompt = fill(node.prompt, {**self.state, **extra})
            missing = {"missing_fields": list(prompt.missing)} if prompt.missing else {}
            specs.append({**spec, "id": interaction_id(self.thread_id, self.pause_count, index),
                          "prompt": prompt.text or
                          f"Please review batch {index + 1} of {len(chunks)}:",
                          "context": {**shown, **extra, **missing},
                          "batch_index": index, "batch_size": len(chunks)})
        return specs

    def _pause_at(
        self, node: NodeSpec, kind: str, now: Callable[[], datetime],
        defaults: Mapping[str, Any], asked_because: dict[str, Any] | None = None,
    ) -> None:
        shown = self._shown(node, kind)
        if asked_because is not None:
            shown["asked_because"] = asked_because
        prompt = fill(node.prompt, self.state)
        if prompt.missing and "batch" not in node.context:  # a batch's prompts: _batch_specs
            shown["missing_fields"] = list(prompt.missing)
        timeout = node.context.get("timeout_seconds", defaults.get(kind))
        spec = {
            "id": interaction_id(self.thread_id, self.pause_count, 0),
            "thread_id": self.thread_id,
            "node_name": node.name,
            "interaction_type": kind,
            "prompt": prompt.text or f"Input needed at {node.name}",
            "context": shown,
            "options": list(node.context.get("options") or []),
            "timeout_seconds": timeout,
            "on_timeout": node.context.get("on_timeout"),
            "assignees": list(node.context.get("assignees") or []),
            "candidate_groups": list(node.context.get("candidate_groups") or []),
            "quorum": node.context.get("quorum"),
            "response_schema": node.context.get("response_schema"),
            "batch_index": 0,
            "batch_size": 1,
            # fields of the context whose values the audit keeps as digests only
            "sensitive": [str(k) for k in node.context.get("sensitive") or []],
        }
        specs = self._batch_specs(node, spec) if "batch" in node.context else [spec]
        if not specs:  # an empty batch: nothing to review
            self._finish_node(node, [], "success", 0.0, {"batch_items": 0})
            return
        try:
            for checked in specs:
                InteractionSpec.model_validate(checked)
        except ValidationError as error:
            raise RequestBuildError(f"the request does not fit the contract: {error}") from error
        _check_request_sizes(node, specs)
        self._paused(node.name, specs)

    def _complete_interaction_node(self, node: NodeSpec, kind: str) -> None:
        answers = sorted(self.answers.values(), key=lambda a: a["batch_index"])
        if "batch" in node.context:  # every batch's answer, in batch order
            results = [{"batch_number": a["batch_index"] + 1, "items": a["items"],
                        "action": a["action"], "value": a["value"],
                        "responder": a["responder"], "by_timeout": a["by_timeout"]}
                       for a in answers]
            route = "success" if all(a["route"] == "success" for a in answers) else "failure"
            self._finish_node(node, results, route, 0.0,
                              {"actions": [a["action"] for a in answers], "batches": len(answers)})
            return
        answer = answers[0]
        value = answer["value"]
        turn = None
        if kind == "conversation":
            turn = {"node": node.name, "prompt": answer["prompt"], "action": answer["action"],
                    "message": (answer["data"] or {}).get("message"),
                    "responder": answer["responder"]}
            value = {**(value if isinstance(value, dict) else {"message": value}),
                     "history": [*self.conversation, turn]}
        self._finish_node(node, value, answer["route"], 0.0,
                          {"action": answer["action"], "responder": answer["responder"],
                           "by_timeout": answer["by_timeout"]}, turn)


def _error_text(error: BaseException) -> str:
    """``Type: message`` of an agent's exception, cut to what an event keeps."""
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


def _summarised(values: dict[str, Any]) -> dict[str, Any]:
    """State values as a NodeDecided keeps them: whole when small, else their size and digest
    (the decision is explained; the thread's state holds the values themselves)."""
    kept: dict[str, Any] = {}
    for name, value in values.items():
        size = json_size(value)
        if size <= MAX_DECIDED_INPUT_BYTES:
            kept[name] = value
        else:
            canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
            kept[name] = {"size": size,
                          "sha256": hashlib.sha256(canonical.encode()).hexdigest()}
    return kept


def _check_request_sizes(node: NodeSpec, specs: list[dict[str, Any]]) -> None:
    """A request must fit its limits, and a pause's requests one event: else it is refused
    here (RequestBuildError: the node's fallback, or its failure), never saved unpublishable."""

    def check(what: str, value: Any, limit: int, hint: str) -> None:
        try:
            check_size(what, value, limit)
        except TooLargeError as error:
            raise RequestBuildError(f"{error}; {hint}") from error

    for spec in specs:
        check("the prompt (filled from the thread's state)", spec["prompt"], MAX_PROMPT_BYTES,
              "shorten the prompt or the state values it shows")
        check("the context shown to the responder", spec["context"], MAX_CONTEXT_BYTES,
              "show fewer or smaller input fields")
        options = spec["options"]
        if len(options) > MAX_OPTIONS:
            raise RequestBuildError(str(TooLargeError("the list of options", len(options),
                                                      MAX_OPTIONS, unit="options")))
        longest = max((len(str(o)) for o in options), default=0)
        if longest > MAX_OPTION_CHARS:
            raise RequestBuildError(str(TooLargeError("an option", longest, MAX_OPTION_CHARS,
                                                      unit="characters")))
    check(f"the {len(specs)} request(s) of node {node.name!r} together", specs,
          MAX_EVENT_PAYLOAD_BYTES - 4_096, "make the batch smaller or show less")
