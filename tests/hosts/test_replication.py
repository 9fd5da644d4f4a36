"""Replication as users run it across hosts: a leader cut from the other brokers (but not
from its clients) cannot acknowledge a write that the majority then loses.

With acks=all and min.insync.replicas=2 the isolated leader can acknowledge nothing: its
followers do not fetch, and it cannot shrink its in-sync replicas without the controller.
The majority fences it and elects a new leader; when the cut heals, the old leader truncates
its log to the new leader's. The negative control sends with acks=1, as a client that does
not ask for replication would: the old leader acknowledges writes that the truncation then
removes.
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


def _send_through_isolation(hosts, cluster, acks: str) -> tuple[set[bytes], set[bytes]]:
    """Write to a new topic's leader before, during and after its isolation from the other
    brokers; returns (acknowledged, present after the heal)."""
    config = {"bootstrap.servers": cluster.bootstrap_servers, **cluster.admin_config()}
    admin = AdminClient(config)
    topic = f"minority-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 3, config={
        "min.insync.replicas": "2", "unclean.leader.election.enable": "false"})])[topic].result(30)
    wait_until(lambda: len(_partition(admin, topic).isrs) == 3, 60, "the topic's three replicas")
    leader = BROKERS[_partition(admin, topic).leader - 1]
    producer = Producer({**config, "acks": acks, "enable.idempotence": acks == "all",
                         "linger.ms": 5, "request.timeout.ms": 5000, "message.timeout.ms": 60000})
    acknowledged: set[bytes] = set()

    def delivered(error, message) -> None:  # noqa: ANN001 - confluent-kafka's callback
        if error is None:
            acknowledged.add(message.value())

    sent = 0

    def send_for(seconds: float) -> None:
        nonlocal sent
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            producer.produce(topic, f"write-{sent}".encode(), on_delivery=delivered)
            sent += 1
            producer.poll(0.02)

    send_for(2)
    producer.flush(30)
    for other in BROKERS:
        if other != leader:
            hosts.cut(leader, other)
    send_for(ISOLATED_S)
    hosts.heal()
    send_for(2)
    producer.flush(90)
    wait_until(lambda: len(_partition(admin, topic).isrs) == 3, 90, "the old leader back in sync")
    reader = Consumer({**config, "group.id": "minority-check", "enable.partition.eof": True,
                       "auto.offset.reset": "earliest"})
    try:
        present = {m.value() for m in read_to_end(reader, [TopicPartition(topic, 0, 0)])}
    finally:
        reader.close()
    return acknowledged, present


def test_an_isolated_leader_acknowledges_no_write_that_the_majority_loses(healed, host_cluster):
    acknowledged, present = _send_through_isolation(healed, host_cluster.cluster, "all")
    assert len(acknowledged) > 50, "the writes before the cut were acknowledged"
    assert acknowledged <= present, f"acknowledged and lost: {sorted(acknowledged - present)[:5]}"


def test_negative_control_with_acks_1_the_isolated_leader_acknowledges_writes_that_are_lost(
        healed, host_cluster):
    acknowledged, present = _send_through_isolation(healed, host_cluster.cluster, "1")
    lost = acknowledged - present
    assert len(lost) > 10, f"{len(acknowledged)} acknowledged, none of them lost"
