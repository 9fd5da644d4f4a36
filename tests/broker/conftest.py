"""The secured session cluster under the names the principals' tests use."""
from __future__ import annotations

from pathlib import Path

import pytest

from kbank.streams.config import Settings
from tests.conftest import TestCluster, deployment


@pytest.fixture(scope="session")
def secured_cluster(test_cluster: TestCluster) -> TestCluster:
    if test_cluster.admin_config is None:
        pytest.skip("an external cluster without BANK_TEST_ADMIN_PROPERTIES: no super user")
    return test_cluster


def provisioned(cluster: TestCluster, directory: Path) -> Settings:
    """Settings of a fresh deployment on the secured cluster: its users, ACLs and topics,
    every process connecting as its role's principal."""
    return deployment(cluster, directory, prefix=None)
