"""The guide's "Advanced Features" made real: conditional interactions, batch interactions,
automated fallback and per-node response schemas (examples/advanced.csv), on the real stack."""

from __future__ import annotations

import json

from hitlflow.testing import HitlTestStack
from tests.conftest import example
from tests.helpers import cli, cli_json

ADVANCED = example("advanced.csv")
RISK = ADVANCED + "::RiskApproval"
BATCH = ADVANCED + "::BatchReview"
AUTO = ADVANCED + "::AutoReview"
STAGING = ADVANCED + "::StagingApproval"
BUDGET = ADVANCED + "::BudgetRequest"
RULE = "amount > 10000 or user_tier == 'basic'"


# -- conditional interactions -----------------------------------------------------------------


def test_condition_true_asks_a_person(hitl: HitlTestStack) -> None:
    run = hitl.start(RISK, {"amount": 50_000, "user_tier": "premium"}, thread_id="risk-high")
    request = hitl.assert_paused(run, node="risk_gate", interaction_type="approval",
                                 prompt="High-risk operation: 50000 for a premium customer")
    assert request["context"]["asked_because"] == {
        "condition": RULE, "inputs": {"amount": 50_000, "user_tier": "premium"}, "result": True}
    assert request["context"]["recommendation"] == "manual_review_required"
    done = hitl.resume("risk-high", "reject", {"reason": "Too large"})
    hitl.assert_completed(done, output="Operation rejected")
    assert hitl.events("risk-high", "NodeDecided") == []


def test_condition_false_decides_automatically_and_records_why(hitl: HitlTestStack) -> None:
    done = hitl.start(RISK, {"amount": 900, "user_tier": "premium"}, thread_id="risk-low")
    output = hitl.assert_completed(done)
    assert output.startswith("Operation completed: processed:")
    [decided] = hitl.events("risk-low", "NodeDecided")
    assert decided["node"] == "risk_gate"
    assert decided["expression"] == RULE
    assert decided["inputs"] == {"amount": 900, "user_tier": "premium"}
    assert decided["result"] is False
    assert (decided["action"], decided["route"]) == ("approve", "success")
    assert hitl.path("risk-low") == ["start", "risk_gate", "process", "done"]
    assert hitl.pending("risk-low") == []
    # the decision is published like every other event
    assert any(e.event_type == "NodeDecided" and e.payload["expression"] == RULE
               for e in done.events)


def test_condition_on_the_basic_tier(hitl: HitlTestStack) -> None:
    run = hitl.start(RISK, {"amount": 10, "user_tier": "basic"}, thread_id="risk-basic")
    hitl.assert_paused(run, node="risk_gate")


# -- batch interactions -----------------------------------------------------------------------


def test_batch_of_12_items_in_batches_of_5_answered_out_of_order(hitl: HitlTestStack) -> None:
    items = [f"invoice-{n:02d}" for n in range(1, 13)]
    code, started, stderr = cli_json(hitl.nats_url, "run", BATCH, "--thread-id", "batch-12",
                                     "--state", json.dumps({"items": items}))
    assert code == 0, stderr
    assert started["status"] == "paused"
    assert [p["batch_index"] for p in started["pending"]] == [0, 1, 2]

    code, pending, _ = cli_json(hitl.nats_url, "pending", "batch-12")
    assert code == 0 and len(pending) == 3  # `hitlflow pending` lists each
    by_batch = {p["batch_index"]: p for p in pending}
    assert [by_batch[i]["context"]["batch_items"] for i in range(3)] == [
        items[0:5], items[5:10], items[10:12]]
    assert by_batch[2]["prompt"] == "Please review batch 3 of 3:"
    assert by_batch[2]["context"]["items_count"] == 2
    assert by_batch[0]["options"][3] == "Pause for later review"
    listing = cli(hitl.nats_url, "pending", "batch-12").stdout
    assert listing.count("--request-id") >= 3 and "[3/3]" in listing

    # without --request-id the answer is refused: it names the requests to choose from
    code, _, stderr = cli_json(hitl.nats_url, "resume", "batch-12", "choose",
                               "--data", '{"choice": 1}')
    assert code == 1 and "waits on 3 requests; name one with --request-id" in stderr

    answers = {2: 3, 0: 1, 1: 2}  # out of order: the last batch first
    for step, (index, choice) in enumerate(answers.items(), 1):
        code, reply, stderr = cli_json(hitl.nats_url, "resume", "batch-12", "choose",
                                       "--data", json.dumps({"choice": choice}),
                                       "--request-id", by_batch[index]["id"])
        assert code == 0, stderr
        assert reply["status"] == ("completed" if step == 3 else "paused")
        if step < 3:  # the thread waits for every batch
            assert hitl.status("batch-12").status == "paused"
            assert len(hitl.pending("batch-12")) == 3 - step

    reviews = hitl.state("batch-12")["reviews"]  # in batch order, whatever the answer order
    assert [r["batch_number"] for r in reviews] == [1, 2, 3]
    assert [r["value"]["option"] for r in reviews] == [
        "Approve all items in batch", "Review items individually", "Reject entire batch"]
    assert [r["items"] for r in reviews] == [items[0:5], items[5:10], items[10:12]]
    assert reply["output"] == (
        "Batch review completed: 12 items in 3 batches: 5: Approve all items in batch; "
        "5: Review items individually; 2: Reject entire batch")
    assert len(hitl.notifications("batch-12", count=3)) == 3


