"""Agents: what a node does. Built-ins here; user agents register by name.

A user agent is any callable ``agent(inputs, ctx) -> value`` (or a class whose instances are
such callables). Return :class:`AgentResult` to choose the failure route; raising routes to
``next_on_failure`` too (or fails the thread when the node has none).

Registration: decorate with :func:`agent` in a module named by ``HITLFLOW_AGENTS`` (comma
separated), or expose it under the ``hitlflow.agents`` entry-point group.

An agent declared ``inline`` only computes (no I/O, no waiting) and returns within a few
milliseconds. When every agent is inline, the workflow service runs its decisions on its event
loop rather than handing each one to a worker thread; an inline agent that overruns
:data:`INLINE_BUDGET_MS` is logged, since it holds up that loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, cast

from services.common.logging import get_logger
from services.workflow.templates import render

log = get_logger(__name__)

#: How long an inline agent may run before it is reported as holding up the loop.
INLINE_BUDGET_MS = 10.0
#: Attribute that marks an agent (function or class) declared inline.
INLINE_MARK = "hitlflow_inline"

INTERACTION_AGENT_TYPES: dict[str, str | None] = {
    "approval_interaction": "approval",
    "edit_interaction": "edit",
    "choice_interaction": "choice",
    "text_input_interaction": "text_input",
    "conversation_interaction": "conversation",
    "human": None,  # the type comes from the node's context
}


@dataclass(frozen=True)
class AgentContext:
    """What an agent may read besides its inputs (all read-only).

    ``prompt`` is the node's prompt filled from the state; ``context`` the node's context JSON;
    ``state`` the whole thread state; ``conversation`` every conversation turn of the thread so
    far (``{"node", "prompt", "action", "message", "responder"}``, oldest first).
    """

    thread_id: str
    node_name: str
    agent_type: str
    prompt: str
    context: Mapping[str, Any]
    state: Mapping[str, Any]
    conversation: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class AgentResult:
    value: Any = None
    success: bool = True
    #: Extra facts to record with the node's completion (e.g. the inputs of a decision).
    details: dict[str, Any] = field(default_factory=dict)


AgentFn = Callable[[dict[str, Any], AgentContext], Any]


class UnknownAgentError(LookupError):
    """A node names an agent type that nobody registered."""


def _single_or_dict(inputs: dict[str, Any]) -> Any:
    if len(inputs) == 1:
        return next(iter(inputs.values()))
    return inputs


def input_agent(inputs: dict[str, Any], ctx: AgentContext) -> Any:
    return _single_or_dict(inputs)


def output_agent(inputs: dict[str, Any], ctx: AgentContext) -> Any:
    return ctx.prompt if ctx.prompt else _single_or_dict(inputs)


def echo_agent(inputs: dict[str, Any], ctx: AgentContext) -> Any:
    return _single_or_dict(inputs)


def branching_agent(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """Routes to success when the input is truthy (or its ``success`` key is)."""
    value = _single_or_dict(inputs)
    flag = value.get("success", bool(value)) if isinstance(value, dict) else bool(value)
    return AgentResult(value=value, success=bool(flag))


BUILTIN_AGENTS: dict[str, AgentFn] = {
    "input": input_agent,
    "output": output_agent,
    "echo": echo_agent,
    "default": echo_agent,
    "branching": branching_agent,
}

_registered: dict[str, AgentFn] = {}


def agent(name: str, *, inline: bool = False) -> Callable[[Any], Any]:
    """Register a user agent under ``name`` (a function, or a class instantiated once).

    ``inline=True`` declares that it only computes and returns within a few milliseconds (see
    the module's description); leave it out for an agent that calls a model, a service or a
    file, or may take long."""

    def register(target: Any) -> Any:
        if inline:
            setattr(target, INLINE_MARK, True)
        _registered[name] = cast(AgentFn, target() if inspect.isclass(target) else target)
        return target

    return register


def _is_builtin(fn: AgentFn) -> bool:
    return any(fn is builtin for builtin in BUILTIN_AGENTS.values())


def is_inline(fn: AgentFn) -> bool:
    return _is_builtin(fn) or bool(getattr(fn, INLINE_MARK, False))


def _watched(name: str, fn: AgentFn) -> AgentFn:
    """``fn``, reporting each run that takes longer than an inline agent should."""

    def run(inputs: dict[str, Any], ctx: AgentContext) -> Any:
        started = time.perf_counter()
        try:
            return fn(inputs, ctx)
        finally:
            took = (time.perf_counter() - started) * 1000
            if took > INLINE_BUDGET_MS:
                log.warning("inline_agent_overran", agent_type=name, node=ctx.node_name,
                            duration_ms=round(took, 1), budget_ms=INLINE_BUDGET_MS,
                            detail="an inline agent holds up the workflow service's loop; "
                                   "register it without inline=True if it waits on anything")

    return run


def _import_agents(module: str) -> None:
    """Import a module by dotted name, or a Python file by path (``agents/my_agents.py``)."""
    if module.endswith(".py") or "/" in module:
        path = Path(module).resolve()
        if not path.exists():
            raise UnknownAgentError(f"agents module file {module!r} does not exist")
        name = f"hitlflow_user_agents_{abs(hash(str(path)))}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UnknownAgentError(f"cannot load agents from {module!r}")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
        return
    importlib.import_module(module)


class AgentRegistry:
    def __init__(self, extra: Mapping[str, AgentFn] | None = None) -> None:
        agents: dict[str, AgentFn] = {**BUILTIN_AGENTS, **_registered, **(extra or {})}
        #: User agents not declared inline, by name.
        self.not_inline = sorted(name for name, fn in agents.items() if not is_inline(fn))
        self._agents = {name: fn if _is_builtin(fn) or name in self.not_inline
                        else _watched(name, fn)  # an inline user agent: its runs are timed
                        for name, fn in agents.items()}

    @property
    def all_inline(self) -> bool:
        """May every agent run on an event loop (each declared inline)?"""
        return not self.not_inline

    @classmethod
    def load(cls, modules: list[str]) -> AgentRegistry:
        """Built-ins, entry points of group ``hitlflow.agents``, then the named modules."""
        found: dict[str, AgentFn] = {}
        for entry in entry_points(group="hitlflow.agents"):
            loaded = entry.load()
            found[entry.name] = cast(AgentFn, loaded() if inspect.isclass(loaded) else loaded)
        for module in modules:
            _import_agents(module)
        return cls({**found, **_registered})

    def names(self) -> set[str]:
        return set(self._agents) | set(INTERACTION_AGENT_TYPES)

    def knows(self, agent_type: str) -> bool:
        return agent_type in self._agents or agent_type in INTERACTION_AGENT_TYPES

    def get(self, agent_type: str) -> AgentFn:
        try:
            return self._agents[agent_type]
        except KeyError:
            raise UnknownAgentError(
                f"unknown agent type {agent_type!r}: known types are "
                f"{', '.join(sorted(self.names()))}"
            ) from None


__all__ = ["AgentContext", "AgentRegistry", "AgentResult", "agent", "render"]
