"""Shared fixtures: one real, secured broker per test session, a fresh deployment per test.

The suite runs what `bank up` runs (issue 40): the embedded Apache Kafka with SASL/SCRAM and
ACLs, and every test's deployment provisioned by the same `secure_deployment` path, so each
process and tool connects as its role's principal with only the grants of
kbank.streams.principals. A test that needs more (planting a record on an internal topic, as
an attacker with the super user's rights would) asks for kafka.ADMIN and says why.

KAFKA_BOOTSTRAP_SERVERS points the suite at another cluster; with
BANK_TEST_ADMIN_PROPERTIES (a librdkafka properties file of that cluster's super user) its
deployments are provisioned the same way, else its tests connect as whoever the KAFKA_*
client settings say (an unsecured cluster: everyone is the super user).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace

import pytest

from kbank.streams.broker import KafkaCluster, free_port
from kbank.streams.config import Settings
from kbank.streams.apikeys import OPERATOR
from kbank.streams.kafka import read_properties
from kbank.streams.keystore import create_key
from kbank.streams.principals import secure_deployment
from kbank.streams.supervisor import WorkerPool, wait_for_views
from kbank.streams.topics import ensure_topics
from tests import http


@dataclass(frozen=True)
class TestCluster:
    """The session's cluster: where it is and its super user's client settings (None: an
    external cluster without them, used as it is)."""

    __test__ = False    # a fixture's value, not a test class

    bootstrap_servers: str
    admin_config: dict[str, str] | None
    cluster: KafkaCluster | None = None


@pytest.fixture(scope="session")
def test_cluster(tmp_path_factory) -> TestCluster:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        admin_file = os.environ.get("BANK_TEST_ADMIN_PROPERTIES")
        yield TestCluster(external, read_properties(admin_file) if admin_file else None)
        return
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka"), nodes=1, secured=True).start()
    yield TestCluster(cluster.bootstrap_servers, cluster.admin_config(), cluster)
    cluster.stop()


@pytest.fixture(scope="session")
def bootstrap_servers(test_cluster: TestCluster) -> str:
    return test_cluster.bootstrap_servers


def deployment(test_cluster: TestCluster, directory, prefix: str | None = None,
               create_topics: bool = True, **overrides: object) -> Settings:
    """A fresh deployment on the session's cluster, as `bank up` makes one: its own topic
    prefix, principals, ACLs (secure_deployment) and topics; its state and credentials in
    `directory`."""
    prefix = prefix or f"t{uuid.uuid4().hex[:10]}-"
    s = replace(Settings.from_env(), bootstrap_servers=test_cluster.bootstrap_servers,
                topic_prefix=prefix, state_dir=os.path.join(directory, "state"), partitions=8, test_mode=True,
                **overrides)
    if test_cluster.admin_config is not None:
        s = secure_deployment(s, test_cluster.admin_config, os.path.join(directory, "credentials"))
    if create_topics:
        ensure_topics(s)
    return s


@pytest.fixture
def settings(test_cluster: TestCluster, tmp_path) -> Settings:
    """Settings for one test: its own secured deployment and state directory."""
    return deployment(test_cluster, tmp_path)


def kill_all(pools: list[WorkerPool]) -> None:
    """SIGKILL every worker of the pools (a test's end)."""
    for pool in pools:
        for wid in list(pool.procs):
            pool.kill(wid)


@pytest.fixture
def pool_factory(tmp_path):
    """Start engine worker processes (or `command`'s: webhooks); each is killed when the
    test ends."""
    pools: list[WorkerPool] = []

    def start(settings: Settings, count: int, command: str = "worker") -> WorkerPool:
        log_dir = tmp_path / "logs"
        log_dir.mkdir(exist_ok=True)
        pool = WorkerPool(settings, count, str(log_dir), command=command)
        pools.append(pool)
        return pool

    yield start
    kill_all(pools)


@pytest.fixture
def views_factory(tmp_path):
    """Start views worker processes (each with a web port); killed when the test ends.

    The first start makes an operator API key for the test's deployment, which tests.http
    then sends (tests of other keys make their own)."""
    pools: list[WorkerPool] = []
    keys: dict[str, str] = {}

    def start(settings: Settings, count: int) -> WorkerPool:
        if settings.topic_prefix not in keys:
            keys[settings.topic_prefix] = create_key(settings, OPERATOR, label="tests").token
        http.use_key(keys[settings.topic_prefix])
        log_dir = tmp_path / "logs"
        log_dir.mkdir(exist_ok=True)
        pool = WorkerPool(settings, count, str(log_dir), command="views",
                          web_ports=[free_port() for _ in range(count)])
        pools.append(pool)
        assert wait_for_views([pool.url(w) for w in pool.procs], settings.partitions), \
            "views workers did not become ready"
        return pool

    yield start
    http.use_key(None)
    kill_all(pools)
