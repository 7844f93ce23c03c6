"""Property: on random small graphs, the data-flow analysis behind ``validate`` agrees with
enumerating every path from the start node.

- a field in ``must[node]`` (produced on every path) is produced on every path; a field not in
  it is missed by some path, and ``path_missing`` gives a real one of the shortest length;
- a field in ``may[node]`` is produced on some walk to the node, and only then;
- the analysed nodes are exactly those some path reaches.

The oracle reads the routes straight from the nodes: success, failure, a fallback's ``to``;
a fallback taken ``always`` leaves only its own route; every route writes the node's output
field except a choice or text input's failure route (taken when no request could be made).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.workflow import NodeSpec
from services.workflow.definition import field_flow

FIELDS = ["a", "b", "c", "d"]
KINDS = ["echo", "branching", "approval_interaction", "edit_interaction",
         "conversation_interaction", "choice_interaction", "text_input_interaction"]
#: (source, target, route, writes the source's output)
Edge = tuple[str, str, str, bool]


@st.composite
def graphs(draw: st.DrawFn) -> list[NodeSpec]:
    count = draw(st.integers(1, 6))
    names = [f"n{i}" for i in range(count)]
    target = st.sampled_from([*names, None, None])
    nodes = []
    for index, name in enumerate(names):
        kind = "input" if index == 0 else draw(st.sampled_from(KINDS))
        context: dict[str, object] = {}
        if kind == "choice_interaction":
            context["options"] = ["one", "two"]
        if kind.endswith("_interaction") and draw(st.integers(0, 3)) == 0:
            to = draw(st.sampled_from(names))
            when = draw(st.sampled_from(["on_error", "always"]))
            if kind == "approval_interaction" and draw(st.booleans()):
                context["fallback"] = {"when": when,
                                       "action": draw(st.sampled_from(["approve", "reject"]))}
            else:
                context["fallback"] = {"when": when, "to": to}
        nodes.append(NodeSpec(
            name=name, agent_type=kind,
            next_on_success=draw(target), next_on_failure=draw(target),
            input_fields=tuple(draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True)))
            if index == 0 else (),
            output_field=draw(st.sampled_from([*FIELDS, None])),
            context=context, row=index + 2))
    return nodes


def edges_of(node: NodeSpec) -> list[Edge]:
    fallback = node.context.get("fallback")
    routes = {"success": node.next_on_success, "failure": node.next_on_failure,
              "fallback": fallback.get("to") if isinstance(fallback, dict) else None}
    if isinstance(fallback, dict) and fallback.get("when") == "always":
        only = ("fallback" if "to" in fallback else
                "success" if fallback.get("action") == "approve" else "failure")
        routes = {route: (target if route == only else None) for route, target in routes.items()}
    no_failure_answer = node.agent_type in ("choice_interaction", "text_input_interaction")
    return [(node.name, target, route, not (route == "failure" and no_failure_answer))
            for route, target in routes.items() if target]


def writes(edge: Edge, field: str, outputs: dict[str, str | None]) -> bool:
    return edge[3] and outputs[edge[0]] == field


def simple_paths(start: str, out: dict[str, list[Edge]]) -> Iterator[tuple[str, list[Edge]]]:
    """(node, edges from the start node to it) for every path that repeats no node."""
    def walk(node: str, path: list[Edge], seen: set[str]) -> Iterator[tuple[str, list[Edge]]]:
        yield node, path
        for edge in out[node]:
            if edge[1] not in seen:
                yield from walk(edge[1], [*path, edge], seen | {edge[1]})

    yield from walk(start, [], {start})


def closure(start: str, out: dict[str, list[Edge]]) -> set[str]:
    found, todo = {start}, [start]
    while todo:
        for edge in out[todo.pop()]:
            if edge[1] not in found:
                found.add(edge[1])
                todo.append(edge[1])
    return found


@settings(max_examples=400, deadline=None)
@given(nodes=graphs())
def test_the_analysis_agrees_with_every_path(nodes: list[NodeSpec]) -> None:
    flow = field_flow(nodes)
    start = nodes[0].name
    initial = set(nodes[0].input_fields)
    out = {n.name: edges_of(n) for n in nodes}
    outputs = {n.name: n.output_field for n in nodes}
    paths: dict[str, list[list[Edge]]] = {}
    for node, path in simple_paths(start, out):
        paths.setdefault(node, []).append(path)
    assert set(flow.must) == set(paths) == set(flow.may)

    for node, to_node in paths.items():
        for field in FIELDS:
            missing = [p for p in to_node
                       if field not in initial and not any(writes(e, field, outputs) for e in p)]
            # must: produced on every path, exactly when no path misses it
            assert (field in flow.must[node]) == (not missing), (node, field, missing)
            found = flow.path_missing(node, field)
            if not missing:
                assert found is None
            else:
                assert found is not None
                steps = [(s.source, s.target, s.route, s.carries_output) for s in found]
                assert all(step in out[step[0]] for step in steps)  # a real path ...
                assert [s[0] for s in steps[:1]] in ([start], [])    # ... from the start
                assert (steps[-1][1] if steps else start) == node     # ... to the node
                assert all(a[1] == b[0] for a, b in pairwise(steps))
                assert not any(writes(e, field, outputs) for e in steps)  # ... that misses it
                assert len(steps) == min(len(p) for p in missing)       # ... and is shortest
            # may: some walk reaches the node after an edge that writes the field
            somewhere = field in initial or any(
                writes(edge, field, outputs) and node in closure(edge[1], out)
                for source in paths for edge in out[source])
            assert (field in flow.may[node]) == somewhere, (node, field)
