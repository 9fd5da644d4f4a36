"""Replication as users run it across hosts: a leader cut from the other brokers (but not
from its clients) cannot acknowledge a write that the majority then loses.

With acks=all and min.insync.replicas=2 the isolated leader can acknowledge nothing: its
followers do not fetch, and it cannot shrink its in-sync replicas without the controller.
The majority fences it and elects a new leader; when the cut heals, the old leader truncates
its log to the new leader's. The negative control runs beside it, through the same cut: a
second topic led by the same broker, written with acks=1, as a client that does not ask
for replication would: the old leader acknowledges writes that the truncation removes.
"""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kbank.streams.client import read_to_end
from tests.hosts.conftest import BROKERS
from tests.workload import wait_until

pytestmark = pytest.mark.slow

ISOLATED_S = 14    # past the controller's fencing of the isolated broker (9 s by default)


def _partition(admin: AdminClient, topic: str):  # noqa: ANN202 - confluent-kafka metadata
    return admin.list_topics(topic, timeout=10).topics[topic].partitions[0]


class _Writer:
    """Writes numbered records to a new one-partition topic led by broker 1, noting which
    the brokers acknowledged."""

    def __init__(self, admin: AdminClient, config: dict, acks: str) -> None:
        self.topic = f"minority-{acks}-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(self.topic, 1, replica_assignment=[[1, 2, 3]], config={
            "min.insync.replicas": "2", "unclean.leader.election.enable": "false"})])[
            self.topic].result(30)
        self.producer = Producer({**config, "acks": acks, "enable.idempotence": acks == "all",
                                  "linger.ms": 5, "request.timeout.ms": 5000,
                                  "message.timeout.ms": 60000})
        self.acknowledged: set[bytes] = set()
        self.sent = 0

    def write(self) -> None:
        self.producer.produce(self.topic, f"write-{self.sent}".encode(), on_delivery=self._ack)
        self.sent += 1
        self.producer.poll(0)

    def _ack(self, error, message) -> None:  # noqa: ANN001 - confluent-kafka's callback
        if error is None:
            self.acknowledged.add(message.value())

    def present(self, config: dict) -> set[bytes]:
        reader = Consumer({**config, "group.id": "minority-check", "enable.partition.eof": True})
        try:
            return {m.value() for m in read_to_end(reader, [TopicPartition(self.topic, 0, 0)])}
        finally:
            reader.close()


def test_an_isolated_leader_acknowledges_no_write_that_the_majority_loses(healed, host_cluster):
    cluster = host_cluster.cluster
    config = {"bootstrap.servers": cluster.bootstrap_servers, **cluster.admin_config()}
    admin = AdminClient(config)
    replicated, unreplicated = _Writer(admin, config, "all"), _Writer(admin, config, "1")
    for writer in (replicated, unreplicated):
        wait_until(lambda w=writer: _partition(admin, w.topic).leader == 1
                   and len(_partition(admin, w.topic).isrs) == 3, 60, "broker 1 leading 3 replicas")

    def write_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            replicated.write()
            unreplicated.write()
            time.sleep(0.02)

    write_for(2)
    for writer in (replicated, unreplicated):
        writer.producer.flush(30)
    for other in BROKERS[1:]:
        healed.cut(BROKERS[0], other)
    write_for(ISOLATED_S)
    healed.heal()
    write_for(2)
    for writer in (replicated, unreplicated):
        writer.producer.flush(90)
        wait_until(lambda w=writer: len(_partition(admin, w.topic).isrs) == 3, 90,
                   "the old leader back in sync")
    kept = replicated.present(config)
    assert len(replicated.acknowledged) > 50, "the writes before the cut were acknowledged"
    assert replicated.acknowledged <= kept, \
        f"acknowledged and lost: {sorted(replicated.acknowledged - kept)[:5]}"
    # the negative control: acks=1 through the same cut
    lost = unreplicated.acknowledged - unreplicated.present(config)
    assert len(lost) > 10, f"{len(unreplicated.acknowledged)} acknowledged with acks=1, none lost"
