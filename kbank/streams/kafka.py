"""Small typed helpers around confluent-kafka: client configs and builders."""
from __future__ import annotations

import os
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from kbank.streams.config import Settings, SettingsError

# the roles a client connects as (kbank.streams.principals says what each may do)
ADMIN = "admin"   # creates topics, users and ACLs (the super user)
ENGINE, VIEWS, INTAKE, TOOLS = "engine", "views", "intake", "tools"
WEBHOOKS, GATEWAY = "webhooks", "gateway"
BOOKS = "books"   # the reconciler: statements against the ledger
OPERATOR = "operator"   # `bank send` and an operator's own services: every request type
ROLES = (ENGINE, VIEWS, INTAKE, TOOLS, OPERATOR, WEBHOOKS, GATEWAY, BOOKS)   # each a principal of its own
# a payments service is a principal of its own too, `client-<name>`, made one at a time
# (kbank.streams.gateway.admin) with the accounts it may move money out of


def client_config(settings: Settings, role: str | None = None) -> dict[str, object]:
    """Connection settings shared by every client: TLS/SASL from the env, then, with a
    `role` and BANK_KAFKA_CREDENTIALS, that role's principal from its properties file."""
    conf: dict[str, object] = {"bootstrap.servers": settings.bootstrap_servers,
                               **dict(settings.kafka_client)}
    if role is not None and settings.kafka_credentials:
        path = Path(settings.kafka_credentials) / f"{role}.properties"
        if not path.exists():
            raise SettingsError(f"BANK_KAFKA_CREDENTIALS has no {path.name} for the {role} "
                                f"principal: run `bank topics` with admin credentials")
        conf.update(read_properties(path))
    return conf


def read_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """A librdkafka properties file: `key=value` lines, `#` comments."""
    conf = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            conf[key.strip()] = value.strip()
    return conf


def check_client_env(settings: Settings) -> None:
    """Refuse a misspelled KAFKA_SASL_*/KAFKA_SSL_* variable by name, before any client starts."""
    for prop, value in settings.kafka_client:
        try:
            Producer({prop: value, "bootstrap.servers": "127.0.0.1:9"})
        except KafkaException as exc:
            env = "KAFKA_" + prop.upper().replace(".", "_")
            raise SettingsError(f"{env} is not a Kafka client setting ({prop}): {exc}") from None


def producer(settings: Settings, role: str, **extra: object) -> Producer:
    """A producer, connected as `role`, that partitions keys like the Java client (murmur2)."""
    return Producer({**client_config(settings, role), "partitioner": "murmur2_random",
                     "linger.ms": 2, "enable.idempotence": True, **extra})


def produce_waiting(producer: Producer, topic: str, poll_s: float = 0.01,
                    **record: object) -> None:
    """Produce one record; while the producer's queue is full, serve its delivery reports
    and try again (back-pressure instead of an error)."""
    while True:
        try:
            producer.produce(topic, **record)
            return
        except BufferError:
            producer.poll(poll_s)


def is_fatal(err: KafkaError) -> bool:
    """Whether a client is unusable after this error. librdkafka reports a consumer's fatal
    error (a static member fenced, say) as an error event of code _FATAL whose fatal() is
    False, so both are asked."""
    return err.fatal() or err.code() == KafkaError._FATAL


def consumer(settings: Settings, role: str, group_id: str | None = None,
             **extra: object) -> Consumer:
    """A read_committed consumer, connected as `role`, that never commits on its own."""
    conf: dict[str, object] = {
        **client_config(settings, role),
        "group.id": group_id or settings.topic("bank-reader"),
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": 500,
        **extra,
    }
    return Consumer(conf)
