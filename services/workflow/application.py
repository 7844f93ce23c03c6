"""Workflow service: starts threads, runs graphs, resumes them on accepted answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventsourcing.persistence import Tracking

from contracts.commands import CancelThread, CommandReply, StartThread
from contracts.events import InteractionTimedOut, ResponseAccepted
from contracts.limits import MAX_STATE_BYTES, TooLargeError, check_size
from contracts.timeouts import policy_problem
from contracts.workflow import WorkflowSpec
from services.common.clock import Clock, SystemClock
from services.common.identity import Directory, Identity, IdentityError
from services.common.logging import get_logger
from services.common.store import Job, ServiceApplication
from services.workflow.agents import AgentRegistry
from services.workflow.definition import spec_problems
from services.workflow.domain import (
    Graph,
    Thread,
    ThreadError,
    WorkflowDefinition,
    thread_uuid,
    workflow_uuid,
)

log = get_logger(__name__)

COMMANDS = "commands"


class StartRefusedError(Exception):
    """A StartThread command that cannot start a thread."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkflowService(ServiceApplication):
    name = "workflow"

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        agents: AgentRegistry | None = None,
        clock: Clock | None = None,
        request_defaults: Mapping[str, Any] | None = None,
        directory: Directory | None = None,
    ) -> None:
        super().__init__(env)
        #: Who the principals are; without one, authorization is off.
        self.directory = directory or Directory(None)
        self.agents = agents or AgentRegistry()
        self.clock = clock or SystemClock()
        self.request_defaults = dict(request_defaults or {})
        self._graphs: dict[str, Graph] = {}
        #: Workflow versions known to be stored (they are never changed or removed): a start
        #: need not load the definition again to learn that it exists.
        self._stored_digests: set[str] = set()
        #: Workflow versions whose graph passed the start checks (agents known, timeout
        #: policies, the graph's own rules): they hold for every start of that version.
        self._runnable: set[str] = set()
        log.info("workflow_decisions", on_event_loop=self.decides_in_loop,
                 agents_not_inline=self.agents.not_inline)

    @property
    def decides_in_loop(self) -> bool:
        """Only when every agent is declared inline: any other may block the loop."""
        return super().decides_in_loop and self.agents.all_inline

    # -- commands ---------------------------------------------------------------------------

    def start_thread(self, command: StartThread, principal: str, position: int) -> CommandReply:
        return self.start_reply(command, self.run_job(self.start_job(command, principal,
                                                                     position)))

    def start_job(self, command: StartThread, principal: str, position: int) -> Job:
        """Start the thread (sent under ``principal``) and run it to its first pause or its
        end (see :meth:`start_reply`)."""
        digest = command.workflow.digest

        def decide() -> tuple[list[Any], None]:
            identity = self._identity(principal, command)
            if self.get_or_none(thread_uuid(command.thread_id)) is not None:
                raise StartRefusedError(
                    "thread_exists",
                    f"thread id {command.thread_id!r} is already in use; choose another id",
                )
            spec = command.workflow
            self._check_runnable(spec, digest, command.state)
            new_definition = None
            if (digest not in self._stored_digests
                    and self.get_or_none(workflow_uuid(digest)) is None):
                new_definition = WorkflowDefinition(
                    digest=digest, graph_name=spec.graph_name,
                    spec=spec.model_dump(mode="json"),
                )
            thread = Thread(
                thread_id=command.thread_id, graph_name=spec.graph_name,
                workflow_digest=digest, inputs=command.state, started_by=identity.principal,
                start_node=spec.start, on_behalf_of=identity.on_behalf_of,
            )
            thread.advance(self._graph(digest, spec), self.agents, self.clock.now,
                           self.request_defaults)
            return [a for a in (new_definition, thread) if a is not None], None

        def settled(job: Job) -> None:
            if job.refused is None:
                self._stored_digests.add(digest)

        return Job(command.thread_id, decide, Tracking(f"{COMMANDS}:start", position),
                   refusals=(StartRefusedError,), settled=settled)

    def start_reply(self, command: StartThread, job: Job) -> CommandReply:
        """What the sender of a decided StartThread is told."""
        refused = job.refused
        if isinstance(refused, StartRefusedError):
            return CommandReply(ok=False, command="start", thread_id=command.thread_id,
                                code=refused.code, error=str(refused))
        log.info("thread_started", thread_id=command.thread_id, duplicate=job.duplicate)
        return CommandReply(ok=True, command="start", thread_id=command.thread_id,
                            duplicate=job.duplicate)

    def cancel_thread(self, command: CancelThread, principal: str,
                      position: int) -> CommandReply:
        def decide() -> list[Any]:
            identity = self._identity(principal, command)
            thread = self.get_or_none(thread_uuid(command.thread_id))
            if thread is None:
                raise StartRefusedError("unknown_thread", f"unknown thread {command.thread_id!r}")
            try:
                thread.cancel(command.reason, identity.principal, identity.on_behalf_of)
            except ThreadError as error:
                raise StartRefusedError(error.code, str(error)) from error
            return [thread]

        try:
            handled = self.handle_tracked(f"{COMMANDS}:cancel", position, decide)
        except StartRefusedError as refused:
            return CommandReply(ok=False, command="cancel", thread_id=command.thread_id,
                                code=refused.code, error=str(refused))
        return CommandReply(ok=True, command="cancel", thread_id=command.thread_id,
                            duplicate=not handled)

    def record_refused(self, thread_id: str, command: str, code: str, reason: str,
                       position: int) -> None:
        """Keep a refused command in the history of the thread its subject names, when that
        thread exists (once, however often the message is delivered)."""

        def decide() -> list[Any]:
            thread = self.get_or_none(thread_uuid(thread_id))
            if thread is None:
                return []
            thread.record_refused(command, code, reason)
            return [thread]

        self.handle_tracked(f"{COMMANDS}:{command}", position, decide)

    # -- integration events -----------------------------------------------------------------

    def answer_job(self, thread_id: str, answer: ResponseAccepted, upstream: str,
                   position: int) -> Job:
        """Resume the thread with an accepted answer and run it to its next pause or end."""

        def decide() -> tuple[list[Any], None]:
            thread = self.get_or_none(thread_uuid(thread_id))
            if thread is None:
                log.warning("answer_for_unknown_thread", thread_id=thread_id,
                            interaction_id=answer.request_id)
                return [], None
            try:
                thread.resume(answer.request_id, answer.action, answer.data, answer.value,
                              answer.route, answer.responder, by_timeout=answer.by_timeout)
            except ThreadError as error:
                log.warning("answer_not_applied", thread_id=thread_id,
                            interaction_id=answer.request_id, reason=str(error))
                return [], None
            thread.advance(self._graph_of(thread), self.agents, self.clock.now,
                           self.request_defaults)
            return [thread], None

        return Job(thread_id, decide, Tracking(upstream, position))

    def timed_out_job(self, thread_id: str, timed_out: InteractionTimedOut, upstream: str,
                      position: int) -> Job:
        """A request closed by its ``fail`` timeout policy times the thread out."""

        def decide() -> tuple[list[Any], None]:
            if timed_out.policy != "fail":
                return [], None  # a default answer resumes the thread as ResponseAccepted
            thread = self.get_or_none(thread_uuid(thread_id))
            if thread is None:
                return [], None
            try:
                thread.time_out(timed_out.request_id)
            except ThreadError as error:
                log.warning("timeout_not_applied", thread_id=thread_id,
                            interaction_id=timed_out.request_id, reason=str(error))
                return [], None
            log.info("thread_timed_out", thread_id=thread_id,
                     interaction_id=timed_out.request_id, node=timed_out.node_name)
            return [thread], None

        return Job(thread_id, decide, Tracking(upstream, position))

    # -- queries (own store only) -----------------------------------------------------------

    def thread(self, thread_id: str) -> Thread | None:
        thread: Thread | None = self.get_or_none(thread_uuid(thread_id))
        return thread

    # -- helpers ----------------------------------------------------------------------------

    def _identity(self, principal: str, command: StartThread | CancelThread) -> Identity:
        try:
            return self.directory.resolve(principal, asserted=command.principal,
                                          on_behalf_of=command.on_behalf_of)
        except IdentityError as error:
            raise StartRefusedError(error.code, str(error)) from error

    def _check_runnable(self, spec: WorkflowSpec, digest: str, state: dict[str, Any]) -> None:
        try:
            check_size("the initial state", state, MAX_STATE_BYTES)
        except TooLargeError as error:
            raise StartRefusedError(error.code, str(error)) from error
        if digest not in self._runnable:
            self._check_graph(spec)
            self._runnable.add(digest)
        first = spec.nodes[0]
        if first.agent_type == "input":
            missing = [f for f in first.input_fields if f not in state]
            if missing:
                raise StartRefusedError(
                    "missing_input",
                    f"state is missing {', '.join(map(repr, missing))} needed by the start node "
                    f"{first.name!r}; pass e.g. --state '{{\"{missing[0]}\": ...}}'",
                )

    def _check_graph(self, spec: WorkflowSpec) -> None:
        unknown = sorted({n.agent_type for n in spec.nodes if not self.agents.knows(n.agent_type)})
        if unknown:
            raise StartRefusedError(
                "unknown_agent",
                f"graph {spec.graph_name!r} uses agent types this workflow service does not "
                f"know: {', '.join(unknown)} (register them with HITLFLOW_AGENTS)",
            )
        for node in spec.nodes:
            problem = (policy_problem(node.context["on_timeout"])
                       if "on_timeout" in node.context else None)
            if problem:
                raise StartRefusedError(
                    "invalid_workflow", f"node {node.name!r} (row {node.row}): {problem}")
        problems = spec_problems(spec)  # for graphs that did not come through the CSV loader
        if problems:
            raise StartRefusedError("invalid_workflow", "; ".join(str(p) for p in problems[:5]))

    def _graph(self, digest: str, spec: WorkflowSpec) -> Graph:
        graph = self._graphs.get(digest)
        if graph is None:
            graph = self._graphs[digest] = Graph(spec)
        return graph

    def _graph_of(self, thread: Thread) -> Graph:
        graph = self._graphs.get(thread.workflow_digest)
        if graph is None:
            definition: WorkflowDefinition = self.load(workflow_uuid(thread.workflow_digest))
            graph = self._graphs[thread.workflow_digest] = definition.graph()
        return graph
