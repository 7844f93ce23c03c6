"""What an answer means: the five interaction types' rules (DESIGN.md's table). Pure.

Shared by the interaction service, which decides people's answers, and the workflow service,
which takes the same decisions when a node's condition or fallback answers in a person's place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACTIONS: dict[str, tuple[str, ...]] = {
    "approval": ("approve", "reject"),
    "edit": ("edit", "approve", "reject"),
    "choice": ("choose",),
    "text_input": ("respond",),
    "conversation": ("respond", "end"),
}


class InteractionError(Exception):
    """Base of refused responses; ``code`` is stable for machines, the message for people."""

    code = "invalid_response"


class InvalidResponseError(InteractionError):
    """The action or data does not fit the request's interaction type."""

    code = "invalid_response"


@dataclass(frozen=True)
class Decision:
    """What an accepted response means for the graph."""

    value: Any
    route: str  # "success" | "failure"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _require_object(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidResponseError(
            f"response data must be a JSON object, got {type(data).__name__}"
        )
    return data


def _optional_str(data: dict[str, Any], key: str) -> None:
    if key in data and data[key] is not None and not isinstance(data[key], str):
        raise InvalidResponseError(f"'{key}' must be a string, got {type(data[key]).__name__}")


def decide(
    interaction_type: str,
    options: list[str],
    context: dict[str, Any],
    action: str,
    data: Any,
) -> Decision:
    """Check a response against the type's rules; the value and route it hands to the graph."""
    allowed = ACTIONS[interaction_type]
    if action not in allowed:
        raise InvalidResponseError(
            f"action {action!r} is not valid for {_article(interaction_type)} {interaction_type} "
            "interaction; "
            f"expected one of: {', '.join(allowed)}"
        )
    body = _require_object(data)
    if interaction_type == "approval":
        _optional_str(body, "reason")
        return Decision({"approved": action == "approve", **body},
                        "success" if action == "approve" else "failure")
    if interaction_type == "edit":
        if action == "edit":
            if body.get("edited") is None:
                raise InvalidResponseError(
                    "an edit response needs 'edited': the edited content, "
                    "e.g. --data '{\"edited\": \"...\"}'"
                )
            return Decision(body["edited"], "success")
        if action == "approve":
            return Decision(context.get("original_content"), "success")
        _optional_str(body, "reason")
        return Decision(context.get("original_content"), "failure")
    if interaction_type == "choice":
        return Decision(_choice(options, body), "success")
    if interaction_type == "text_input":
        if isinstance(body.get("text"), str):
            return Decision(body["text"], "success")
        if "text" in body:
            raise InvalidResponseError("'text' must be a string")
        if body.get("response") is not None:
            return Decision(body, "success")
        raise InvalidResponseError(
            "a text_input response needs 'text' (a string) or 'response', "
            "e.g. --data '{\"text\": \"...\"}'"
        )
    # conversation
    message = body.get("message")
    if action == "respond" and not isinstance(message, str):
        raise InvalidResponseError(
            "a conversation response needs 'message' (a string), "
            "e.g. --data '{\"message\": \"...\"}'; send action 'end' to finish"
        )
    if message is not None and not isinstance(message, str):
        raise InvalidResponseError("'message' must be a string")
    return Decision({**body, "message": message}, "success" if action == "respond" else "failure")


def check_response_schema(schema: dict[str, Any], data: Any) -> None:
    """The node's ``response_schema`` (JSON Schema) must accept the response data."""
    from jsonschema import validators

    body = {} if data is None else data
    validator = validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        found = "; ".join(
            f"at {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in errors[:3]
        )
        raise InvalidResponseError(
            f"response data does not satisfy this request's response_schema: {found} "
            f"(expected data matching {_schema_summary(schema)})"
        )


def _schema_summary(schema: dict[str, Any]) -> str:
    required = schema.get("required")
    properties = schema.get("properties")
    if isinstance(properties, dict) and properties:
        fields = ", ".join(
            f"{name}{'*' if isinstance(required, list) and name in required else ''}: "
            f"{spec.get('type', 'any') if isinstance(spec, dict) else 'any'}"
            for name, spec in properties.items()
        )
        return "{" + fields + "} (* = required)"
    return "the schema"


def _choice(options: list[str], body: dict[str, Any]) -> dict[str, Any]:
    listing = "; ".join(f"{i}. {o}" for i, o in enumerate(options, 1))
    if "choice" not in body:
        raise InvalidResponseError(
            f"a choice response needs 'choice': an option number 1-{len(options)} "
            f"or the exact option text ({listing})"
        )
    choice = body["choice"]
    _optional_str(body, "justification")
    if isinstance(choice, bool) or not isinstance(choice, int | str):
        raise InvalidResponseError(
            f"'choice' must be an option number 1-{len(options)} or the exact option text, "
            f"got {type(choice).__name__}"
        )
    if isinstance(choice, int):
        if not 1 <= choice <= len(options):
            raise InvalidResponseError(
                f"choice {choice} is out of range: expected 1-{len(options)} ({listing})"
            )
        index = choice
    elif choice in options:
        index = options.index(choice) + 1
    else:
        raise InvalidResponseError(
            f"choice {choice!r} is not one of the options; expected a number "
            f"1-{len(options)} or the exact text ({listing})"
        )
    chosen = {"choice": index, "option": options[index - 1]}
    if body.get("justification"):
        chosen["justification"] = body["justification"]
    return chosen
