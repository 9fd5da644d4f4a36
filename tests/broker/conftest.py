"""A secured embedded broker (SASL/SCRAM, ACLs) for the tests of the principals."""
from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from kbank.streams.broker import KafkaCluster
from kbank.streams.config import Settings
from kbank.streams.principals import secure_deployment
from kbank.streams.topics import ensure_topics


@pytest.fixture(scope="session")
def secured_cluster(tmp_path_factory) -> KafkaCluster:
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-secured"), secured=True).start()
    yield cluster
    cluster.stop()


def provisioned(cluster: KafkaCluster, credentials: Path, state_dir: Path) -> Settings:
    """Settings of a fresh deployment on the secured cluster: its users, ACLs and topics,
    every process connecting as its role's principal."""
    settings = replace(Settings.from_env(), bootstrap_servers=cluster.bootstrap_servers,
                       topic_prefix=f"s{uuid.uuid4().hex[:8]}-", partitions=8,
                       state_dir=str(state_dir))
    settings = secure_deployment(settings, cluster.admin_config(), credentials)
    ensure_topics(settings)
    return settings
