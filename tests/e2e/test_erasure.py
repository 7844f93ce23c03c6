"""Sensitive fields and erasure: the audit keeps keys and digests of sensitive fields; after
``hitlflow erase`` a thread's personal data cannot be read from the stores, the views or the
NATS streams, while its audit trail (who, when, action, digests) stays and still verifies."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from projections.chain import digest
from projections.verify import verify
from tests.helpers import cli, cli_json, stored_events, wait_for

HEADER = ("graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,input_fields,"
          "output_field,context")
CONTEXT = ('"{""interaction_type"": ""approval"", ""ssn"": ""SSN-MARK"", ""salary"": '
           '""SALARY-MARK"", ""sensitive"": [""ssn"", ""salary""]}"')
CSV = "\n".join([
    HEADER,
    "Hire,start,input,review,,,candidate,candidate,",
    f"Hire,review,approval_interaction,done,done,Hire {{candidate}}?,candidate,decision,{CONTEXT}",
    "Hire,done,output,,,Decided on {candidate},decision,result,",
]) + "\n"


def _flow(tmp_path: Path, marks: dict[str, str]) -> str:
    path = tmp_path / f"hire-{uuid.uuid4().hex[:6]}.csv"
    text = CSV
    for mark, value in marks.items():
        text = text.replace(mark, value)
    path.write_text(text)
    return f"{path}::Hire"


def _stores_text(hitl: HitlTestStack, thread: str) -> str:
    """Every event of every store, as the services read them back now."""
    seen = []
    for service in ("workflow", "interaction", "timeout"):
        app = hitl.stack.runtimes[service].app
        for kind in ("ThreadStarted", "ThreadPaused", "NodeCompleted", "ThreadResumed",
                     "ThreadCompleted", "InteractionRequested", "ResponseAccepted",
                     "RequestClosed", "DeadlineScheduled", "DeadlineCleared"):
            seen += [json.dumps(vars(e), default=str) for e in stored_events(app, kind, thread)]
    return "\n".join(seen)


def _views_text(hitl: HitlTestStack, thread: str) -> str:
    db = hitl.stack.runtimes["projections"].db
    rows: list[Any] = []
    for table in ("thread_status", "thread_requests", "thread_timeline", "audit_trail",
                  "analytics_requests"):
        rows += db.query(f"SELECT * FROM {table} WHERE thread_id = ?", (thread,))
    return json.dumps(rows, default=str)


async def _stream_text(hitl: HitlTestStack, thread: str) -> str:
    js = hitl.client.nc.jetstream()
    found = []
    sub = await js.subscribe(f"hitl.evt.*.*.{thread}", ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except Exception:
                break
            found.append(msg.data.decode())
    finally:
        await sub.unsubscribe()
    return "\n".join(found)


def test_audit_keeps_keys_and_digests_of_sensitive_fields(tmp_path: Path,
                                                          hitl: HitlTestStack) -> None:
    ssn, salary = f"ssn-{uuid.uuid4().hex}", f"salary-{uuid.uuid4().hex}"
    flow = _flow(tmp_path, {"SSN-MARK": ssn, "SALARY-MARK": salary})
    thread = f"hire-{uuid.uuid4().hex[:8]}"
    hitl.assert_paused(hitl.start(flow, {"candidate": "Ada"}, thread_id=thread))
    code, entries, stderr = cli_json(hitl.nats_url, "audit", "--thread", thread)
    assert code == 0, stderr
    [requested] = [e for e in entries if e["event"] == "requested"]
    assert requested["detail"]["sensitive"] == {"ssn": digest(ssn), "salary": digest(salary)}
    text = json.dumps(entries)
    assert ssn not in text and salary not in text
    db = hitl.stack.runtimes["projections"].db
    analytics = json.dumps(db.query("SELECT * FROM analytics_requests WHERE thread_id = ?",
                                    (thread,)))
    assert ssn not in analytics and salary not in analytics


def test_erase_leaves_no_personal_data_and_the_audit_verifies(
        tmp_path: Path, hitl: HitlTestStack, settings: Settings) -> None:
    ssn, salary = f"ssn-{uuid.uuid4().hex}", f"salary-{uuid.uuid4().hex}"
    name = f"Ada-{uuid.uuid4().hex[:6]}"
    flow = _flow(tmp_path, {"SSN-MARK": ssn, "SALARY-MARK": salary})
    thread, other = (f"hire-{uuid.uuid4().hex[:8]}" for _ in range(2))
    hitl.assert_paused(hitl.start(flow, {"candidate": name}, thread_id=thread))
    hitl.assert_paused(hitl.start(_flow(tmp_path, {"SSN-MARK": "s2", "SALARY-MARK": "s3"}),
                                  {"candidate": "Grace"}, thread_id=other))
    # bad input first: an unknown thread, a thread still waiting
    result = cli(hitl.nats_url, "erase", "--thread", "nobody-here")
    assert result.exit_code == 1 and "unknown thread 'nobody-here'" in result.stderr
    result = cli(hitl.nats_url, "erase", "--thread", thread)
    assert result.exit_code == 1 and "is paused; only an ended thread is erased" in result.stderr

    hitl.assert_completed(hitl.resume(thread, "approve", {"reason": f"fine {salary}"},
                                      on_behalf_of="alice"))
    wait_for(lambda: verify(settings, db=hitl.stack.runtimes["projections"].db).unanchored == 0
             and "DeadlineCleared" in _views_text(hitl, thread), 20, "everything anchored")
    for text in (_stores_text(hitl, thread), _views_text(hitl, thread),
                 hitl.call(_stream_text(hitl, thread))):
        assert name in text and ssn in text  # readable before
    audit_before = cli_json(hitl.nats_url, "audit", "--thread", thread)[1]

    code, done, stderr = cli_json(hitl.nats_url, "erase", "--thread", thread)
    assert code == 0, stderr
    assert set(done["services"]) == {"workflow", "interaction", "timeout", "projections"}

    for where, text in (("stores", _stores_text(hitl, thread)),
                        ("views", _views_text(hitl, thread)),
                        ("streams", hitl.call(_stream_text(hitl, thread)))):
        for value in (name, ssn, salary):
            assert value not in text, (where, value)
    assert '"erased": true' in _stores_text(hitl, thread)
    # the audit trail: who, when, action, digests, as before (free-text reasons erased)
    audit_after = cli_json(hitl.nats_url, "audit", "--thread", thread)[1]
    keep = ("at", "event", "responder", "action", "digest", "data_keys", "request_id")
    assert [{k: e[k] for k in keep} for e in audit_after] == [
        {k: e[k] for k in keep} for e in audit_before]
    assert ("alice", "approve") in [(e["responder"], e["action"]) for e in audit_after]
    report = verify(settings, db=hitl.stack.runtimes["projections"].db)
    assert report.ok, [d.describe() for d in report.differences]
    # the other thread is untouched; erasing again is harmless
    assert "Grace" in _views_text(hitl, other)
    code, again, stderr = cli_json(hitl.nats_url, "erase", "--thread", thread)
    assert code == 0, stderr
    assert not again["services"]["workflow"]["erased_now"]
    # a rebuild from the erased stores gives the same thread view
    before = hitl.stack.runtimes["projections"].db.query(
        "SELECT status, output, error FROM thread_status WHERE thread_id = ?", (thread,))
    code, _, stderr = cli_json(hitl.nats_url, "projections", "rebuild")
    assert code == 0, stderr
    after = hitl.stack.runtimes["projections"].db.query(
        "SELECT status, output, error FROM thread_status WHERE thread_id = ?", (thread,))
    assert after == before
    assert name not in _views_text(hitl, thread)


def test_erase_without_a_stack_says_so(tmp_path: Path) -> None:
    result = cli("nats://127.0.0.1:1", "erase", "--thread", "t1")
    assert result.exit_code == 3 and "Traceback" not in result.stderr

