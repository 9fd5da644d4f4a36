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
from kbank.chaos.toxics import proxy_address
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
    """The three brokers, one per host, each with a second listener that advertises a
    Toxiproxy on the first engine host (kbank.chaos.toxics)."""
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-hosts"), nodes=3, secured=True,
                           hosts=[hosts.host(name) for name in BROKERS],
                           via=[proxy_address(n) for n in range(1, len(BROKERS) + 1)]).start()
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
    for pool in pools:
        for wid in list(pool.procs):
            pool.kill(wid)


def two_deployments(host_cluster: TestCluster, tmp_path, **overrides: object) -> tuple:
    """A protected deployment and its negative control's, side by side on the same brokers
    and hosts, so one fault tests both."""
    return tuple(deployment(host_cluster, tmp_path / name, replication_factor=3, **overrides)
                 for name in ("protected", "unprotected"))
