"""Losing brokers under load, on a 3-node KRaft cluster (replication 3, min.insync.replicas 2).

SIGKILL a broker, then the active controller, then the leader of a partition while
transactions are open on it; each comes back before the next. Nothing may be lost or
applied twice, money is conserved, verify is OK and the views equal the ledger.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from confluent_kafka.admin import AdminClient

from kbank.replay.views import compare, rebuild
from kbank.streams import kafka, topics
from kbank.streams.broker import KafkaCluster
from kbank.streams.client import OutcomeWatcher
from kbank.streams.config import Settings
from kbank.streams.supervisor import wait_for_views
from tests.conftest import TestCluster, deployment
from tests.http import current_key
from tests.workload import Workload, assert_invariants, engine_backlog

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                                 reason="starts an embedded 3-node cluster of its own")]


@pytest.fixture
def cluster(three_brokers: TestCluster) -> KafkaCluster:
    """The session's three brokers (on network hosts of their own where the machine can make
    them, tests.conftest)."""
    return three_brokers.cluster


def _leader(settings: Settings, logical_topic: str, partition: int) -> int:
    admin = AdminClient(kafka.client_config(settings, kafka.TOOLS))
    return admin.list_topics(settings.topic(logical_topic), timeout=10) \
        .topics[settings.topic(logical_topic)].partitions[partition].leader


def test_killing_brokers_controller_and_a_leader_mid_transaction_loses_nothing(
        cluster, pool_factory, views_factory, tmp_path):
    # secured as `bank up --brokers 3` runs it; transactions stay open a while: kills land in them
    settings = deployment(TestCluster(cluster.bootstrap_servers, cluster.admin_config(), cluster),
                          tmp_path, replication_factor=3, fault_commit_delay_ms=20)
    engine = pool_factory(settings, 2)
    views = views_factory(settings, 1)
    names = [f"acct-{i}" for i in range(200)]
    wl = Workload(settings)
    kills: list[str] = []
    try:
        wl.open_accounts(names, 5_000)
        sender = threading.Thread(target=wl.random_transfers, args=(names, 9_000, "t", 2_000),
                                  kwargs={"duplicate_every": 50, "rate_per_s": 300})
        sender.start()
        controller = cluster.active_controller()
        plain = next(n.node_id for n in cluster.nodes if n.node_id != controller)
        for what, node in (("broker", lambda: plain),
                           ("controller", cluster.active_controller),
                           ("leader of ledger.events[0]", lambda: _leader(settings, topics.LEDGER, 0))):
            wl.watcher.wait(wl.request_ids[:len(wl.request_ids) // 2], 20)  # under load
            victim = node()
            cluster.kill_node(victim)                    # SIGKILL
            kills.append(f"{what}: node {victim}")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:           # the engine carries on without it
                engine.restart_dead()
                wl.watcher.wait(wl.request_ids, 0.5)
            cluster.start_node(victim)                   # back, and the cluster whole again
        sender.join()
        resent = wl.resend_refused()                     # what a client does with a refusal
        deadline = time.monotonic() + 300
        while wl.watcher.finished(wl.request_ids) < len(wl.request_ids):
            if time.monotonic() >= deadline:   # say enough to tell a lost send from a lost read
                open_ids = [r for r in wl.request_ids if wl.watcher.status.get(r) not in
                            ("completed", "rejected")]
                reread = OutcomeWatcher(settings, from_beginning=True)   # a lost read?
                reread.wait(open_ids, 30)
                raise AssertionError(
                    f"{len(open_ids)} requests left unfinished after the broker kills (e.g. "
                    f"{open_ids[:5]}, statuses {[wl.watcher.status.get(r) for r in open_ids[:5]]});"
                    f" engine backlog {engine_backlog(settings)}; finished when read again "
                    f"{reread.finished(open_ids)}; sent again after a refusal: {resent[:3]}")
            engine.restart_dead()
            wl.watcher.wait(wl.request_ids, 1)
        urls = [views.url(w) for w in views.procs]
        assert wait_for_views(urls, settings.partitions)
        report = assert_invariants(settings, wl)
    finally:
        wl.close()
    assert len(kills) == 3, kills
    rebuilt = rebuild(settings, str(tmp_path / "rebuilt"), show_progress=False)
    assert rebuilt.events == report.events
    deadline = time.monotonic() + 60
    while (diffs := asyncio.run(compare(rebuilt, urls[0], settings.partitions, current_key(),
                                   show_progress=False))):
        assert time.monotonic() < deadline, diffs[:10]
        time.sleep(1)
