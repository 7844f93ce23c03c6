"""The guide's five workflow patterns, exactly as it prints them, run to completion on the real
stack with the example agents — every branch, through the user-facing test harness."""

from __future__ import annotations

import json

import pytest

from hitlflow.testing import HitlTestStack
from tests.conftest import example
from tests.helpers import cli, cli_json

APPROVAL = example("approval.csv") + "::ApprovalFlow"
CONTENT = example("content.csv") + "::ContentFlow"
DECISION = example("decision.csv") + "::DecisionFlow"
REQUIREMENTS = example("requirements.csv") + "::RequirementsFlow"
CONSULTATION = example("consultation.csv") + "::ConsultationFlow"


# -- Pattern 1: approval gates ----------------------------------------------------------------


def test_approval_flow_approved(hitl: HitlTestStack) -> None:
    run = hitl.start(APPROVAL, {"user_request": "Buy 3 laptops"}, thread_id="approval-yes")
    request = hitl.assert_paused(run, node="approve_gate", interaction_type="approval",
                                 prompt="Please approve this request: ")
    assert request["context"]["validation_result"]["valid"] is True
    done = hitl.resume("approval-yes", "approve", {"reason": "Within the Q1 budget"})
    hitl.assert_completed(done, output="Request completed: processed: Buy 3 laptops", node="end")
    assert hitl.path("approval-yes") == ["start", "validate", "approve_gate", "process", "end"]
    assert hitl.routes("approval-yes")["approve_gate"] == "success"
    assert hitl.state("approval-yes")["approval_response"] == {
        "approved": True, "reason": "Within the Q1 budget"}


def test_approval_flow_rejected_at_the_gate(hitl: HitlTestStack) -> None:
    run = hitl.start(APPROVAL, {"user_request": "Buy a yacht"}, thread_id="approval-no")
    hitl.assert_paused(run, node="approve_gate")
    done = hitl.resume("approval-no", "reject", {"reason": "Budget exceeds allocated amount"})
    hitl.assert_completed(done, node="end")
    assert hitl.path("approval-no") == ["start", "validate", "approve_gate", "end"]
    assert hitl.routes("approval-no")["approve_gate"] == "failure"
    assert "final_result" not in hitl.state("approval-no")  # process never ran
    assert hitl.state("approval-no")["approval_response"]["approved"] is False


def test_approval_flow_rejected_shows_no_placeholder_and_records_what_was_missing(
        hitl: HitlTestStack) -> None:
    """The guide's `end` text is `Request completed: {final_result}`, and the reject route
    skips `process`, which writes final_result: the text shows a marker instead of the
    placeholder, and the node's completion names the missing field for the audit."""
    run = hitl.start(APPROVAL, {"user_request": "Buy a yacht"}, thread_id="approval-no-text")
    hitl.assert_paused(run, node="approve_gate")
    done = hitl.resume("approval-no-text", "reject", {"reason": "Over budget"})
    output = hitl.assert_completed(done, output="Request completed: (no final_result)",
                                   node="end")
    assert "{" not in output and "}" not in output
    ends = [e for e in hitl.events("approval-no-text", "NodeCompleted") if e["node"] == "end"]
    assert [e["details"] for e in ends] == [{"missing_fields": ["final_result"]}]
    assert ends[0]["output"] == output


def test_approval_flow_invalid_request_is_rejected_without_asking(hitl: HitlTestStack) -> None:
    done = hitl.start(APPROVAL, {"user_request": "   "}, thread_id="approval-invalid")
    hitl.assert_completed(done, output="Request rejected due to validation failure",
                          node="reject")
    assert hitl.path("approval-invalid") == ["start", "validate", "reject"]
    assert hitl.routes("approval-invalid")["validate"] == "failure"
    assert hitl.notifications("approval-invalid") == []


# -- Pattern 2: content review and edit -------------------------------------------------------


def test_content_flow_edited(hitl: HitlTestStack) -> None:
    run = hitl.start(CONTENT, {"content_request": "Announce the new API rate limits"},
                     thread_id="content-edit")
    request = hitl.assert_paused(run, node="review", interaction_type="edit",
                                 prompt="Please review and edit this content: Announce")
    draft = request["context"]["original_content"]
    assert draft.startswith("Announce the new API rate limits")
    edited = draft.replace("Questions are welcome", "Ask the platform team")
    done = hitl.resume("content-edit", "edit", {"edited": edited, "changes": ["Named the team"]})
    output = hitl.assert_completed(done, node="finalize")
    assert output == f"Content finalized: {edited}"
    assert hitl.path("content-edit") == ["start", "generate", "review", "finalize"]


def test_content_flow_kept_as_generated(hitl: HitlTestStack) -> None:
    run = hitl.start(CONTENT, {"content_request": {"topic": "Quarterly results",
                                                   "audience": "staff", "tone": "friendly",
                                                   "points": ["Revenue up 8%"]}},
                     thread_id="content-keep")
    draft = hitl.assert_paused(run, node="review")["context"]["original_content"]
    assert "Hello staff!" in draft and "- Revenue up 8%" in draft
    done = hitl.resume("content-keep", "approve")
    hitl.assert_completed(done, output=f"Content finalized: {draft}")


