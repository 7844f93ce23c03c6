"""The edges hold, on the real stack: every input has a limit, refused where it enters with an
error naming it; the subject names the thread of every command and query; big lists come in
pages; a command whose effect is not seen is not reported as done."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contracts import subjects
from contracts.limits import MAX_ANSWER_BYTES, MAX_CELL_CHARS
from hitlflow.gateway import create_app
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from services.workflow import main as workflow_main
from tests.conftest import ROOT
from tests.helpers import cli, cli_json, wait_for

TYPES = str(ROOT / "tests" / "workflows" / "types.csv")
LIMIT_TEXT = "262,144 bytes (256 KiB)"


def paused(hitl: HitlTestStack, thread_id: str, request: str = "r") -> None:
    hitl.assert_paused(hitl.start(f"{TYPES}::Approve", {"request": request},
                                  thread_id=thread_id))


async def raw_command(hitl: HitlTestStack, subject: str, body: bytes) -> dict[str, Any]:
    """Publish bytes as another system would (JetStream, reply inbox header); the reply."""
    nc = hitl.client.nc
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox, max_msgs=1)
    await nc.jetstream().publish(subject, body, headers={subjects.REPLY_TO_HEADER: inbox})
    msg = await replies.next_msg(20)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


def shown(hitl: HitlTestStack, thread_id: str) -> str:
    """What an answer to the thread's open request carries back."""
    [request] = hitl.pending(thread_id)
    return request.shown


def rejections(hitl: HitlTestStack, thread_id: str) -> list[dict[str, Any]]:
    code, rows, stderr = cli_json(hitl.nats_url, "audit", "--thread", thread_id,
                                  "--event", "rejected")
    assert code == 0, stderr
    return list(rows)


def test_an_answer_too_large_is_refused_where_it_enters_and_nothing_stalls(
        hitl: HitlTestStack, tmp_path: Path) -> None:
    paused(hitl, "big-1")
    paused(hitl, "big-other")

    # The CLI: refused before anything is sent (exit 2), naming the limit.
    reason = tmp_path / "reason.json"
    reason.write_text(json.dumps({"reason": "x" * 900_000}))
    result = cli(hitl.nats_url, "resume", "big-1", "reject", "--data-file", str(reason))
    assert result.exit_code == 2, result.stdout
    assert "--data-file" in result.stderr and LIMIT_TEXT in result.stderr
    huge = tmp_path / "huge.json"
    huge.write_bytes(b"{\"reason\": \"" + b"y" * 10_000_000 + b"\"}")
    result = cli(hitl.nats_url, "resume", "big-1", "reject", "--data-file", str(huge))
    assert result.exit_code == 2 and LIMIT_TEXT in result.stderr
    result = cli(hitl.nats_url, "resume", "big-1", "reject", "--data",
                 json.dumps({"reason": "z" * 300_000}))
    assert result.exit_code == 2 and LIMIT_TEXT in result.stderr
    # text no message can carry (a lone surrogate, spelled as a JSON escape): refused, exit 2
    result = cli(hitl.nats_url, "resume", "big-1", "reject", "--data",
                 json.dumps({"reason": "\ud800"}))
    assert result.exit_code == 2, result.stdout
    assert "the answer's data holds text that is not valid Unicode" in result.stderr

    # Another system's own JSON over NATS: refused by the service as too_large, audited.
    body = {"thread_id": "big-1", "action": "reject", "data": {"reason": "w" * 300_000},
            "idempotency_key": "raw-big-1", "shown": shown(hitl, "big-1")}
    reply = hitl.call(raw_command(hitl, subjects.resume_subject("erp", "big-1"),
                                  json.dumps(body).encode()))
    assert (reply["ok"], reply["code"]) == (False, "too_large")
    assert LIMIT_TEXT in reply["error"]
    # a message larger than any command may be: refused before it is read
    body["data"] = {"reason": "v" * 1_200_000}
    body["idempotency_key"] = "raw-big-2"
    reply = hitl.call(raw_command(hitl, subjects.resume_subject("erp", "big-1"),
                                  json.dumps(body).encode()))
    assert (reply["ok"], reply["code"]) == (False, "too_large")
    refused = wait_for(lambda: [r for r in rejections(hitl, "big-1")
                                if r["code"] == "too_large"][1:] and
                       rejections(hitl, "big-1"), what="both refusals in the audit")
    assert [r["code"] for r in refused] == ["too_large", "too_large"]

    # Text no message can carry, in another system's own JSON over NATS: refused and audited.
    reply = hitl.call(raw_command(hitl, subjects.resume_subject("erp", "big-1"), json.dumps(
        {"thread_id": "big-1", "action": "reject", "data": {"reason": "\ud800"},
         "idempotency_key": "raw-surrogate", "shown": shown(hitl, "big-1")}).encode()))
    assert (reply["ok"], reply["code"]) == (False, "invalid_command"), reply
    wait_for(lambda: [r for r in rejections(hitl, "big-1") if r["code"] == "invalid_command"],
             what="the refusal in the audit")

    # Nothing stalled: every thread still answers, and the largest answer allowed goes through
    # (its events are published and handled like any other).
    hitl.assert_completed(hitl.resume("big-other", "approve"), output="Approved: r")
    largest = {"reason": "u" * (MAX_ANSWER_BYTES - len('{"reason":""}'))}
    done = hitl.resume("big-1", "reject", largest)
    hitl.assert_completed(done, output="Refused: r")
    [resumed] = hitl.events("big-1", "ThreadResumed")
    carried = resumed["data"] == largest  # (not compared in the assert: it would be printed)
    assert carried


