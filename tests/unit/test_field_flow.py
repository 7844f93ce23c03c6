"""``validate``'s path analysis: a field a node uses (prompt, input fields, condition) must be
produced on every path from the start node to it; a path that misses it is named, shortest
first, by the branches an author knows (``reject``, ``end``, ``fallback``, ``next_on_failure``)."""

from __future__ import annotations

import pytest

from services.workflow.agents import AgentRegistry
from services.workflow.definition import check_workflow, field_flow, parse_workflow
from tests.conftest import EXAMPLE_AGENTS, EXAMPLES

REGISTRY = AgentRegistry.load([EXAMPLE_AGENTS])
HEADER = ("graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,input_fields,"
          "output_field,context\n")


def warnings(body: str) -> list[tuple[int, str, str]]:
    report = check_workflow("flow.csv", "G", REGISTRY, text=HEADER + body)
    assert report.errors == []
    return [(p.row, p.column, p.message) for p in report.warnings]


def test_approval_flow_names_the_reject_path_that_skips_process() -> None:
    report = check_workflow(EXAMPLES / "approval.csv", "ApprovalFlow", REGISTRY)
    assert [(p.row, p.column, p.message) for p in report.warnings] == [
        (7, "prompt", "prompt field {final_result} is not produced on the path through "
                      "`reject`: start → validate → approve_gate → end (approve_gate's "
                      "next_on_failure)")]


def test_a_diamond_names_the_side_that_misses_the_field() -> None:
    body = ("G,start,input,a,,,request,request,\n"
            "G,a,branching,b,c,,request,route,\n"
            "G,b,echo,d,,,request,x,\n"
            "G,c,echo,d,,,request,y,\n"
            "G,d,output,,,{x} {y} {route},,out,\n")
    assert warnings(body) == [
        (6, "prompt", "prompt field {x} is not produced on the path through "
                      "`next_on_failure`: start → a → c → d (a's next_on_failure)"),
        (6, "prompt", "prompt field {y} is not produced on the path start → a → b → d")]


def test_a_field_both_sides_of_a_diamond_produce_is_fine() -> None:
    body = ("G,start,input,a,,,request,request,\n"
            "G,a,branching,b,c,,request,route,\n"
            "G,b,echo,d,,,request,x,\n"
            "G,c,echo,d,,,request,x,\n"
            "G,d,output,,,{x},x,out,\n")
    assert warnings(body) == []


def test_a_loop_misses_what_its_own_later_nodes_produce_on_the_first_round() -> None:
    body = ("G,start,input,ask,,,request,request,\n"
            "G,ask,approval_interaction,work,done,Again? Last: {result},request,answer,\n"
            "G,work,echo,ask,,,request,result,\n"
            "G,done,output,,,{answer} {request} {result},,out,\n")
    assert warnings(body) == [
        (3, "prompt", "prompt field {result} is not produced on the path start → ask"),
        (5, "prompt", "prompt field {result} is not produced on the path through `reject`: "
                      "start → ask → done (ask's next_on_failure)")]


def test_a_field_produced_before_a_loop_stays_produced_around_it() -> None:
    body = ("G,start,input,prep,,,request,request,\n"
            "G,prep,echo,ask,,,request,prepared,\n"
            "G,ask,approval_interaction,work,done,Check {prepared},prepared,answer,\n"
            "G,work,echo,ask,,,answer,result,\n"
            "G,done,output,,,{prepared} {answer},,out,\n")
    assert warnings(body) == []


def test_the_shortest_of_several_missing_paths_is_named() -> None:
    body = ("G,start,input,a,,,request,request,\n"
            "G,a,branching,b,late,,request,route,\n"
            "G,b,branching,c,late,,request,route,\n"
            "G,c,echo,late,,,request,x,\n"
            "G,late,output,,,{x},,out,\n")
    assert warnings(body) == [
        (6, "prompt", "prompt field {x} is not produced on the path through "
                      "`next_on_failure`: start → a → late (a's next_on_failure)")]


def test_fallback_edges_carry_the_nodes_output_and_are_named_fallback() -> None:
    body = ("G,start,input,ask,,,request,request,\n"
            'G,ask,approval_interaction,work,,Approve {request}?,request,answer,'
            '"{""fallback"": {""to"": ""manual""}}"\n'
            "G,work,echo,manual,,,answer,result,\n"
            "G,manual,output,,,{answer} {result},,out,\n")
    assert warnings(body) == [
        (5, "prompt", "prompt field {result} is not produced on the path through `fallback`: "
                      "start → ask → manual (ask's context fallback)")]


def test_a_fallback_taken_always_is_the_only_route() -> None:
    """The person is never asked: the reject route (or every route but the fallback's) is
    never taken, so a field it would miss is not warned about."""
    approve = ('"{""fallback"": {""when"": ""always"", ""action"": ""approve""}}"')
    body = ("G,start,input,gate,,,request,request,\n"
            f"G,gate,approval_interaction,process,end,Approve {{request}}?,request,answer,"
            f"{approve}\n"
            "G,process,echo,end,,,request,final_result,\n"
            "G,end,output,,,Request completed: {final_result},,out,\n")
    assert warnings(body) == []
    # rejecting (or going to a node) always: process never runs, so nothing produces the field
    never = ("prompt field {final_result} is produced by no node upstream of 'end' and is not "
             "an input of the start node 'start': it is missing unless the initial state has it")
    reject = approve.replace("approve", "reject")
    assert [w[2] for w in warnings(body.replace(approve, reject))] == [never]
    to = '"{""fallback"": {""when"": ""always"", ""to"": ""end""}}"'
    assert [w[2] for w in warnings(body.replace(approve, to))] == [never]


