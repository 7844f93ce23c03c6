"""The five interaction types' rules (DESIGN.md's table), without any I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.responses import ACTIONS, InvalidResponseError, decide

OPTIONS = ["Production (us-east-1)", "Staging (us-west-2)", "Development (local)"]


def test_approval_values_and_routes() -> None:
    assert decide("approval", [], {}, "approve", None).route == "success"
    rejected = decide("approval", [], {}, "reject", {"reason": "too much"})
    assert rejected.route == "failure"
    assert rejected.value == {"approved": False, "reason": "too much"}


def test_edit_keeps_or_replaces_content() -> None:
    context = {"original_content": "draft"}
    assert decide("edit", [], context, "edit", {"edited": "new"}).value == "new"
    assert decide("edit", [], context, "approve", None).value == "draft"
    assert decide("edit", [], context, "reject", None).route == "failure"
    with pytest.raises(InvalidResponseError, match="needs 'edited'"):
        decide("edit", [], context, "edit", {"edited": None})


@given(st.integers(min_value=1, max_value=len(OPTIONS)))
def test_every_option_number_in_range_is_accepted(choice: int) -> None:
    value = decide("choice", OPTIONS, {}, "choose", {"choice": choice}).value
    assert value == {"choice": choice, "option": OPTIONS[choice - 1]}


@given(st.integers().filter(lambda n: not 1 <= n <= len(OPTIONS)))
def test_every_option_number_out_of_range_is_refused(choice: int) -> None:
    with pytest.raises(InvalidResponseError, match="out of range"):
        decide("choice", OPTIONS, {}, "choose", {"choice": choice})


@given(st.one_of(st.booleans(), st.floats(), st.none(), st.lists(st.integers()),
                 st.dictionaries(st.text(), st.integers())))
def test_choice_of_another_type_is_refused_never_defaulted(choice: object) -> None:
    with pytest.raises(InvalidResponseError):
        decide("choice", OPTIONS, {}, "choose", {"choice": choice})


@given(st.text().filter(lambda t: t not in OPTIONS))
def test_choice_text_must_match_an_option_exactly(text: str) -> None:
    with pytest.raises(InvalidResponseError, match="not one of the options"):
        decide("choice", OPTIONS, {}, "choose", {"choice": text})


@pytest.mark.parametrize("kind", sorted(ACTIONS))
@given(action=st.text(min_size=1))
def test_unknown_actions_are_refused_naming_the_allowed_ones(kind: str, action: str) -> None:
    if action in ACTIONS[kind]:
        return
    with pytest.raises(InvalidResponseError) as error:
        decide(kind, OPTIONS, {}, action, {"choice": 1, "edited": "e", "text": "t",
                                           "message": "m"})
    assert all(allowed in str(error.value) for allowed in ACTIONS[kind])


def test_text_input_takes_text_or_structured_response() -> None:
    assert decide("text_input", [], {}, "respond", {"text": "hi"}).value == "hi"
    structured = {"response": "r", "priority": "high"}
    assert decide("text_input", [], {}, "respond", structured).value == structured
    with pytest.raises(InvalidResponseError, match="'text' must be a string"):
        decide("text_input", [], {}, "respond", {"text": 3})


def test_conversation_respond_needs_a_message_end_does_not() -> None:
    assert decide("conversation", [], {}, "respond", {"message": "m"}).route == "success"
    assert decide("conversation", [], {}, "end", None).route == "failure"
    with pytest.raises(InvalidResponseError, match="needs 'message'"):
        decide("conversation", [], {}, "respond", {})


@pytest.mark.parametrize("data", [[1], "text", 3, True])
def test_data_must_be_an_object(data: object) -> None:
    with pytest.raises(InvalidResponseError, match="must be a JSON object"):
        decide("approval", [], {}, "approve", data)
