"""The tests across hosts: one set of hosts and three brokers on them for this package (the
broker kills of test_broker_kills share them), a deployment per test, every cut healed when
a test ends. Without root (or iproute2 and nftables) they skip with the
reason; `make test` installs nftables and Toxiproxy.
"""
from __future__ import annotations

import time
import uuid

import pytest

from kbank.chaos.hosts import Hosts
from kbank.chaos.network import BROKERS, VIEWS
from kbank.streams.broker import KafkaCluster
from tests.conftest import TestCluster, deployment, kill_all
from tests.workload import wait_until

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


def partition_zero(admin, topic: str):  # noqa: ANN001, ANN201 - confluent-kafka metadata
    return admin.list_topics(topic, timeout=10).topics[topic].partitions[0]


def leading(admin, topic: str, leader: int) -> bool:  # noqa: ANN001 - an AdminClient
    """`leader` leads the topic's one partition with all three replicas in sync (a topic
    just made may be known to a broker before its partition is)."""
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    return 0 in partitions and partitions[0].leader == leader and len(partitions[0].isrs) == 3


def write_for(writers: list["TopicWriter"], seconds: float) -> None:
    """Each writer writes a record every 20 ms or so, for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for writer in writers:
            writer.write()
        time.sleep(0.02)


def writers_led_by(admin, config: dict, leader: int, *writers: "TopicWriter") -> list["TopicWriter"]:  # noqa: ANN001
    """The writers, once `leader` leads each one's topic with three replicas in sync, each
    with two seconds of acknowledged writes behind it."""
    for writer in writers:
        wait_until(lambda w=writer: leading(admin, w.topic, leader), 60,
                   f"broker {leader} leading 3 replicas")
    write_for(list(writers), 2)
    for writer in writers:
        writer.producer.flush(30)
    return list(writers)


def flushed_back_in_sync(admin, writers: list["TopicWriter"], flush_s: float, what: str) -> None:  # noqa: ANN001
    """Every writer's records delivered (or failed) and its topic's three replicas in sync."""
    for writer in writers:
        writer.producer.flush(flush_s)
        wait_until(lambda w=writer: len(partition_zero(admin, w.topic).isrs) == 3, 90, what)


class TopicWriter:
    """Writes numbered records to a new one-partition topic on brokers `replicas` (the first
    leads), noting which the brokers acknowledged and when."""

    def __init__(self, admin, config: dict, acks: str, replicas: tuple[int, ...] = (1, 2, 3),  # noqa: ANN001
                 min_insync: int = 2) -> None:
        from confluent_kafka import Producer
        from confluent_kafka.admin import NewTopic

        self.topic = f"writes-{acks}-{min_insync}-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(self.topic, 1, replica_assignment=[list(replicas)], config={
            "min.insync.replicas": str(min_insync),
            "unclean.leader.election.enable": "false"})])[self.topic].result(30)
        self.producer = Producer({**config, "acks": acks, "enable.idempotence": acks == "all",
                                  "linger.ms": 5, "request.timeout.ms": 5000,
                                  "message.timeout.ms": 120000})
        self.acknowledged: dict[bytes, float] = {}    # value -> time.monotonic() of its ack
        self.sent = 0

    def write(self) -> None:
        self.producer.produce(self.topic, f"write-{self.sent}".encode(), on_delivery=self._ack)
        self.sent += 1
        self.producer.poll(0)

    def _ack(self, error, message) -> None:  # noqa: ANN001 - confluent-kafka's callback
        if error is None:
            self.acknowledged[message.value()] = time.monotonic()

    def acknowledged_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.acknowledged.values() if start <= at <= end)

    def present(self, config: dict) -> set[bytes]:
        from confluent_kafka import Consumer, TopicPartition

        from kbank.streams.client import read_to_end

        reader = Consumer({**config, "group.id": "writes-check", "enable.partition.eof": True})
        try:
            return {m.value() for m in read_to_end(reader, [TopicPartition(self.topic, 0, 0)])}
        finally:
            reader.close()
