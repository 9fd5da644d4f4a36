"""The built wheel is complete: installed into a fresh virtualenv (as the container image
installs it), its `bank` finds topics.yaml and the broker's pom.xml and Maven Wrapper, starts
the embedded Kafka and runs the demo, from a directory with no source tree in it."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kbank.streams.broker import free_port

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                                 reason="starts the embedded broker")]

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANK_", "PYTHON"))}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_and_runs_the_demo_on_its_own(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], tmp_path, 300)
    wheel = next(dist.glob("kbank-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {f"kbank/schemas/{t}.v1.json" for t in ("transfers.requests", "ledger.events",
                                                   "transfers.outcomes", "transfers.deadletter",
                                                   "webhook.delivery")
            } <= shipped   # the change feed's contract goes with the code
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, 600)
    bank = str(venv / "bin" / "bank")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "create the topics" in _run([bank, "--help"], elsewhere, 60).stdout
    _run([bank, "topics", "--help"], elsewhere, 60)
    out = _run([bank, "up", "--demo", "--once", "--views", "1", "--web-port", str(free_port()),
                "--data-dir", str(tmp_path / "kafka")], elsewhere, 600).stdout
    assert "verify: OK" in out and "Apache Kafka (1 KRaft node) ready" in out, out[-2000:]
    # the embedded broker is secured: the demo ran with every process as its own principal
    assert "Kafka is secured" in out, out[-2000:]
    credentials = tmp_path / "kafka" / "credentials"
    assert sorted(p.name for p in credentials.iterdir()) == [
        "admin.properties", "books.properties", "engine.properties", "gateway.properties",
        "intake.properties", "operator.key", "operator.properties", "tools.properties",
        "views.properties", "webhooks.properties"]
    # and so is the web endpoint: the demo read balances back with the operator key it printed
    key = (credentials / "operator.key").read_text().strip()
    assert "operator API key" in out and key in out, out[-2000:]
    assert "-> balance" in out and "/stats -> {" in out, out[-2000:]
    assert (credentials / "operator.key").stat().st_mode & 0o077 == 0


def test_docker_compose_runs_the_tested_broker_secured():
    """docker-compose.yml cannot run here (no Docker): check it says what the tests run."""
    import re

    import yaml

    from kbank.streams.broker import KAFKA_VERSION

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    brokers = {n: s for n, s in compose["services"].items() if n.startswith("kafka-")}
    assert len(brokers) == 3
    for name, service in brokers.items():
        env = service["environment"]
        assert service["image"] == f"apache/kafka:{KAFKA_VERSION}"
        assert "PLAINTEXT:PLAINTEXT" not in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        assert all(p.split(":")[1] == "SASL_PLAINTEXT"
                   for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert env["KAFKA_SUPER_USERS"] == "User:admin"
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", env["CLUSTER_ID"])
        assert "${BANK_KAFKA_ADMIN_PASSWORD:?" in env["KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG"]
        assert any(v.endswith(":/var/lib/kafka/data") for v in service["volumes"]), name
    for name in ("engine-0", "engine-1", "views-0", "views-1", "webhooks-0", "gateway-0",
                 "reconciler-0", "closer", "tools"):
        env = compose["services"][name]["environment"]
        assert env["BANK_KAFKA_CREDENTIALS"] == "/credentials", name


def test_every_package_of_the_source_is_in_the_wheel():
    """pyproject.toml lists the packages by name: a new one left off it is missing from the
    wheel (the demo test then fails far from the cause)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kbank").rglob("__init__.py")}
    assert found - listed == set(), f"add to pyproject.toml's packages: {sorted(found - listed)}"