def test_content_flow_rejected_ends_at_review(hitl: HitlTestStack) -> None:
    run = hitl.start(CONTENT, {"content_request": "Draft a press release"},
                     thread_id="content-reject")
    hitl.assert_paused(run, node="review")
    done = hitl.resume("content-reject", "reject", {"reason": "Off message"})
    hitl.assert_completed(done, node="review")  # the guide's CSV has no failure route here
    assert hitl.routes("content-reject")["review"] == "failure"
    assert "final_content" not in hitl.state("content-reject")


# -- Pattern 3: multi-step decision making ----------------------------------------------------


@pytest.mark.parametrize(("choice", "approach"), [
    ({"choice": 1}, "Approach A: Fast implementation"),
    ({"choice": 2, "justification": "Payments are critical"}, "Approach B: Robust solution"),
    ({"choice": "Approach C: Hybrid approach"}, "Approach C: Hybrid approach"),
])
def test_decision_flow_each_option(hitl: HitlTestStack, choice: dict, approach: str) -> None:
    thread = f"decision-{choice['choice'] if isinstance(choice['choice'], int) else 3}"
    run = hitl.start(DECISION, {"problem_description": "Checkout is slow at peak traffic and "
                                                       "customers abandon their carts"},
                     thread_id=thread)
    request = hitl.assert_paused(run, node="choose_approach", interaction_type="choice",
                                 options=["Approach A: Fast implementation",
                                          "Approach B: Robust solution",
                                          "Approach C: Hybrid approach"])
    assert "Themes: performance" in request["context"]["analysis_result"]
    done = hitl.resume(thread, "choose", choice)
    output = hitl.assert_completed(done, node="end")
    assert output.startswith(f"Implementation completed: {approach}")
    assert "Add a load test with the target response time" in output  # from the analysis
    if "justification" in choice:
        assert "(because: Payments are critical)" in output
    assert hitl.path(thread) == ["start", "analyze", "choose_approach", "implement", "end"]


def test_decision_flow_refuses_an_out_of_range_choice(hitl: HitlTestStack) -> None:
    run = hitl.start(DECISION, {"problem_description": "Nightly import fails"},
                     thread_id="decision-bad")
    hitl.assert_paused(run, node="choose_approach")
    refused = hitl.resume("decision-bad", "choose", {"choice": 4})
    hitl.assert_refused(refused, code="invalid_response", contains="expected 1-3")
    assert hitl.status("decision-bad").status == "paused"  # the thread is untouched


# -- Pattern 4: requirements gathering --------------------------------------------------------


def test_requirements_flow_free_text(hitl: HitlTestStack) -> None:
    run = hitl.start(REQUIREMENTS, {"project_brief": "A customer portal for billing data "
                                                     "with login, used by 50k users"},
                     thread_id="req-text")
    request = hitl.assert_paused(run, node="gather_requirements",
                                 interaction_type="text_input",
                                 prompt="Based on the analysis please provide additional "
                                        "requirements: Themes:")
    assert request["context"]["initial_analysis"].startswith("Themes:")
    done = hitl.resume("req-text", "respond", {"text": (
        "Add support for social login providers (Google, GitHub, Microsoft). Include rate "
        "limiting for login attempts. Dark mode could come later.")})
    output = hitl.assert_completed(done, node="end")
    assert output.startswith("Requirements gathering completed: 3 requirements: ")
    assert "[low] Dark mode could come later" in output
    assert output.index("social login") < output.index("Dark mode")  # medium before low


def test_requirements_flow_structured_answer(hitl: HitlTestStack) -> None:
    run = hitl.start(REQUIREMENTS, {"project_brief": "User authentication"},
                     thread_id="req-structured")
    hitl.assert_paused(run, node="gather_requirements")
    done = hitl.resume("req-structured", "respond", {
        "response": "Additional security requirements needed",
        "requirements": ["Social login integration", "Rate limiting",
                         "Password strength validation", "Session management"],
        "priority": "high",
    })
    output = hitl.assert_completed(done)
    assert "4 requirements: 1. [high] Social login integration; 2. [high] Rate limiting" in output


# -- Pattern 5: iterative conversation --------------------------------------------------------