def test_an_empty_batch_asks_nobody(hitl: HitlTestStack) -> None:
    done = hitl.start(BATCH, {"items": []}, thread_id="batch-empty")
    hitl.assert_completed(done, output="Batch review completed: 0 items in 0 batches: nothing")


# -- automated fallback -----------------------------------------------------------------------


def test_fallback_when_the_request_cannot_be_created(hitl: HitlTestStack) -> None:
    done = hitl.start(AUTO, {"items": "not a list"}, thread_id="fallback-error")
    hitl.assert_completed(done, node="manual_queue", output=(
        "No review could be requested; the items are queued for manual processing"))
    [taken] = hitl.events("fallback-error", "FallbackTaken")
    assert taken["reason"] == "request_failed"
    assert "batch items field 'items' holds str; expected a list" in taken["error"]
    assert taken["next_node"] == "manual_queue"
    assert hitl.path("fallback-error") == ["start", "review", "manual_queue"]


def test_fallback_by_policy_decides_without_a_person(hitl: HitlTestStack) -> None:
    done = hitl.start(STAGING, {"user_request": "Deploy v2"}, thread_id="fallback-policy")
    hitl.assert_completed(done, output="Request completed: processed: Deploy v2")
    [taken] = hitl.events("fallback-policy", "FallbackTaken")
    assert (taken["reason"], taken["action"], taken["route"]) == ("policy", "approve", "success")
    assert taken["value"] == {"approved": True, "reason": "staging: approvals are automatic"}
    assert hitl.notifications("fallback-policy") == []


def test_without_a_fallback_a_failed_request_fails_the_node(hitl: HitlTestStack) -> None:
    done = hitl.start(BATCH, {"items": {"not": "a list"}}, thread_id="no-fallback")
    hitl.assert_status(done, "failed")
    assert "batch items field 'items' holds dict; expected a list" in (done.error or "")


# -- per-node response schema -----------------------------------------------------------------


def test_a_response_that_breaks_the_nodes_schema_is_rejected(hitl: HitlTestStack) -> None:
    run = hitl.start(BUDGET, {"project": "the new data centre"}, thread_id="budget-1")
    hitl.assert_paused(run, node="ask_budget", interaction_type="text_input")
    code, _, stderr = cli_json(hitl.nats_url, "resume", "budget-1", "respond", "--data",
                               '{"response": "about a million", "amount": "1M"}')
    assert code == 1
    assert "response data does not satisfy this request's response_schema" in stderr
    assert "at amount: '1M' is not of type 'number'" in stderr
    refused = hitl.resume("budget-1", "respond", {"response": "cheap", "currency": "GBP"})
    reason = hitl.assert_refused(refused, code="invalid_response")
    assert "'amount' is a required property" in reason
    assert "'GBP' is not one of ['EUR', 'USD']" in reason
    assert [r["code"] for r in hitl.rejections("budget-1")] == ["invalid_response"] * 2
    assert hitl.status("budget-1").status == "paused"  # untouched

    done = hitl.resume("budget-1", "respond",
                       {"response": "Servers and cooling", "amount": 1_200_000,
                        "currency": "EUR"})
    output = hitl.assert_completed(done)
    assert output.startswith("Budget for the new data centre: ")
    assert hitl.state("budget-1")["budget"]["amount"] == 1_200_000
