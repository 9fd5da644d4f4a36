"""Small typed helpers around confluent-kafka: client configs and builders."""
from __future__ import annotations

import os

from confluent_kafka import Consumer, Producer

from streams.config import Settings

# KAFKA_SECURITY_PROTOCOL -> security.protocol, KAFKA_SASL_USERNAME -> sasl.username, ...
_PASSTHROUGH_PREFIX = "KAFKA_"
_NOT_PASSED = {"KAFKA_BOOTSTRAP_SERVERS"}


def client_config(settings: Settings) -> dict[str, object]:
    """Connection settings shared by every client, including TLS/SASL from the env."""
    conf: dict[str, object] = {"bootstrap.servers": settings.bootstrap_servers}
    for key, value in os.environ.items():
        if key.startswith(_PASSTHROUGH_PREFIX) and key not in _NOT_PASSED:
            conf[key[len(_PASSTHROUGH_PREFIX):].lower().replace("_", ".")] = value
    return conf


def producer(settings: Settings, **extra: object) -> Producer:
    """A producer that partitions keys like the Java client (murmur2)."""
    return Producer({**client_config(settings), "partitioner": "murmur2_random",
                     "linger.ms": 2, "enable.idempotence": True, **extra})


def consumer(settings: Settings, group_id: str | None = None, **extra: object) -> Consumer:
    """A consumer (settings.isolation_level) that never commits on its own."""
    conf: dict[str, object] = {
        **client_config(settings),
        "group.id": group_id or settings.topic("bank-reader"),
        "isolation.level": settings.isolation_level,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": 500,
        **extra,
    }
    return Consumer(conf)