def test_the_largest_request_and_answer_an_edit_allows_flow_through(
        hitl: HitlTestStack) -> None:
    """An edit shows the draft (in its prompt and context) and hands on the edited copy: both
    at their limits, through every service and back. A draft too large for a prompt is refused
    when the request is built: the node fails (its next_on_failure runs) and says why."""
    refused = hitl.start(f"{TYPES}::Edit", {"draft": "d" * 200_000}, thread_id="edit-huge")
    hitl.assert_completed(refused, output="Discarded")
    [failed] = hitl.events("edit-huge", "NodeFailed")
    assert "the prompt (filled from the thread's state) is 200,026 bytes" in failed["error"]
    assert "more than the 65,536 bytes (64 KiB) allowed" in failed["error"]

    draft = "d" * 65_000
    hitl.assert_paused(hitl.start(f"{TYPES}::Edit", {"draft": draft}, thread_id="edit-big"))
    [request] = hitl.pending("edit-big")
    assert request.context["original_content"] == draft
    edited = "e" * (MAX_ANSWER_BYTES - len('{"edited":""}'))
    done = hitl.resume("edit-big", "edit", {"edited": edited})
    handed_on = done.output == edited  # (not compared in the assert: a failure would print it)
    assert done.status == "completed" and handed_on, (done.status, done.node, done.error)


def test_http_refuses_large_bodies_with_413(hitl: HitlTestStack) -> None:
    paused(hitl, "http-big")
    [request] = hitl.pending("http-big")
    settings = Settings(home=hitl.data_dir, nats_url=hitl.nats_url, auth=False,
                        gateway_user="edge")
    with TestClient(create_app(settings)) as http:
        answer = http.post("/threads/http-big/resume",
                           json={"action": "reject", "data": {"reason": "x" * 300_000},
                                 "shown": request.shown})
        assert answer.status_code == 413, answer.text
        assert answer.json()["code"] == "too_large" and LIMIT_TEXT in answer.json()["error"]
        body = http.post("/threads/http-big/resume", content=b"x" * 2_000_000,
                         headers={"content-type": "application/json"})
        assert body.status_code == 413 and "request body" in body.json()["error"]
        too_long = http.post("/threads/http-big/resume",
                             json={"action": "approve", "shown": "s" * 500})
        assert too_long.status_code == 422 and "shown" in too_long.json()["error"]
        assert http.post("/threads/http-big/resume",
                         json={"action": "approve", "shown": request.shown}
                         ).json()["status"] == "completed"


