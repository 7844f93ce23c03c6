#!/usr/bin/env bash
# The demo: start the embedded stack in the background (with its HTTP gateway: the web inbox
# and the HTTP API), run the guide's ApprovalFlow through a pause, answer it (once wrongly, to
# show the refusal), look at the result, stop the stack; then walk through all five of the
# guide's patterns with `hitlflow demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HITLFLOW_HOME="${HITLFLOW_HOME:-$(mktemp -d -t hitlflow-demo.XXXXXX)}"
export HITLFLOW_AGENTS="${HITLFLOW_AGENTS:-examples/agents.py}"
# the gateway on a free port unless one is given (8080 may be taken on this machine)
export HITLFLOW_GATEWAY_PORT="${HITLFLOW_GATEWAY_PORT:-0}"
trap 'hitlflow down >/dev/null 2>&1 || true' EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step hitlflow up --detach
hitlflow up --detach   # says where the web inbox and the HTTP API are (its URL)

thread="demo_$(date +%s)"
step hitlflow run examples/approval.csv::ApprovalFlow --thread-id "$thread" --state '{"user_request": "Buy 3 laptops for the new team"}'
hitlflow run examples/approval.csv::ApprovalFlow --thread-id "$thread" \
  --state '{"user_request": "Buy 3 laptops for the new team"}'

step hitlflow pending
hitlflow pending

step hitlflow resume "$thread" choose --data '{"choice": 1}'
hitlflow resume "$thread" choose --data '{"choice": 1}' || echo "(refused as it should be: exit $?)"

step hitlflow resume "$thread" approve --data '{"reason": "Within the Q1 budget"}'
hitlflow resume "$thread" approve --data '{"reason": "Within the Q1 budget"}'

step hitlflow status "$thread"
hitlflow status "$thread"

step hitlflow down
hitlflow down
trap - EXIT

step hitlflow demo --script
hitlflow demo --script   # the guide's five patterns; without --script it asks you at each pause
