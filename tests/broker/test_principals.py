"""The secured embedded broker: SASL/SCRAM, the StandardAuthorizer, one principal per role.

For each principal one operation its ACLs allow and one they refuse, against the real
broker; a client without credentials gets nothing, and only the super user deletes topics.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kbank.streams import topics
from kbank.streams.config import Settings
from kbank.streams.kafka import ADMIN, client_config
from kbank.streams.principals import (BOOKS, ENGINE, GATEWAY, GRANTS, INTAKE, OPERATOR, ROLES, TOOLS,
                                      VIEWS, WEBHOOKS)
from tests.broker.conftest import provisioned


@pytest.fixture(scope="module")
def secured(secured_cluster, tmp_path_factory) -> Settings:
    return provisioned(secured_cluster, tmp_path_factory.mktemp("deployment"))


def _produce(settings: Settings, role: str | None, topic: str) -> KafkaError | None:
    """Write one record as `role` (None: no credentials); the broker's answer."""
    conf = client_config(settings, role) if role else {"bootstrap.servers": settings.bootstrap_servers}
    answers: list[KafkaError | None] = []
    producer = Producer({**conf, "message.timeout.ms": 10_000, "log_level": 0})
    producer.produce(settings.topic(topic), key=b"alice", value=b'{"kind":"credit"}',
                     on_delivery=lambda err, _msg: answers.append(err))
    producer.flush(20)
    assert answers, "the broker answered"
    return answers[0]


def _read(settings: Settings, role: str, topic: str, group: str) -> KafkaError | None:
    """Fetch from partition 0 as `role`; the first error, None when the read is allowed."""
    consumer = Consumer({**client_config(settings, role), "group.id": settings.topic(group),
                         "enable.partition.eof": True, "log_level": 0})
    try:
        # a topic the principal may not describe: the metadata refuses it
        meta = consumer.list_topics(settings.topic(topic), timeout=10).topics[settings.topic(topic)]
        if meta.error is not None:
            return meta.error
        consumer.assign([TopicPartition(settings.topic(topic), 0, 0)])
        for _ in range(50):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is None or err.code() == KafkaError._PARTITION_EOF:
                return None
            return err
        raise AssertionError("no answer to the fetch")
    finally:
        consumer.close()


DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.mark.parametrize("role, allowed, refused", [
    (ENGINE, topics.CREDITS, topics.REQUESTS),        # the engine never writes requests
    (INTAKE, topics.REQUESTS, topics.CREDITS),        # a forged credit from the edge
    (OPERATOR, topics.REQUESTS, topics.LEDGER),       # a forged ledger event
    (GATEWAY, topics.REQUESTS, topics.CREDITS),       # a forged credit
    (TOOLS, "gen-1.ledger.events", topics.LEDGER),    # recompute writes generations only
    (VIEWS, "bank-views-x-changelog", topics.VIEWS_GENERATION),   # a forged generation pointer
    (WEBHOOKS, topics.DELIVERIES, topics.LEDGER),     # a forged ledger event
])
def test_each_principal_writes_only_what_its_role_writes(secured, role, allowed, refused):
    if allowed.startswith(("gen-", "bank-views")):   # topics of the tools' and views' own
        admin = AdminClient(client_config(secured, ADMIN))
        admin.create_topics([NewTopic(secured.topic(allowed), 1, 1)])[secured.topic(allowed)].result(30)
    assert _produce(secured, role, allowed) is None
    err = _produce(secured, role, refused)
    assert err is not None and err.code() == DENIED, err


@pytest.mark.parametrize("role, allowed, refused, group", [
    (VIEWS, topics.LEDGER, topics.CHANGELOG, "bank-views-t"),
    (INTAKE, topics.OUTCOMES, topics.LEDGER, "bank-web-outcomes-t"),
    (OPERATOR, topics.OUTCOMES, topics.CREDITS, "operator-t"),
    (GATEWAY, topics.KAFKA_CLIENTS, topics.LEDGER, "bank-gateway-t"),
    (ENGINE, topics.REQUESTS, topics.OUTCOMES, "bank-engine"),
    (TOOLS, topics.CHANGELOG, None, "bank-reader-t"),
    (WEBHOOKS, topics.LEDGER, topics.CHANGELOG, "bank-webhooks"),
    (OPERATOR, topics.OUTCOMES, topics.WEBHOOKS, "operator-t"),   # the signing secrets
    (INTAKE, topics.OUTCOMES, topics.WEBHOOKS, "bank-web-outcomes-t"),   # writes, never reads
])
def test_each_principal_reads_only_what_its_role_reads(secured, role, allowed, refused, group):
    assert _read(secured, role, allowed, group) is None
    if refused is not None:
        err = _read(secured, role, refused, group)
        assert err is not None and err.code() == DENIED, err


def test_no_credentials_no_access(secured):
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": secured.bootstrap_servers, "log_level": 0}) \
            .list_topics(timeout=5)


@pytest.mark.parametrize("role", ROLES)
def test_only_the_super_user_deletes_a_topic(secured, role):
    ledger = secured.topic(topics.LEDGER)
    admin = AdminClient(client_config(secured, role))
    with pytest.raises(KafkaException) as refused:
        admin.delete_topics([ledger])[ledger].result(30)
    assert refused.value.args[0].code() == DENIED, refused.value
    assert ledger in AdminClient(client_config(secured, ADMIN)).list_topics(timeout=10).topics


def test_credentials_are_readable_by_their_owner_only(secured):
    for path in Path(secured.kafka_credentials).iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_security_md_lists_every_grant():
    text = (Path(__file__).resolve().parents[2] / "SECURITY.md").read_text()
    rows = {tuple(cell.strip(" `") for cell in line.strip("|").split("|")[:4])
            for line in text.splitlines() if re.match(r"^\| `?[a-z]", line)}
    for grant in GRANTS:
        assert (grant.role, grant.resource, grant.name, ", ".join(grant.operations)) in rows, grant


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("topic", [topics.KEYS, topics.KAFKA_CLIENTS])
def test_only_the_super_user_writes_api_keys_and_kafka_client_grants(secured, role, topic):
    """A forged key record (an operator key of one's own) or a Kafka client's grant widened
    to every account is refused for every principal."""
    err = _produce(secured, role, topic)
    assert err is not None and err.code() == DENIED, err


@pytest.mark.parametrize("topic, writer", [
    (topics.WEBHOOKS, INTAKE),      # a registration aimed at an attacker's URL
    (topics.DELIVERIES, WEBHOOKS),  # a delivery marked delivered that never was
    (topics.CHECKPOINTS, TOOLS),    # a checkpoint that signs off a rewritten log
    (topics.CLOSES, TOOLS),         # a close of the books that says what the ledger does not
    (topics.RECON_LINES, OPERATOR),  # a statement line the bank never sent
    (topics.RECON_RULES, OPERATOR),  # rules that match anything
    (topics.RECON_RESULTS, BOOKS),   # a break hidden as matched
])
@pytest.mark.parametrize("role", ROLES)
def test_only_its_writer_writes_a_webhook_checkpoint_or_books_topic(secured, role, topic, writer):
    err = _produce(secured, role, topic)
    if role == writer:
        assert err is None, err
    else:
        assert err is not None and err.code() == DENIED, (role, topic, err)
