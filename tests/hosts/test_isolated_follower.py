"""A follower cut from everyone, and the follower chosen is the active KRaft controller's host:
the majority elects a new controller, which fences the isolated broker and drops it from the
partition's in-sync replicas; writes with acks=all go on with two copies (min.insync.replicas=2),
nothing acknowledged is lost, and the healed broker catches up and rejoins.

The negative control runs beside it, through the same isolation: a second topic on the same
brokers with min.insync.replicas=3, a deployment that waits for every replica instead of a
majority: it acknowledges nothing while one broker is gone, so the first check fails for it.
(The leader's own isolation, and the loss acks=1 allows there, is test_replication's.)
"""
from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient

from tests.hosts.conftest import (BROKERS, TopicWriter, flushed_back_in_sync, write_for,
                                  writers_led_by)

pytestmark = pytest.mark.slow

ISOLATED_S = 24   # a new controller (about 3 s), then the broker's fencing (9 s), then writes
GRACE_S = 1.0     # acknowledgements of what was in flight when the cut began


def test_an_isolated_follower_that_is_the_controller_stops_no_write_and_loses_none(
        healed, host_cluster):
    cluster = host_cluster.cluster
    config = {"bootstrap.servers": cluster.bootstrap_servers, **cluster.admin_config()}
    admin = AdminClient(config)
    controller = cluster.active_controller()
    leader, other = (b for b in (1, 2, 3) if b != controller)
    writers = writers_led_by(admin, config, leader, *(
        TopicWriter(admin, config, "all", (leader, controller, other), min_insync=n) for n in (2, 3)))
    majority, everyone = writers
    healed.isolate(BROKERS[controller - 1])
    cut_at = time.monotonic()
    write_for(writers, ISOLATED_S)
    assert cluster.active_controller() != controller, "the majority elected a new controller"
    healed.heal()
    healed_at = time.monotonic()
    write_for(writers, 2)
    flushed_back_in_sync(admin, writers, 120, "the isolated broker back in sync")
    during = majority.acknowledged_between(cut_at + GRACE_S, healed_at)
    assert during > 50, f"{during} writes acknowledged while a follower was isolated"
    kept = majority.present(config)
    assert majority.acknowledged.keys() <= kept, \
        f"acknowledged and lost: {sorted(majority.acknowledged.keys() - kept)[:5]}"
    assert len(majority.acknowledged) == majority.sent, "every write acknowledged after the heal"
    # the negative control: waiting for every replica stops with the isolated one
    stalled = everyone.acknowledged_between(cut_at + GRACE_S, healed_at)
    assert stalled == 0, f"{stalled} writes acknowledged with min.insync.replicas=3"
    assert everyone.acknowledged.keys() <= everyone.present(config)
