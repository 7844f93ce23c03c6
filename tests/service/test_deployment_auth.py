"""The deployment's NATS servers, configured as compose.yaml configures them (its nats-conf and
the authorization block `hitlflow users nats-config` prints), take each service's credentials
(`hitlflow users init`) and hold each user to its role; the directory the services mount
(`hitlflow users directory`) has the roles without the passwords."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.errors import TimeoutError as NatsTimeoutError

from hitlflow import auth
from hitlflow.stack import free_port, nats_answers, nats_server_binary
from services.common.identity import Directory
from services.common.messaging import connect
from tests.conftest import ROOT
from tests.helpers import runner, wait_for

SERVICE_USERS = ("workflow", "interaction", "timeout", "projections", "gateway")


def hitlflow(home: Path, *args: str) -> str:
    from hitlflow.cli import app

    result = runner.invoke(app, list(args), env={"HITLFLOW_HOME": str(home)})
    assert result.exit_code == 0, result.stderr
    return str(result.stdout)


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """The files of compose.yaml made as its header says, and one NATS server started with
    compose's configuration: the deploy folder, the server's URL and erp's API key."""
    home = tmp_path / "deploy"
    hitlflow(home, "users", "init")
    made = hitlflow(home, "users", "add", "erp", "--role", "system", "--api-key")
    key = re.search(r"X-API-Key header\): (\S+)", made)
    assert key is not None, made
    folder = auth.auth_files(home).folder
    (folder / "nats-auth.conf").write_text(hitlflow(home, "users", "nats-config"))
    (folder / "directory.json").write_text(hitlflow(home, "users", "directory"))

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    etc = tmp_path / "etc" / "nats"  # as the nats services mount them
    etc.mkdir(parents=True)
    (etc / "hitlflow.conf").write_text(compose["configs"]["nats-conf"]["content"])
    (etc / "auth.conf").write_text((folder / "nats-auth.conf").read_text())
    port = free_port()
    server = subprocess.Popen(
        [nats_server_binary(), "-c", str(etc / "hitlflow.conf"), "-a", "127.0.0.1",
         "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is not None or nats_answers(url),
                 what="the NATS server to start")
        assert server.poll() is None, "nats-server refused compose's configuration"
        yield home, url, key.group(1)
    finally:
        server.terminate()
        server.wait(timeout=10)


def creds(home: Path, name: str) -> dict[str, Any]:
    found = json.loads(auth.auth_files(home).creds(name).read_text())
    return {"user": found["user"], "password": found["password"]}


async def allowed(url: str, who: dict[str, Any], subject: str) -> bool:
    """Does the server let ``who`` publish on ``subject`` (False: a permissions violation)?"""
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    nc = await connect(url, name="deployment-test", **who)
    nc._error_cb = on_error  # the server's refusal arrives as an asynchronous -ERR
    try:
        await nc.publish(subject, b"{}")
        await nc.flush()
        try:
            async with asyncio.timeout(1):
                while not errors:
                    await asyncio.sleep(0.02)
        except (TimeoutError, NatsTimeoutError):
            pass
        return not any("permissions violation" in e.lower() for e in errors)
    finally:
        await nc.close()


def test_each_service_connects_as_itself_and_only_within_its_role(
        deploy: tuple[Path, str, str]) -> None:
    home, url, _ = deploy

    async def check() -> None:
        for name in SERVICE_USERS:
            nc = await connect(url, name=name, **creds(home, name))
            assert nc.is_connected
            await nc.close()
        workflow, gateway = creds(home, "workflow"), creds(home, "gateway")
        assert await allowed(url, workflow, "hitl.evt.workflow.ThreadStarted.t1")
        assert not await allowed(url, workflow, "hitl.evt.interaction.ResponseAccepted.t1")
        assert await allowed(url, gateway, "hitl.cmd.resume.gateway.t1")
        assert not await allowed(url, gateway, "hitl.cmd.resume.alice.t1")
        assert await allowed(url, creds(home, "erp"), "hitl.cmd.start.erp.t1")
        with pytest.raises(Exception, match="Authorization Violation"):
            await nats.connect(url, user="workflow", password="guessed",
                               allow_reconnect=False, connect_timeout=5)

    asyncio.run(check())


def test_the_directory_the_services_mount_has_roles_and_no_passwords(
        deploy: tuple[Path, str, str]) -> None:
    home, _, key = deploy
    folder = auth.auth_files(home).folder
    text = (folder / "directory.json").read_text()
    assert "password" not in text
    directory = Directory(folder / "directory.json")
    assert {n: directory.user(n).role for n in SERVICE_USERS} == {  # type: ignore[union-attr]
        "workflow": "service", "interaction": "service", "timeout": "service",
        "projections": "service", "gateway": "gateway"}
    system = directory.by_api_key(key)
    assert system is not None and (system.name, system.role) == ("erp", "system")
    assert directory.by_api_key(key + "x") is None
    # the authorization block needs the passwords: it is made from users.json, not this
    from hitlflow.cli import app

    refused = runner.invoke(app, ["users", "nats-config", "--users",
                                  str(folder / "directory.json")])
    assert refused.exit_code == 2 and "has no password" in refused.stderr
