"""CSV loading: every problem names file, row and column; nothing is guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.workflow.agents import AgentRegistry
from services.workflow.definition import WorkflowError, load_workflow

HEADER = ("graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,"
          "input_fields,output_field,context\n")


def write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "flow.csv"
    path.write_text(header + body)
    return path


def problems(path: Path) -> list[tuple[int, str, str]]:
    with pytest.raises(WorkflowError) as error:
        load_workflow(path, registry=AgentRegistry())
    return [(p.row, p.column, p.message) for p in error.value.problems]


def test_a_valid_graph_loads_with_rows_and_a_stable_digest(tmp_path: Path) -> None:
    path = write(tmp_path, "G,start,input,ask,,,x,x,\n"
                           'G,ask,approval_interaction,,,"Ok {x}?",x,y,"{""a"": 1}"\n')
    spec = load_workflow(path, registry=AgentRegistry())
    assert [n.row for n in spec.nodes] == [2, 3]
    assert spec.nodes[1].context == {"a": 1}
    assert spec.digest == load_workflow(path).digest


def test_unknown_agent_type_names_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "G,start,input,next,,,x,x,\nG,next,magic_agent,,,,x,y,\n")
    [(row, column, message)] = problems(path)
    assert (row, column) == (3, "agent_type")
    assert "unknown agent type 'magic_agent'" in message


def test_missing_next_node(tmp_path: Path) -> None:
    path = write(tmp_path, "G,start,input,nowhere,also_nowhere,,x,x,\n")
    found = problems(path)
    assert (2, "next_on_success", "next node 'nowhere' does not exist in graph 'G'") in found
    assert any(c == "next_on_failure" and "also_nowhere" in m for _, c, m in found)


@pytest.mark.parametrize(("context", "expected"), [
    ('"{not json}"', "invalid JSON"),
    ('"[1, 2]"', "expected a JSON object, got list"),
])
def test_invalid_context(tmp_path: Path, context: str, expected: str) -> None:
    path = write(tmp_path, f"G,start,input,,,,x,x,{context}\n")
    [(row, column, message)] = problems(path)
    assert (row, column) == (2, "context") and expected in message


def test_missing_required_column(tmp_path: Path) -> None:
    path = write(tmp_path, "G,start\n", header="graph_name,node_name\n")
    [(row, column, message)] = problems(path)
    assert (row, column) == (1, "agent_type")
    assert "missing required column 'agent_type'" in message


def test_interaction_context_errors(tmp_path: Path) -> None:
    path = write(tmp_path,
                 "G,a,choice_interaction,b,,Pick,x,y,\n"
                 'G,b,human,c,,Hi,x,y,"{""other"": 1}"\n'
                 'G,c,human,,,Hi,x,y,"{""interaction_type"": ""vote""}"\n')
    found = {(row, message.split(";")[0]) for row, _, message in problems(path)}
    assert any(row == 2 and "needs \"options\"" in m for row, m in found)
    assert any(row == 3 and "needs \"interaction_type\"" in m for row, m in found)
    assert any(row == 4 and "unknown interaction_type 'vote'" in m for row, m in found)


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "G,start,input,gone,,,x,x,\n")
    with pytest.raises(WorkflowError) as error:
        load_workflow(path)
    assert str(error.value).startswith(f"{path}:2 [next_on_success]: ")


def test_invalid_timeout_policy_is_an_error_with_its_row(tmp_path: Path) -> None:
    path = write(tmp_path, "G,start,input,gate,,,x,x,\n"
                           'G,gate,approval_interaction,end,,Ok?,x,y,'
                           '"{""on_timeout"": {""policy"": ""explode""}}"\n'
                           "G,end,output,,,done,y,z,\n")
    [(row, column, message)] = problems(path)
    assert (row, column) == (3, "context")
    assert "on_timeout" in message and "fail, default, remind, escalate" in message
