"""``hitlflow validate`` on a set of broken CSVs (tests/workflows/broken/): every problem with its
row and column, errors (a run is refused) apart from warnings (it runs), exit codes 0/1/2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hitlflow.cli import app
from services.workflow.agents import AgentRegistry
from services.workflow.definition import WorkflowError, check_workflow, graph_names, load_workflow
from tests.conftest import EXAMPLE_AGENTS, EXAMPLES, ROOT

BROKEN = ROOT / "tests" / "workflows" / "broken"
REGISTRY = AgentRegistry.load([EXAMPLE_AGENTS])
runner = CliRunner()

#: file → every (severity, row, column, part of the message) it must report, and nothing else.
EXPECTED: dict[str, list[tuple[str, int, str, str]]] = {
    "unknown_agent.csv": [
        ("error", 3, "agent_type", "unknown agent type 'magic_agent'")],
    "dangling_next.csv": [
        ("error", 3, "next_on_success", "next node 'publish' does not exist in graph 'Flow'"),
        ("error", 3, "next_on_failure", "next node 'archive' does not exist in graph 'Flow'"),
        ("warning", 4, "node_name", "node 'done' is unreachable")],
    "bad_context.csv": [
        ("error", 3, "context", "invalid JSON (Expecting property name enclosed in double "
                                "quotes at character 1); expected a JSON object"),
        ("error", 4, "context", "expected a JSON object, got list")],
    "choice_without_options.csv": [
        ("error", 3, "context", "a choice interaction needs \"options\"")],
    "unknown_interaction_type.csv": [
        ("error", 3, "context", "unknown interaction_type 'vote'; expected one of approval, "
                                "edit, choice, text_input, conversation")],
    "unreachable.csv": [
        ("warning", 5, "node_name", "node 'orphan' is unreachable: no path from the start node "
                                    "'start' leads to it")],
    "unproduced_input.csv": [
        ("warning", 3, "input_fields", "input field 'cost_centre' is produced by no node "
                                       "upstream of 'ask'"),
        ("warning", 3, "prompt", "prompt field {budget_owner}")],
    "bad_condition.csv": [
        ("error", 3, "context", "condition 'amount >' is not a valid expression"),
        ("error", 6, "context", "calls the method .system()")],
    "bad_schema.csv": [
        ("error", 3, "context", "response_schema is not a valid JSON Schema at "
                                "properties/amount/type")],
    "bad_batch.csv": [
        ("error", 3, "context", "batch size must be a whole number of at least 1, got 0")],
    "bad_fallback.csv": [
        ("error", 3, "context", "fallback node 'autopilot' does not exist in graph 'Flow'"),
        ("error", 4, "context", "fallback is not a valid approval response: action 'choose'"),
        ("warning", 4, "node_name", "node 'ask2' is unreachable")],
    "duplicate_node.csv": [
        ("error", 4, "node_name", "duplicate node 'done' (first defined on row 3)")],
    "bad_people.csv": [
        ("error", 3, "context", 'assignees must be a list of names (non-empty strings), got '
                                '"alice"'),
        ("error", 4, "context", "candidate_groups must be a list of names"),
        ("error", 5, "context", "quorum asks for 3 approvals of 2 voter(s): more than its "
                                "electorate"),
        ("error", 6, "context", "a quorum decides approvals only, not a choice interaction"),
        ("error", 7, "context", 'quorum "reject" must be "veto" (one reject decides) or '
                                '"majority"')],
    "conditional_choice_without_otherwise.csv": [
        ("error", 3, "context", "a conditional choice interaction needs \"otherwise\"")],
}


def findings(path: Path) -> list[tuple[str, int, str, str]]:
    found = []
    for graph in graph_names(path):
        report = check_workflow(path, graph, registry=REGISTRY)
        found += [(p.severity, p.row, p.column, p.message) for p in report.errors]
        found += [(p.severity, p.row, p.column, p.message) for p in report.warnings]
    return found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_broken_csv_reports_every_problem_with_its_row(name: str) -> None:
    found = findings(BROKEN / name)
    assert len(found) == len(EXPECTED[name]), found
    for (severity, row, column, text), actual in zip(EXPECTED[name], found, strict=True):
        assert actual[:3] == (severity, row, column), actual
        assert text in actual[3], actual


def test_every_broken_file_is_covered() -> None:
    assert {p.name for p in BROKEN.glob("*.csv")} == {*EXPECTED, "missing_column.csv"}


def test_errors_refuse_a_load_and_warnings_do_not() -> None:
    with pytest.raises(WorkflowError) as error:
        load_workflow(BROKEN / "dangling_next.csv", registry=REGISTRY)
    assert [p.row for p in error.value.problems] == [3, 3]  # the errors only
    spec = load_workflow(BROKEN / "unreachable.csv", registry=REGISTRY)
    assert [n.name for n in spec.nodes][-1] == "orphan"


#: What validate finds in the example CSVs: the guide prints two graphs with a route that skips
#: the node producing a field a later prompt shows (no error: the thread runs, and the prompt
#: shows the field as "(no FIELD)").
EXAMPLE_FINDINGS: dict[str, list[tuple[str, int, str, str]]] = {
    "approval.csv": [
        ("warning", 7, "prompt", "prompt field {final_result} is not produced on the path "
                                 "through `reject`: start → validate → approve_gate → end "
                                 "(approve_gate's next_on_failure)")],
    "consultation.csv": [
        ("warning", 6, "prompt", "prompt field {follow_up_response} is not produced on the "
                                 "path through `next_on_failure`: start → initial_consultation "
                                 "→ continue_conversation → summary (continue_conversation's "
                                 "next_on_failure)"),
        ("warning", 7, "prompt", "prompt field {consultation_summary} is not produced on the "
                                 "path through `end`: start → initial_consultation → end "
                                 "(initial_consultation's next_on_failure)")],
}


def test_the_example_csvs_have_no_errors_and_only_the_known_warnings() -> None:
    for path in sorted(EXAMPLES.glob("*.csv")):
        assert findings(path) == EXAMPLE_FINDINGS.get(path.name, []), path.name


def validate(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["validate", "--agents", EXAMPLE_AGENTS, *args],
                           env={"COLUMNS": "300"})
    return result.exit_code, result.stdout, result.stderr


def test_cli_reports_errors_with_rows_and_exits_2() -> None:
    code, _, stderr = validate(str(BROKEN / "dangling_next.csv"))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert lines[0] == (f"{BROKEN / 'dangling_next.csv'}:3 [next_on_success]: error: next node "
                        "'publish' does not exist in graph 'Flow'")
    assert lines[2].startswith(f"{BROKEN / 'dangling_next.csv'}:4 [node_name]: warning: ")
    assert lines[-1] == ("2 error(s): a run is refused until they are fixed; 1 warning(s): "
                         "the workflow would run, but check them")


def test_cli_exits_1_on_warnings_only_and_0_when_clean() -> None:
    code, _, stderr = validate(str(BROKEN / "unreachable.csv"))
    assert code == 1
    assert "unreachable.csv:5 [node_name]: warning: node 'orphan' is unreachable" in stderr
    assert "1 warning(s): the workflow runs, but check them" in stderr
    code, stdout, _ = validate(str(EXAMPLES / "content.csv"))
    assert code == 0 and "ok:" in stdout and "ContentFlow" in stdout


def test_cli_names_the_path_of_the_approval_flow_that_misses_final_result() -> None:
    code, stdout, stderr = validate(str(EXAMPLES / "approval.csv"))
    assert code == 1 and stdout == ""
    assert stderr.splitlines() == [
        f"{EXAMPLES / 'approval.csv'}:7 [prompt]: warning: prompt field {{final_result}} is not "
        "produced on the path through `reject`: start → validate → approve_gate → end "
        "(approve_gate's next_on_failure)",
        "1 warning(s): the workflow runs, but check them"]


def test_cli_json_lists_errors_and_warnings() -> None:
    code, stdout, _ = validate(str(BROKEN / "bad_fallback.csv"), "--json")
    assert code == 2
    data = json.loads(stdout)
    assert data["ok"] is False and data["graphs"] == ["Flow"]
    assert [(e["row"], e["column"]) for e in data["errors"]] == [(3, "context"), (4, "context")]
    assert [(w["row"], w["column"]) for w in data["warnings"]] == [(4, "node_name")]


def test_cli_missing_column_and_unreadable_file() -> None:
    code, _, stderr = validate(str(BROKEN / "missing_column.csv"))
    assert code == 2
    assert "missing_column.csv:1 [agent_type]: error: missing required column 'agent_type'" in (
        stderr)
    code, _, stderr = validate(str(BROKEN / "no_such_file.csv"))
    assert code == 2 and "cannot read file" in stderr


def test_a_loop_of_automatic_nodes_is_reported_once_with_its_members() -> None:
    header = ("graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,"
              "input_fields,output_field,context\n")
    body = ("G,start,input,a,,,request,request,\n"
            "G,a,echo,b,,,request,x,\n"
            "G,b,branching,c,a,,x,y,\n"        # b → a closes the loop a → b → a
            "G,c,echo,c,ask,,y,z,\n"           # c → c: a loop of one node
            "G,ask,approval_interaction,start,,Go?,z,answer,\n")  # pauses: not reported
    report = check_workflow("loops.csv", "G", REGISTRY, text=header + body)
    assert [(p.row, p.message) for p in report.warnings] == [
        (3, "nodes a → b form a loop with no interaction node: a thread that enters it never "
            "pauses and fails after too many steps"),
        (5, "nodes c form a loop with no interaction node: a thread that enters it never "
            "pauses and fails after too many steps")]


@pytest.mark.parametrize("to", ['[""x""]', '{""node"": ""x""}', "5"])
def test_a_fallback_to_that_is_not_a_name_is_an_error_not_a_crash(to: str) -> None:
    header = ("graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,"
              "input_fields,output_field,context\n")
    body = ("G,start,input,ask,,,request,request,\n"
            "G,ask,approval_interaction,done,,Go?,request,answer,"
            f'"{{""fallback"": {{""to"": {to}}}}}"\n'
            "G,done,output,,,Done,,out,\n")
    report = check_workflow("fallback.csv", "G", REGISTRY, text=header + body)
    assert [(p.row, p.message) for p in report.errors] == [
        (3, "fallback \"to\" must name a node of the graph")]
