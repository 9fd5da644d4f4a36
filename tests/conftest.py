"""Shared fixtures: one real broker per test session, fresh topics per test.

KAFKA_BOOTSTRAP_SERVERS points the suite at another cluster; otherwise an
embedded Apache Kafka node is started on a free loopback port and stopped at
the end (the cluster tests start a 3-node cluster of their own).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import replace

import pytest

from kbank.streams.broker import KafkaCluster, free_port
from kbank.streams.config import Settings
from kbank.streams.apikeys import OPERATOR
from kbank.streams.keystore import create_key
from kbank.streams.supervisor import WorkerPool, wait_for_views
from kbank.streams.topics import ensure_topics
from tests import http


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory) -> str:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka"), nodes=1).start()
    yield cluster.bootstrap_servers
    cluster.stop()


@pytest.fixture
def settings(bootstrap_servers: str, tmp_path) -> Settings:
    """Settings for one test: its own topic prefix and state directory, topics created."""
    base = Settings.from_env()
    s = replace(base, bootstrap_servers=bootstrap_servers,
                topic_prefix=f"t{uuid.uuid4().hex[:10]}-", state_dir=str(tmp_path / "state"),
                partitions=8, test_mode=True)
    ensure_topics(s)
    return s


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
    for pool in pools:
        for wid in list(pool.procs):
            pool.kill(wid)


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
    for pool in pools:
        for wid in list(pool.procs):
            pool.kill(wid)
