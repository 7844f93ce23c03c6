"""compose.yaml and k8s/ stay in step with the services the command can serve."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from contracts.limits import NATS_MAX_PAYLOAD, REQUIRED_NATS_PAYLOAD
from hitlflow.auth import auth_files
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


# -- the same shape everywhere: validated offline ---------------------------------------------

K8S_VERSION = "1.37.0"  # schemas bundled by the kubernetes-validate package (no network)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / "k8s").glob("*.yaml")):
        if path.name == "nats-values.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def test_every_manifest_is_valid_for_kubernetes() -> None:
    assert manifests()
    for name, doc in manifests():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{name}: {doc['kind']} {doc['metadata']['name']}: "
                                 f"{error.message}") from None


def test_the_validation_catches_a_misspelt_field() -> None:
    [deployment] = [d for n, d in manifests() if n == "workflow.yaml" and d["kind"] ==
                    "Deployment"]
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_each_service_has_probes_requests_replicas_and_a_disruption_budget() -> None:
    docs = [doc for _, doc in manifests()]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]
        assert spec["replicas"] >= 2, name
        [container] = spec["template"]["spec"]["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ports, (name, probe)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        labels = spec["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items()
                    <= labels.items()]
        assert len(covering) == 1 and covering[0]["spec"]["minAvailable"] == 1, name
        if container["args"][1] != "gateway":  # the services' port comes from the settings
            config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
            assert str(ports["metrics"]) == config["HITLFLOW_METRICS_PORT"], name
            assert config["HITLFLOW_METRICS_HOST"] == "0.0.0.0"


def chart_keys() -> tuple[set[str], set[str]]:
    """The chart's value keys as recorded (k8s/nats-chart-keys.txt), and those under which it
    takes any key."""
    keys, open_maps = set(), set()
    for line in (ROOT / "k8s" / "nats-chart-keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            path, _, marker = line.partition(" ")
            keys.add(path)
            if marker == "{}":
                open_maps.add(path)
    return keys, open_maps


def value_paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        paths.append(path)
        if isinstance(value, dict):
            paths += value_paths(value, path)
    return paths


def test_the_nats_values_are_keys_of_the_official_chart() -> None:
    keys, open_maps = chart_keys()
    assert {"config.cluster.enabled", "config.jetstream.fileStore.pvc.size"} <= keys
    values = yaml.safe_load((ROOT / "k8s" / "nats-values.yaml").read_text())
    for path in value_paths(values):
        under_open = any(path.startswith(f"{m}.") for m in open_maps)
        assert path in keys or under_open, f"k8s/nats-values.yaml: {path} is not a key of " \
                                           "the NATS chart (k8s/nats-chart-keys.txt)"
    assert values["config"]["cluster"]["replicas"] == 3
    assert values["podDisruptionBudget"]["enabled"] is True
    assert {"cpu", "memory"} <= set(values["container"]["merge"]["resources"]["requests"])
    assert "config.clustr" not in keys  # (the check can fail: a misspelt key is not there)


def test_compose_has_healthchecks_and_two_replicas_of_each_service() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert "healthcheck" in service, name
        if service.get("command", [None])[0] == "serve" and service["command"][1] != "gateway":
            assert service["deploy"]["replicas"] == 2, name
            assert "/readyz" in " ".join(service["healthcheck"]["test"]), name
            assert service["environment"]["HITLFLOW_METRICS_PORT"] == "9090"
            assert all(dep["condition"] == "service_healthy"
                       for dep in service["depends_on"].values()), name
    for node in ("nats-1", "nats-2", "nats-3"):
        assert "--http_port" in compose["services"][node]["command"], node


# -- every service on NATS as its own user, with the directory ---------------------------------

#: Where compose.yaml and k8s/config.yaml expect the files `hitlflow users init` makes
#: (HITLFLOW_HOME=./deploy) and the ones printed by `users nats-config` / `users directory`.
DEPLOY_AUTH = auth_files(Path("deploy")).folder


def _deployments() -> dict[str, dict[str, Any]]:
    found = {}
    for path in (ROOT / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                found[doc["spec"]["template"]["spec"]["containers"][0]["args"][1]] = doc
    return found


def test_compose_gives_each_service_its_own_nats_user_and_the_directory() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    secrets = {name: Path(s["file"]) for name, s in compose["secrets"].items()}
    for name, service in compose["services"].items():
        if service.get("command", [None])[0] != "serve":
            continue
        served = service["command"][1]
        env = service.get("environment") or compose["x-service"]["environment"]
        mounted = {s["target"]: secrets[s["source"]] for s in service["secrets"]}
        creds, directory = (Path(env["HITLFLOW_NATS_CREDS"]),
                            Path(env["HITLFLOW_IDENTITY_FILE"]))
        assert creds.parent == directory.parent == Path("/run/secrets"), name
        assert mounted[creds.name] == Path(".") / auth_files(Path("deploy")).creds(served)
        assert mounted[directory.name] == Path(".") / DEPLOY_AUTH / "directory.json"
        if served == "gateway":
            key = Path(env["HITLFLOW_AUTH_JWT_SECRET_FILE"])
            assert mounted[key.name] == Path(".") / auth_files(Path("deploy")).jwt_secret
        else:
            assert "jwt.secret" not in mounted, name  # only the gateway checks tokens
    assert not any(path.name in ("users.json", "operator.creds") for path in secrets.values())


def test_k8s_gives_each_service_its_own_nats_user_and_the_directory() -> None:
    [config] = [d for d in yaml.safe_load_all((ROOT / "k8s" / "config.yaml").read_text())
                if d["kind"] == "ConfigMap"]
    creds = Path(config["data"]["HITLFLOW_NATS_CREDS"])
    directory = Path(config["data"]["HITLFLOW_IDENTITY_FILE"])
    assert creds.parent == directory.parent
    deployments = _deployments()
    assert set(deployments) == SERVICES
    for served, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == creds.parent]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "hitlflow-auth"
        items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
        assert items[creds.name] == f"{served}.creds"
        assert items[directory.name] == "directory.json"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if served == "gateway":
            key = Path(env["HITLFLOW_AUTH_JWT_SECRET_FILE"])
            assert key.parent == creds.parent and items[key.name] == "jwt.secret"
        else:
            assert "jwt.secret" not in items.values()


def test_every_nats_server_has_the_stacks_users() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    conf = compose["configs"]["nats-conf"]["content"]
    [include] = [line.split()[1] for line in conf.splitlines() if line.startswith("include ")]
    config_dir = Path("/etc/nats")  # where the nats services mount hitlflow.conf
    for name in ("nats-1", "nats-2", "nats-3"):
        service = compose["services"][name]
        assert service["configs"] == [{"source": "nats-conf",
                                       "target": str(config_dir / "hitlflow.conf")}]
        [secret] = service["secrets"]
        assert Path(secret["target"]) == config_dir / include
        assert Path(compose["secrets"][secret["source"]]["file"]) == (
            Path(".") / DEPLOY_AUTH / "nats-auth.conf")

    values = yaml.safe_load((ROOT / "k8s" / "nats-values.yaml").read_text())
    included = Path("/etc/nats-config") / values["config"]["merge"]["$include"]
    [mount] = [p["value"] for p in values["container"]["patch"]
               if p["path"] == "/volumeMounts/-"]
    [volume] = [p["value"] for p in values["podTemplate"]["patch"]
                if p["path"] == "/spec/volumes/-"]
    assert mount["name"] == volume["name"]
    assert Path(os.path.normpath(included)).parent == Path(mount["mountPath"])
    assert volume["secret"]["secretName"] == "hitlflow-nats-auth"
    setup = (ROOT / "k8s" / "config.yaml").read_text()
    assert (f"create secret generic hitlflow-nats-auth \\\n#     --from-file="
            f"{included.name}=deploy/auth/nats-auth.conf") in setup
