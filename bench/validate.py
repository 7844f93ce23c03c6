"""How long ``hitlflow validate``'s checks take on large graphs, and what filling a prompt costs.

    .venv/bin/python -m bench.validate                 # 100, 250 and 500 nodes (the limit)
    .venv/bin/python -m bench.validate --nodes 300 --repeat 5

The graph is a ladder built to make the path analysis work hard: node ``kI`` is a branching
agent whose success route goes through ``pI`` (which produces field ``fI``) and whose failure
route skips it; every ``kI`` shows every earlier field in its prompt, so each node reports
warnings for the paths that miss them, each with its shortest path. A back edge from the last
node to the first makes the analysis iterate to a fixed point. It is a worst case: warnings
grow with the square of the size and each names a path as long as the graph. Prints the time
of ``check_workflow`` (parsing included) and of the analysis alone, the number of warnings,
and the time one prompt takes to fill (``fill``) beside a plain ``re.sub`` that fills the same
template the same way but records nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Callable

from contracts.limits import MAX_NODES
from services.workflow.agents import AgentRegistry
from services.workflow.definition import check_workflow, field_flow, parse_workflow
from services.workflow.templates import fill

HEADER = ("graph_name,node_name,agent_type,next_on_success,next_on_failure,prompt,input_fields,"
          "output_field,context\n")
#: How many earlier fields each rung's prompt names (a window, so the text stays small).
WINDOW = 8


def ladder(rungs: int) -> str:
    rows = ["G,start,input,k0,,,request,request,"]
    for i in range(rungs):
        following = f"k{i + 1}" if i + 1 < rungs else "end"
        uses = " ".join(f"{{f{j}}}" for j in range(max(0, i - WINDOW), i))
        rows.append(f"G,k{i},branching,p{i},{following},Check {uses},request,route,")
        rows.append(f"G,p{i},echo,{following},,,request,f{i},")
    rows.append("G,end,approval_interaction,k0,,Done? {f0},request,answer,")
    return HEADER + "\n".join(rows) + "\n"


def timed(run: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[100, 250, MAX_NODES],
                        help=f"graph sizes in nodes (at most {MAX_NODES}, the limit)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    registry = AgentRegistry()
    print(f"{'nodes':>6} {'warnings':>9} {'check_workflow ms':>18} {'analysis ms':>12}")
    for size in args.nodes:
        text = ladder(max(1, (min(size, MAX_NODES) - 2) // 2))
        spec = parse_workflow(text, "G", registry)
        nodes = list(spec.nodes)
        report = check_workflow("ladder.csv", "G", registry, text=text)
        check = timed(lambda text=text: check_workflow("ladder.csv", "G", registry, text=text),
                      args.repeat)
        flow = timed(lambda nodes=nodes: field_flow(nodes), args.repeat)
        print(f"{len(nodes):>6} {len(report.warnings):>9} {check * 1000:>18.1f} "
              f"{flow * 1000:>12.1f}")

    template = "Please approve this request: {validation_result} for {owner|the team} ({amount})"
    state = {"validation_result": {"request": "Buy 3 laptops", "valid": True, "problems": []},
             "amount": 1200}
    plain = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
    calls = 100_000
    filled = timed(lambda: [fill(template, state) for _ in range(calls)], args.repeat)

    def value(match: re.Match[str]) -> str:
        found = state.get(match.group(1), match.group(0))
        return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)

    subbed = timed(lambda: [plain.sub(value, template) for _ in range(calls)], args.repeat)
    print(f"fill: {filled / calls * 1e6:.2f} µs per prompt; a plain re.sub of the same "
          f"template: {subbed / calls * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