def test_condition_names_are_checked_per_path() -> None:
    body = ("G,start,input,a,,,request,request,\n"
            "G,a,branching,score,gate,,request,route,\n"
            "G,score,echo,gate,,,request,amount,\n"
            'G,gate,approval_interaction,done,done,Approve?,,answer,'
            '"{""condition"": ""amount > 10""}"\n'
            "G,done,output,,,Done,,out,\n")
    assert warnings(body) == [
        (5, "context", "condition name 'amount' is not produced on the path through "
                       "`next_on_failure`: start → a → gate (a's next_on_failure)")]


def test_batch_fields_exist_in_a_batch_nodes_prompt_only() -> None:
    body = ("G,start,input,review,,,items,items,\n"
            'G,review,choice_interaction,done,,Batch {batch_number} of {total_batches},items,'
            'reviews,"{""options"": [""ok"", ""not ok""], ""batch"": 2}"\n'
            "G,done,output,,,After batch {batch_number},reviews,out,\n")
    assert [w[:2] for w in warnings(body)] == [(4, "prompt")]
    assert "prompt field {batch_number} is produced by no node upstream of 'done'" in (
        warnings(body)[0][2])


def test_a_default_answers_for_the_paths_that_miss_the_field() -> None:
    body = ("G,start,input,gate,,,request,request,\n"
            "G,gate,approval_interaction,process,end,Approve {request}?,request,answer,\n"
            "G,process,echo,end,,,request,final_result,\n"
            "G,end,output,,,Request completed: {final_result|nothing was processed},,out,\n")
    assert warnings(body) == []
    # a default in the prompt does not cover the same field listed as an input field
    with_input = body.replace(",,out,", ",final_result,out,")
    assert warnings(with_input) == [
        (5, "input_fields", "input field 'final_result' is not produced on the path through "
                            "`reject`: start → gate → end (gate's next_on_failure)")]
    # nor a use of the same field without a default
    assert [w[:2] for w in warnings(body.replace("|nothing was processed}", "|x} {final_result}"))
            ] == [(5, "prompt")]


def test_one_warning_per_node_and_field_named_where_a_person_sees_it() -> None:
    body = ("G,start,input,gate,,,request,request,\n"
            'G,gate,approval_interaction,process,end,Approve {request}?,request,answer,\n'
            "G,process,echo,end,,,request,final_result,\n"
            "G,end,output,,,Done: {final_result} {final_result},final_result|answer,out,\n")
    assert [w[:2] for w in warnings(body)] == [(5, "prompt")]


@pytest.mark.parametrize(("agent", "context", "branch", "produced"), [
    ("approval_interaction", "", "reject", True),
    ("edit_interaction", "", "reject", True),
    ("conversation_interaction", "", "end", True),
    ("branching", "", "next_on_failure", True),
    # a choice or text input has no failure answer: its next_on_failure is taken only when
    # the request cannot be made, and then the node writes nothing
    ("choice_interaction", '"{""options"": [""a"", ""b""]}"', "next_on_failure", False),
    ("text_input_interaction", "", "next_on_failure", False),
])
def test_each_kind_of_node_names_its_failure_branch(
        agent: str, context: str, branch: str, produced: bool) -> None:
    body = ("G,start,input,node,,,request,request,\n"
            f"G,node,{agent},ok,fix,Go,request,own,{context}\n"
            "G,ok,echo,fix,,,request,x,\n"
            "G,fix,output,,,{x} {own},,out,\n")
    found = warnings(body)
    expected = [(5, "prompt", f"prompt field {{x}} is not produced on the path through "
                              f"`{branch}`: start → node → fix (node's next_on_failure)")]
    if not produced:
        expected.append((5, "prompt", f"prompt field {{own}} is not produced on the path "
                                      f"through `{branch}`: start → node → fix (node's "
                                      "next_on_failure)"))
    assert found == expected


def test_a_path_through_several_branches_names_each() -> None:
    body = ("G,start,input,check,,,request,request,\n"
            "G,check,branching,gate,gate,,request,checked,\n"
            "G,gate,edit_interaction,work,done,Edit {request},request,edited,\n"
            "G,work,echo,done,,,edited,result,\n"
            "G,done,output,,,{result},,out,\n")
    # check's two routes lead to the same node: the shortest path takes the success one
    assert warnings(body) == [
        (6, "prompt", "prompt field {result} is not produced on the path through `reject`: "
                      "start → check → gate → done (gate's next_on_failure)")]
    twice = body.replace("G,check,branching,gate,gate", "G,check,branching,work2,gate").replace(
        "G,work,echo", "G,work2,echo,gate,,,request,other,\nG,work,echo")
    assert warnings(twice)[0][2] == (
        "prompt field {result} is not produced on the path through `next_on_failure` and "
        "`reject`: start → check → gate → done (check's next_on_failure, gate's "
        "next_on_failure)")


def test_the_flow_sets_of_the_approval_flow() -> None:
    spec = parse_workflow((EXAMPLES / "approval.csv").read_text(), "ApprovalFlow", REGISTRY)
    flow = field_flow(list(spec.nodes))
    assert flow.must["end"] == {"user_request", "request_data", "validation_result",
                                "approval_response"}
    assert flow.may["end"] == flow.must["end"] | {"final_result"}
    assert flow.must["reject"] == {"user_request", "request_data", "validation_result"}
    assert [s.target for s in flow.path_missing("end", "final_result") or []] == [
        "validate", "approve_gate", "end"]
    assert flow.path_missing("process", "approval_response") is None