def test_consultation_flow_loops_until_end(hitl: HitlTestStack) -> None:
    thread = "consult-loop"
    run = hitl.start(CONSULTATION, {"consultation_topic": "technical architecture"},
                     thread_id=thread)
    hitl.assert_paused(run, node="initial_consultation", interaction_type="conversation",
                       prompt="Let's discuss your technical architecture.")
    turn = hitl.resume(thread, "respond", {
        "message": "I think microservices would benefit this project given the team size. "
                   "We should start with user management, product catalog and orders.",
        "follow_up_questions": ["What database strategy should we use?"],
    })
    hitl.assert_paused(turn, node="next_question",
                       prompt="Great insights! Let's dive deeper into what database strategy "
                              "should we use")
    turn = hitl.resume(thread, "respond",
                       {"message": "One database per service, with events between them."})
    hitl.assert_paused(turn, node="next_question", prompt="dive deeper into database")
    done = hitl.resume(thread, "end")
    output = hitl.assert_completed(done, node="end")
    assert output.startswith("Consultation completed: 2 turn(s) on technical architecture")
    assert "Questions raised: What database strategy should we use?" in output
    assert hitl.path(thread) == [
        "start", "initial_consultation", "continue_conversation", "next_question",
        "continue_conversation", "next_question", "summary", "end"]
    assert hitl.routes(thread)["next_question"] == "failure"  # 'end' leaves the loop


def test_consultation_flow_agent_closes_when_the_person_says_so(hitl: HitlTestStack) -> None:
    run = hitl.start(CONSULTATION, {"consultation_topic": "hiring plan"}, thread_id="consult-bye")
    hitl.assert_paused(run, node="initial_consultation")
    done = hitl.resume("consult-bye", "respond", {"message": "Two engineers in Q2, that's all."})
    output = hitl.assert_completed(done, node="end")
    assert output.startswith("Consultation completed: 1 turn(s) on hiring plan")
    assert hitl.routes("consult-bye")["continue_conversation"] == "failure"


def test_consultation_flow_ended_at_once(hitl: HitlTestStack) -> None:
    run = hitl.start(CONSULTATION, {"consultation_topic": "budget"}, thread_id="consult-end")
    hitl.assert_paused(run, node="initial_consultation")
    done = hitl.resume("consult-end", "end")
    # the guide's CSV goes straight to `end`, whose text names the summary nobody wrote
    hitl.assert_completed(done, node="end", output="Consultation completed: (no "
                                                   "consultation_summary)")
    assert hitl.path("consult-end") == ["start", "initial_consultation", "end"]


# -- the harness itself -----------------------------------------------------------------------


def test_drive_answers_every_pause_from_a_script(hitl: HitlTestStack) -> None:
    done = hitl.drive(CONSULTATION, {"consultation_topic": "testing"}, [
        ("respond", {"message": "We lack integration tests."}),
        ("respond", {"message": "Start with the payment service."}),
        "end",
    ], thread_id="drive-1")
    hitl.assert_completed(done, node="end")
    with pytest.raises(AssertionError, match="has no pause to answer: the thread is completed"):
        hitl.drive(APPROVAL, {"user_request": ""}, ["approve"])
    with pytest.raises(AssertionError, match="expected thread 'drive-2' to be completed, but "
                                             "it is paused"):
        hitl.assert_completed(hitl.start(APPROVAL, {"user_request": "x"}, thread_id="drive-2"))


# -- the same patterns from the command line --------------------------------------------------

CLI_SCRIPTS = {
    "approval": (APPROVAL, {"user_request": "Buy 3 laptops"},
                 [["approve"]], "Request completed: processed: Buy 3 laptops"),
    "content": (CONTENT, {"content_request": "Announce the new API rate limits"},
                [["edit", "--data", '{"edited": "Rate limits change on 1 May."}']],
                "Content finalized: Rate limits change on 1 May."),
    "decision": (DECISION, {"problem_description": "Reports time out"},
                 [["choose", "--data", '{"choice": 3}']],
                 "Implementation completed: Approach C: Hybrid approach"),
    "requirements": (REQUIREMENTS, {"project_brief": "An internal wiki"},
                     [["respond", "--data", '{"text": "Full-text search must work."}']],
                     "Requirements gathering completed: 1 requirements: 1. [high] Full-text"),
    "consultation": (CONSULTATION, {"consultation_topic": "on-call"},
                     [["respond", "--data", '{"message": "Pages at night are too frequent."}'],
                      ["respond", "--data", '{"message": "Tune the alert thresholds."}'],
                      ["end"]],
                     "Consultation completed: 2 turn(s) on on-call"),
}


@pytest.mark.parametrize("pattern", sorted(CLI_SCRIPTS))
def test_each_pattern_runs_from_the_cli_through_every_pause(hitl: HitlTestStack,
                                                            pattern: str) -> None:
    target, state, answers, expected = CLI_SCRIPTS[pattern]
    thread = f"cli-{pattern}"
    code, data, stderr = cli_json(hitl.nats_url, "run", target, "--thread-id", thread,
                                  "--state", json.dumps(state))
    assert code == 0, stderr
    for answer in answers:
        assert data["status"] == "paused", data
        shown = cli(hitl.nats_url, "pending", thread).stdout
        assert f"hitlflow resume {thread} {answer[0]}" in shown  # the command is shown
        code, data, stderr = cli_json(hitl.nats_url, "resume", thread, *answer)
        assert code == 0, stderr
    assert data["status"] == "completed"
    assert data["output"].startswith(expected)
