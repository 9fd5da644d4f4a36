"""The tests across hosts: one set of hosts and three brokers on them for this package (the
broker kills of test_broker_kills share them), a deployment per test, every cut healed when
a test ends. Without root (or iproute2 and nftables) they skip with the
reason; `make test` installs nftables and Toxiproxy.
"""
from __future__ import annotations

import pytest

from kbank.chaos.hosts import Hosts
from kbank.chaos.network import BROKERS, VIEWS
from kbank.streams.broker import KafkaCluster
from tests.conftest import TestCluster, deployment, kill_all

__all__ = ["BROKERS", "VIEWS"]   # the hosts bank chaos --hosts makes, and two engine hosts
ENGINES = ["engine-0", "engine-1"]
NO_HOSTS: list[str] = []    # why network hosts cannot be made here, once known


@pytest.fixture(scope="package")
def network_hosts():  # noqa: ANN201 - kbank.chaos.hosts.Hosts or None
    """Three broker hosts, two engine hosts and two views hosts, each a network namespace of
    its own (kbank.chaos.hosts), made once for this package (its brokers stop with it, not idle under the rest of the suite); None where they cannot be made
    (no root, iproute2 or nftables: NO_HOSTS says why)."""
    from kbank.chaos.hosts import Hosts, HostsUnavailable, why_unavailable

    reason = why_unavailable()
    made = Hosts([*BROKERS, *ENGINES, *VIEWS], prefix="kbt")
    if reason is None:
        try:
            made.create()
        except HostsUnavailable as exc:
            reason = str(exc)
    if reason is not None:
        NO_HOSTS.append(f"no network hosts on this machine: {reason}")
        yield None
        return
    yield made
    made.remove()


@pytest.fixture(scope="package")
def three_brokers(network_hosts, tmp_path_factory) -> TestCluster:  # noqa: ANN001
    """Three secured brokers as users run them (replication 3, min.insync.replicas 2), one
    per broker host, each with a second listener that advertises a Toxiproxy on the first
    engine host (kbank.chaos.toxics); on loopback where there are no hosts. Shared by
    the broker kills and the network faults here."""
    from kbank.chaos.toxics import proxy_address

    if network_hosts is None:
        cluster = KafkaCluster(tmp_path_factory.mktemp("kafka3"), nodes=3, secured=True).start()
    else:
        cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-hosts"), nodes=3, secured=True,
                               hosts=[network_hosts.host(name) for name in BROKERS],
                               via=[proxy_address(n) for n in range(1, len(BROKERS) + 1)]).start()
    yield TestCluster(cluster.bootstrap_servers, cluster.admin_config(), cluster)
    cluster.stop(timeout_s=3)   # its data is the session's: no clean shutdown to wait for




@pytest.fixture
def hosts(network_hosts: Hosts | None) -> Hosts:
    if network_hosts is None:
        pytest.skip(NO_HOSTS[0])
    return network_hosts


@pytest.fixture
def host_cluster(hosts: Hosts, three_brokers: TestCluster) -> TestCluster:
    return three_brokers


@pytest.fixture
def healed(hosts: Hosts) -> Hosts:
    """The hosts, with every cut removed when the test ends (passed or not)."""
    yield hosts
    hosts.heal()


@pytest.fixture
def host_settings(host_cluster: TestCluster, tmp_path):
    """A fresh deployment on the three brokers, replicated as users run it."""
    return deployment(host_cluster, tmp_path, replication_factor=3)


@pytest.fixture
def host_pools(hosts: Hosts, tmp_path):
    """Start workers (`worker` or `views`), worker N on the host names[N], logging under
    logs/<label>; each is killed when the test ends. Views workers get a web port and an
    operator key (tests.http sends the last one made: a test of two deployments passes
    each its own)."""
    from kbank.streams.apikeys import OPERATOR
    from kbank.streams.broker import free_port
    from kbank.streams.keystore import create_key
    from kbank.streams.supervisor import WorkerPool, wait_for_views
    from tests import http

    pools: list[WorkerPool] = []

    def start(settings, command: str, names: list[str], env: dict[str, str] | None = None,
              label: str = ""):
        log_dir = tmp_path / "logs" / label
        log_dir.mkdir(parents=True, exist_ok=True)
        placed = {str(i): hosts.host(name) for i, name in enumerate(names)}
        ports = [free_port() for _ in names] if command == "views" else None
        pool = WorkerPool(settings, 0, str(log_dir), command=command, web_ports=ports, hosts=placed)
        pools.append(pool)
        if command == "views":
            pool.key = create_key(settings, OPERATOR, label="tests").token
            http.use_key(pool.key)
        for wid in placed:
            pool.start(wid, env)
        if command == "views":
            assert wait_for_views([pool.url(w) for w in pool.procs], settings.partitions), \
                "views workers did not become ready"
        return pool

    yield start
    http.use_key(None)
    kill_all(pools)


def two_deployments(host_cluster: TestCluster, tmp_path, **overrides: object) -> tuple:
    """A protected deployment and its negative control's, side by side on the same brokers
    and hosts, so one fault tests both."""
    return tuple(deployment(host_cluster, tmp_path / name, replication_factor=3, **overrides)
                 for name in ("protected", "unprotected"))
