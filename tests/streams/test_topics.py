"""ensure_topics refuses existing topics whose settings break topics.yaml."""
from __future__ import annotations


import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from kbank.streams.config import Settings
from kbank.streams.kafka import ADMIN, client_config
from tests.conftest import deployment
from kbank.streams.topics import (LEDGER, TopicLayoutError, TopicSpec, config_mismatches,
                            ensure_topics, load_specs)

SPEC = TopicSpec("ledger.events", 8, {"retention.ms": "-1", "cleanup.policy": "delete"}, True)


def test_a_topic_as_the_catalogue_says_passes():
    actual = {"retention.ms": "-1", "cleanup.policy": "delete", "min.insync.replicas": "1",
              "unclean.leader.election.enable": "false"}
    assert config_mismatches(SPEC, actual, 1, Settings()) == []


def test_each_wrong_setting_is_named():
    actual = {"retention.ms": "604800000", "cleanup.policy": "compact",
              "min.insync.replicas": "1", "unclean.leader.election.enable": "false"}
    wrong = config_mismatches(SPEC, actual, 1, Settings())
    assert len(wrong) == 2
    assert wrong[0].startswith("cleanup.policy='compact'")
    assert wrong[1].startswith("retention.ms='604800000'")


def test_weaker_replication_is_refused_and_stronger_accepted():
    three = Settings(replication_factor=3)
    ok = {"retention.ms": "-1", "cleanup.policy": "delete", "min.insync.replicas": "2",
          "unclean.leader.election.enable": "false"}
    assert config_mismatches(SPEC, ok, 3, three) == []
    assert config_mismatches(SPEC, {**ok, "min.insync.replicas": "3"}, 5, three) == []
    wrong = config_mismatches(SPEC, {**ok, "min.insync.replicas": "1"}, 1, three)
    assert [w.split(" ")[0] for w in wrong] == ["replication", "min.insync.replicas='1'"]


def test_a_topic_that_may_elect_an_unclean_leader_is_refused():
    """An out-of-sync replica made leader drops the writes it lacks, acknowledged or not."""
    three = Settings(replication_factor=3)
    unclean = {"retention.ms": "-1", "cleanup.policy": "delete", "min.insync.replicas": "2",
               "unclean.leader.election.enable": "true"}
    assert config_mismatches(SPEC, unclean, 3, three) == [
        "unclean.leader.election.enable='true' (must be 'false')"]


def test_an_audit_log_with_the_brokers_default_retention_is_refused(test_cluster, tmp_path):
    settings = deployment(test_cluster, tmp_path, create_topics=False)
    admin = AdminClient(client_config(settings, ADMIN))
    ledger = settings.topic(LEDGER)
    # created beforehand the way a user's tooling might: partitions right, retention 7 days
    admin.create_topics([NewTopic(ledger, 8, 1, config={"retention.ms": "604800000"})])[
        ledger].result(timeout=30)
    with pytest.raises(TopicLayoutError) as refused:
        ensure_topics(settings)
    message = str(refused.value)
    assert f"{ledger}: retention.ms='604800000'" in message
    # every other topic was created as the catalogue says, so only the ledger is named
    others = {s.name for s in load_specs(settings)} - {ledger}
    assert others and not [name for name in others if f"{name}:" in message], message
