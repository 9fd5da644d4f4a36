"""One set of hosts for every test here: three brokers, two engine hosts and two views hosts,
each a network namespace of its own (kbank.chaos.hosts), made once and removed at the end.

The brokers run as users run them across hosts: secured, replication factor 3,
min.insync.replicas 2, no unclean leader. Each test makes its own deployment (topic prefix,
principals, state) on them and heals every cut when it ends. Without root (or iproute2 and
nftables) the tests skip with the reason; `make test` installs nftables.
"""
from __future__ import annotations

import pytest

from kbank.chaos.hosts import Hosts, HostsUnavailable, why_unavailable
from kbank.streams.broker import KafkaCluster
from tests.conftest import TestCluster, deployment

BROKERS = ["broker-1", "broker-2", "broker-3"]
ENGINES = ["engine-0", "engine-1"]
VIEWS = ["views-0", "views-1"]


@pytest.fixture(scope="package")
def hosts() -> Hosts:
    reason = why_unavailable()
    if reason:
        pytest.skip(f"no network hosts on this machine: {reason}")
    made = Hosts([*BROKERS, *ENGINES, *VIEWS], prefix="kbt")
    try:
        made.create()
    except HostsUnavailable as exc:
        pytest.skip(f"no network hosts on this machine: {exc}")
    yield made
    made.remove()


@pytest.fixture(scope="package")
def host_cluster(hosts: Hosts, tmp_path_factory) -> TestCluster:
    """The three brokers, one per host."""
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-hosts"), nodes=3, secured=True,
                           hosts=[hosts.host(name) for name in BROKERS]).start()
    yield TestCluster(cluster.bootstrap_servers, cluster.admin_config(), cluster)
    cluster.stop()


@pytest.fixture
def healed(hosts: Hosts) -> Hosts:
    """The hosts, with every cut removed when the test ends (passed or not)."""
    yield hosts
    hosts.heal()


@pytest.fixture
def host_settings(host_cluster: TestCluster, tmp_path):
    """A fresh deployment on the three brokers, replicated as users run it."""
    return deployment(host_cluster, tmp_path, replication_factor=3)