def test_the_subject_names_the_thread_of_every_command(hitl: HitlTestStack) -> None:
    for thread in ("victim", "a_b", "ab", "x"):
        paused(hitl, thread)

    def send(subject: str, body: dict[str, Any]) -> dict[str, Any]:
        return hitl.call(raw_command(hitl, subject, json.dumps(body).encode()))

    refusals = [
        send("hitl.cmd.cancel.erp.victim", {"thread_id": "a_b", "reason": "no"}),
        send("hitl.cmd.resume.erp.victim", {"thread_id": "a_b", "action": "approve",
                                            "idempotency_key": "k1", "shown": "1:x"}),
        send("hitl.cmd.resume.erp.ab.x", {"thread_id": "ab", "action": "approve",
                                          "idempotency_key": "k2", "shown": "1:x"}),
        send("hitl.cmd.resume.erp.ab.x", {"thread_id": "x", "action": "approve",
                                          "idempotency_key": "k3", "shown": "1:x"}),
        send("hitl.cmd.resume.victim", {"thread_id": "victim", "action": "approve",
                                        "idempotency_key": "k4", "shown": "1:x"}),
        send("hitl.cmd.start.erp.victim", {"thread_id": "fresh", "workflow": hitl.workflow(
            f"{TYPES}::Approve").model_dump(mode="json"), "state": {"request": "r"}}),
    ]
    for reply in refusals:
        assert (reply["ok"], reply["code"]) == (False, "invalid_command"), reply
        assert ("the thread its subject names" in reply["error"]
                or "is not hitl.cmd.resume.<principal>.<thread_id>" in reply["error"])
    for thread in ("victim", "a_b", "ab", "x"):
        view = hitl.status(thread)
        assert view is not None and view.status == "paused", thread
    assert hitl.status("fresh") is None

    # kept in the audit of the thread the subject named
    code, rows, stderr = cli_json(hitl.nats_url, "audit", "--thread", "victim")
    assert code == 0, stderr
    events = [(r["event"], r["action"], r["code"]) for r in rows]
    assert ("refused", "cancel", "invalid_command") in events
    assert ("rejected", "", "invalid_command") in events

    # queries too: a body naming another thread than the subject is refused
    reply = hitl.call(hitl.client._query(subjects.thread_query_subject("victim"),
                                         {"thread_id": "a_b"}))
    assert reply["error"]["code"] == "invalid_query"
    assert "the thread its subject names" in reply["error"]["error"]
    reply = hitl.call(hitl.client._query(subjects.timeline_query_subject("victim"), {}))
    assert reply["thread"]["thread_id"] == "victim"


def test_a_subject_with_control_characters_is_refused_not_stuck(hitl: HitlTestStack) -> None:
    """The server takes \\x0b and \\x0c into a subject; the client library once split its
    protocol lines on them, so such a message broke the consumer's connection each time it
    was delivered. It is refused like any other invalid thread id, and the stack goes on."""
    paused(hitl, "after-ff")
    for token in ("0\x0c\x82", "a\x0bb"):
        body = json.dumps({"thread_id": token, "action": "approve", "idempotency_key": "k",
                           "shown": "1:x"})
        reply = hitl.call(raw_command(hitl, f"hitl.cmd.resume.erp.{token}", body.encode()))
        assert (reply["ok"], reply["code"]) == (False, "invalid_command")
        answer = hitl.call(hitl.client._query(f"hitl.q.thread.{token}", {}, timeout=5))
        assert answer["error"]["code"] == "invalid_query"
    hitl.assert_completed(hitl.resume("after-ff", "approve"), output="Approved: r")


def test_workflows_over_their_limits_are_refused_with_row_and_column(
        hitl: HitlTestStack, tmp_path: Path) -> None:
    big_cell = tmp_path / "cell.csv"
    with big_cell.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["graph_name", "node_name", "agent_type", "next_on_success",
                         "next_on_failure", "prompt", "input_fields", "output_field",
                         "context"])
        writer.writerow(["G", "start", "input", "end", "", "", "x", "x", ""])
        writer.writerow(["G", "end", "output", "", "", "p" * 140_000, "x", "y", ""])
    for args in (("validate", str(big_cell)),
                 ("run", f"{big_cell}::G", "--state", '{"x": 1}')):
        result = cli(hitl.nats_url, *args)
        assert result.exit_code == 2, result.stdout
        assert f"{big_cell}:3 [prompt]" in result.stderr
        assert f"more than the {MAX_CELL_CHARS:,} a cell may hold" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout

    huge = tmp_path / "huge.csv"
    huge.write_text("graph_name,node_name,agent_type\n" + "G,n,input\n" * 40_000)
    result = cli(hitl.nats_url, "validate", str(huge))
    assert result.exit_code == 2 and "a workflow may be" in result.stderr

    state = tmp_path / "state.json"
    state.write_text(json.dumps({"request": "s" * 300_000}))
    result = cli(hitl.nats_url, "run", f"{TYPES}::Approve", "--state-file", str(state))
    assert result.exit_code == 2 and LIMIT_TEXT in result.stderr


