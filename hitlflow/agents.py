"""What a user needs to write agents: register with :func:`agent`, return a value or an
:class:`AgentResult`, read the node and thread from :class:`AgentContext`."""

from services.workflow.agents import AgentContext, AgentRegistry, AgentResult, agent

__all__ = ["AgentContext", "AgentRegistry", "AgentResult", "agent"]
