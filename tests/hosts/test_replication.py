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

import pytest
from confluent_kafka.admin import AdminClient

from tests.hosts.conftest import (BROKERS, TopicWriter, flushed_back_in_sync, write_for,
                                  writers_led_by)

pytestmark = pytest.mark.slow

ISOLATED_S = 14    # past the controller's fencing of the isolated broker (9 s by default)


def test_an_isolated_leader_acknowledges_no_write_that_the_majority_loses(healed, host_cluster):
    cluster = host_cluster.cluster
    config = {"bootstrap.servers": cluster.bootstrap_servers, **cluster.admin_config()}
    admin = AdminClient(config)
    writers = writers_led_by(admin, config, 1, *(TopicWriter(admin, config, acks)
                                                 for acks in ("all", "1")))
    replicated, unreplicated = writers
    for other in BROKERS[1:]:
        healed.cut(BROKERS[0], other)
    write_for(writers, ISOLATED_S)
    healed.heal()
    write_for(writers, 2)
    flushed_back_in_sync(admin, writers, 90, "the old leader back in sync")
    kept = replicated.present(config)
    assert len(replicated.acknowledged) > 50, "the writes before the cut were acknowledged"
    assert replicated.acknowledged.keys() <= kept, \
        f"acknowledged and lost: {sorted(replicated.acknowledged.keys() - kept)[:5]}"
    # the negative control: acks=1 through the same cut
    lost = unreplicated.acknowledged.keys() - unreplicated.present(config)
    assert len(lost) > 10, f"{len(unreplicated.acknowledged)} acknowledged with acks=1, none lost"
