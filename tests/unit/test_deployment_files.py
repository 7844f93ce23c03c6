"""compose.yaml and k8s/ stay in step with the services the command can serve."""

from __future__ import annotations

import yaml

from contracts.limits import NATS_MAX_PAYLOAD, REQUIRED_NATS_PAYLOAD
from hitlflow.stack import server_config
from tests.conftest import ROOT

SERVICES = {"workflow", "interaction", "timeout", "projections", "gateway"}


def test_compose_runs_every_service_on_the_cluster() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    served = {s["command"][1] for s in compose["services"].values()
              if s.get("command", [None])[0] == "serve"}
    assert served == SERVICES
    env = compose["x-service"]["environment"]
    assert env["HITLFLOW_STREAM_REPLICAS"] == "3"
    assert env["HITLFLOW_NATS_URL"].count("nats://") == 3


def test_k8s_has_a_deployment_per_service() -> None:
    served = set()
    for path in (ROOT / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                [container] = doc["spec"]["template"]["spec"]["containers"]
                assert container["args"][0] == "serve"
                served.add(container["args"][1])
    assert served == SERVICES


def test_every_nats_server_allows_the_contracts_largest_message() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    conf = compose["configs"]["nats-conf"]["content"]
    assert f"max_payload: {NATS_MAX_PAYLOAD}" in conf
    for name in ("nats-1", "nats-2", "nats-3"):
        command = compose["services"][name]["command"]
        assert command[:2] == ["-c", "/etc/nats/hitlflow.conf"]
    values = yaml.safe_load((ROOT / "k8s" / "nats-values.yaml").read_text())
    assert values["config"]["merge"]["max_payload"] == NATS_MAX_PAYLOAD
    assert f"max_payload: {NATS_MAX_PAYLOAD}" in server_config()
    assert NATS_MAX_PAYLOAD >= REQUIRED_NATS_PAYLOAD
