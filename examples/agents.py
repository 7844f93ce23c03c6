"""User agents for the guide's example workflows, registered like any user's own agents.

Point the services at this module with ``HITLFLOW_AGENTS=examples.agents``.
"""

from __future__ import annotations

from typing import Any

from hitlflow.agents import AgentContext, AgentResult, agent


@agent("validation_agent")
def validate_request(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """A request is valid when it is non-empty text (or an object with a non-empty 'request')."""
    request = next(iter(inputs.values()), None) if inputs else None
    text = request.get("request") if isinstance(request, dict) else request
    problems = []
    if not isinstance(text, str) or not text.strip():
        problems.append("request is empty")
    elif len(text) > 2000:
        problems.append("request is longer than 2000 characters")
    summary = {"request": text, "valid": not problems, "problems": problems}
    return AgentResult(value=summary, success=not problems)


@agent("processing_agent")
def process_request(inputs: dict[str, Any], ctx: AgentContext) -> str:
    request = next(iter(inputs.values()), None) if inputs else None
    return f"processed: {request}"