@pytest.mark.parametrize("backend", ["sqlite"])  # paging is the views' SQL, tested on both
def test_long_lists_come_in_pages(hitl: HitlTestStack) -> None:
    """500 paused threads, each about 6 KB as the threads query returns it: 3 MB, more than
    any NATS message may carry (2 MiB), asked for with a limit above a page."""
    workflow = hitl.workflow(f"{TYPES}::Approve")
    count = 500

    async def start_all() -> None:
        for first in range(0, count, 100):
            await asyncio.gather(*(
                hitl.client.start(workflow, {"request": f"{i:04d}" + "r" * 3000},
                                  thread_id=f"many-{i:04d}", wait=False)
                for i in range(first, first + 100)))

    hitl.call(start_all(), timeout=300)
    wait_for(lambda: len(hitl.call(hitl.client.pending(limit=5000))) == count, timeout=120,
             what="every request to be open")
    code, threads, stderr = cli_json(hitl.nats_url, "threads", "--status", "paused",
                                     "--limit", "2000")
    assert code == 0, stderr
    assert len(json.dumps(threads)) > 3_000_000
    assert sorted(t["thread_id"] for t in threads) == [f"many-{i:04d}" for i in range(count)]
    assert all(len(t["pending"]) == 1 for t in threads)
    code, few, _ = cli_json(hitl.nats_url, "threads", "--status", "paused", "--limit", "321")
    assert code == 0 and len(few) == 321
    assert [t["thread_id"] for t in few] == [t["thread_id"] for t in threads[:321]]
    code, waiting, _ = cli_json(hitl.nats_url, "pending", "--limit", "2000")
    assert code == 0 and len(waiting) == count


def test_an_answer_whose_effect_is_not_seen_is_not_reported_as_done(
        hitl: HitlTestStack) -> None:
    paused(hitl, "stuck-1")
    hitl.call(hitl.stack.runtimes["workflow"].stop())
    result = cli(hitl.nats_url, "resume", "stuck-1", "approve",
                 env={"HITLFLOW_REPLY_TIMEOUT": "2"})
    assert result.exit_code == 3, result.stdout
    assert "accepted" in result.stderr and "did not resume within 2s" in result.stderr

    # the answer was recorded: it takes effect once the workflow service is back
    runtime = workflow_main.build(hitl.settings, nats_url=hitl.nats_url,
                                  data_dir=hitl.data_dir / "stores", agents=hitl.registry)
    hitl.call(runtime.start())
    hitl.stack.runtimes["workflow"] = runtime
    view = wait_for(lambda: (v := hitl.status("stuck-1")) and v.status == "completed" and v,
                    what="the thread to complete")
    assert view.output == "Approved: r"


@pytest.mark.parametrize("thread_id", ["a" * 129, "abc\n", "a.b", "a b", "_x", "a*", ""])
def test_thread_ids_that_are_not_subject_tokens_are_refused(hitl: HitlTestStack,
                                                            thread_id: str) -> None:
    result = cli(hitl.nats_url, "resume", thread_id, "approve")
    assert result.exit_code == 2 and "invalid thread id" in result.stderr


def test_a_query_that_fails_is_answered_with_the_reason(hitl: HitlTestStack,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the view cannot be read. The asker gets ``query_failed`` at once, not
    a silence that looks like a stack that is down."""
    from projections import thread_status

    def unreadable(*args: Any) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(thread_status, "thread", unreadable)
    reply = hitl.call(hitl.client._query(subjects.thread_query_subject("any-1"), {}, timeout=5))
    assert reply["error"]["code"] == "query_failed"
    assert "disk I/O error" in reply["error"]["error"]
