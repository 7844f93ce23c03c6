"""``hitlflow demo``: all five patterns from a script (no terminal), and asking a person (with
the input checked and asked again when it does not fit)."""

from __future__ import annotations

from typer.testing import CliRunner

from hitlflow.cli import app
from hitlflow.testing import HitlTestStack

runner = CliRunner()


def test_demo_without_a_terminal_answers_from_its_script() -> None:
    result = runner.invoke(app, ["demo"], env={"COLUMNS": "120"})  # its own embedded stack
    assert result.exit_code == 0, result.output
    text = result.stdout
    for number, title in enumerate(["Approval gates", "Content review and edit",
                                    "Multi-step decision making", "Requirements gathering",
                                    "Iterative conversation"], 1):
        assert f"Pattern {number} of 5: {title}" in text
    assert text.count("status completed") == 5
    assert "$ hitlflow run examples/approval.csv::ApprovalFlow" in text
    assert "refused (invalid_response): choice 5 is out of range: expected 1-3" in text
    assert "Consultation completed: 2 turn(s) on technical architecture" in text
    assert "All 5 pattern(s) ran to completion." in text


def test_demo_asks_and_asks_again_on_bad_input(hitl: HitlTestStack) -> None:
    typed = "\n".join([
        "9",             # not an option number → asked again
        "2",             # option 2
        "Payments are critical",
    ]) + "\n"
    result = runner.invoke(app, ["demo", "--interactive", "--only", "decision",
                                 "--nats-url", hitl.nats_url], input=typed,
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "'9' is not an option number: type 1-3" in result.stdout
    assert "accepted: choose" in result.stdout
    assert "Approach B: Robust solution (because: Payments are critical)" in result.stdout
    assert "All 1 pattern(s) ran to completion." in result.stdout


def test_demo_asks_for_a_valid_action_and_loops_a_conversation(hitl: HitlTestStack) -> None:
    typed = "\n".join([
        "maybe",                       # not an action → asked again
        "respond", "",                 # an empty message → asked again
        "respond", "We need better on-call rotation.",
        "end",
    ]) + "\n"
    result = runner.invoke(app, ["demo", "--interactive", "--only", "consultation",
                                 "--nats-url", hitl.nats_url], input=typed,
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "'maybe' is not one of: respond, end" in result.stdout
    assert "the message is empty; type a message, or choose 'end'" in result.stdout
    assert "Consultation completed: 1 turn(s) on technical architecture" in result.stdout


def test_demo_reports_an_unreachable_stack(tmp_path) -> None:
    from hitlflow.stack import free_port

    result = runner.invoke(app, ["demo", "--script", "--nats-url",
                                 f"nats://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "cannot reach NATS" in result.stdout
