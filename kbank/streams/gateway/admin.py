"""The super user's side of Kafka clients: make one (its grant, principal, topics and
ACLs), revoke one, list them. Run by `bank kafka-config client NAME ...`.

A client's grant is written first, then its principal and ACLs, so the gateway always knows
a grant before the client can write a record; a revoke writes the revoked grant first,
then removes the ACLs and the SCRAM user, so nothing the client wrote afterwards is relayed.
Each create and revoke appends an audit record to auth.audit, in the grant's transaction.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import replace
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, NewTopic,
                                   ResourcePatternType, ResourceType, ScramCredentialInfo,
                                   ScramMechanism, UserScramCredentialDeletion,
                                   UserScramCredentialUpsertion)

from kbank.streams import kafka, topics
from kbank.streams.apikeys import CLIENT, InvalidKey, scope_problem
from kbank.streams.client import read_topic
from kbank.streams.config import Settings
from kbank.streams.keystore import actor, write_audited
from kbank.streams.gateway.grants import (KafkaClient, is_client_name, outcomes_topic,
                                          requests_topic, role_of)
from kbank.streams.principals import SCRAM_ITERATIONS, properties_path, write_properties

CLIENT_TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)}


class ClientNotFound(LookupError):
    """No Kafka client has this name."""


def user_of(settings: Settings, name: str) -> str:
    return settings.topic(role_of(name))


def _write(settings: Settings, grant: KafkaClient, action: str) -> None:
    write_audited(settings, topics.KAFKA_CLIENTS, grant.name, grant.to_bytes(), action,
                  ("kafka_client", grant.public()))


def fold_grant(grants: dict[str, KafkaClient], key: bytes | None, value: bytes | None) -> str | None:
    """Apply one auth.kafka-clients record to `grants`; returns why it was skipped, if it was
    (one bad record must not lock every client out)."""
    if value is None:
        grants.pop((key or b"").decode("utf-8", "replace"), None)
        return None
    try:
        grant = KafkaClient.from_bytes(value)
    except InvalidKey as exc:
        return str(exc)
    if key != grant.name.encode():
        return "its key is not its name"
    grants[grant.name] = grant
    return None


def list_clients(settings: Settings) -> list[KafkaClient]:
    """Every client's latest grant, oldest first (read as the super user)."""
    grants: dict[str, KafkaClient] = {}
    for msg in read_topic(settings, settings.topic(topics.KAFKA_CLIENTS), 60, role=kafka.ADMIN):
        fold_grant(grants, msg.key(), msg.value())
    return sorted(grants.values(), key=lambda g: (g.created_ms, g.name))


def _bindings(settings: Settings, name: str) -> list[AclBinding]:
    user = f"User:{user_of(settings, name)}"
    allow = [(ResourceType.TOPIC, settings.topic(requests_topic(name)),
              ResourcePatternType.LITERAL, ("WRITE", "DESCRIBE")),
             (ResourceType.TOPIC, settings.topic(outcomes_topic(name)),
              ResourcePatternType.LITERAL, ("READ", "DESCRIBE")),
             (ResourceType.GROUP, settings.topic(f"{role_of(name)}-"),
              ResourcePatternType.PREFIXED, ("READ",))]
    return [AclBinding(kind, resource, pattern, user, "*", AclOperation[op],
                       AclPermissionType.ALLOW)
            for kind, resource, pattern, ops in allow for op in ops]


def _create_topics(admin: AdminClient, settings: Settings, name: str, partitions: int) -> None:
    isr = str(topics.min_insync_replicas(settings))
    futures = admin.create_topics(
        [NewTopic(settings.topic(t), partitions, settings.replication_factor,
                  config={**CLIENT_TOPIC_CONFIG, "min.insync.replicas": isr})
         for t in (requests_topic(name), outcomes_topic(name))], request_timeout=30)
    for future in futures.values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def create_client(settings: Settings, name: str, accounts: tuple[str, ...] = (),
                  account_prefix: str | None = None) -> tuple[KafkaClient, Path]:
    """Make (or re-scope) a client: its grant, SCRAM user, topics and ACLs, and its
    librdkafka properties file in BANK_KAFKA_CREDENTIALS. Raises InvalidKey."""
    if not is_client_name(name):
        raise InvalidKey("a Kafka client's name is 1 to 48 of a-z, 0-9 and _, starting with a "
                         "letter or digit")
    problem = scope_problem(CLIENT, accounts, account_prefix)
    if problem is not None:
        raise InvalidKey(problem)
    assert settings.kafka_credentials, "needs BANK_KAFKA_CREDENTIALS with admin.properties"
    grant = KafkaClient(name, int(time.time() * 1000), actor(settings), tuple(accounts),
                        account_prefix)
    _write(settings, grant, "kafka_client_created")
    admin_conf = kafka.client_config(settings, kafka.ADMIN)
    admin = AdminClient(admin_conf)
    path = properties_path(settings.kafka_credentials, role_of(name))
    conf = kafka.read_properties(path) if path.exists() else {
        "security.protocol": str(admin_conf.get("security.protocol", "SASL_PLAINTEXT")),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user_of(settings, name),
        "sasl.password": secrets.token_urlsafe(24)}
    upsert = UserScramCredentialUpsertion(
        conf["sasl.username"], ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
        conf["sasl.password"].encode())
    for future in admin.alter_user_scram_credentials([upsert], request_timeout=30).values():
        future.result()
    _create_topics(admin, settings, name, topics.partition_count(settings, topics.REQUESTS,
                                                                 kafka.ADMIN))
    for future in admin.create_acls(_bindings(settings, name), request_timeout=30).values():
        future.result()
    if not path.exists():
        write_properties(path, conf, f"the Kafka client {name} of {settings.bootstrap_servers}: "
                         f"writes {settings.topic(requests_topic(name))}, reads "
                         f"{settings.topic(outcomes_topic(name))}")
    _wait_usable(settings, name)
    return grant, path


def _wait_usable(settings: Settings, name: str, timeout_s: float = 30.0) -> None:
    """Return once the client, connecting as itself, may use both its topics: a broker
    applies new credentials and ACLs a moment after the controller took them, and a client
    handed its file must not be refused in that moment."""
    client = AdminClient({**kafka.client_config(settings, role_of(name)), "log_level": 0})
    wanted = [settings.topic(requests_topic(name)), settings.topic(outcomes_topic(name))]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = client.list_topics(timeout=5).topics
            if all(t in found and found[t].error is None and found[t].partitions for t in wanted):
                return
        except KafkaException:
            pass     # its credentials are not known yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"Kafka client {name} cannot use its topics after {timeout_s:.0f} s")
        time.sleep(0.2)


def revoke_client(settings: Settings, name: str) -> KafkaClient:
    """Revoke a client: its grant marked revoked (the gateway refuses what it still finds),
    then its ACLs and SCRAM user removed (it can no longer connect)."""
    found = {g.name: g for g in list_clients(settings)}.get(name)
    if found is None:
        raise ClientNotFound(f"no Kafka client {name!r} (bank kafka-config clients lists them)")
    revoked = found if found.revoked_ms is not None else \
        replace(found, revoked_ms=int(time.time() * 1000))
    if found.revoked_ms is None:
        _write(settings, revoked, "kafka_client_revoked")
    admin = AdminClient(kafka.client_config(settings, kafka.ADMIN))
    filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                b.operation, b.permission_type) for b in _bindings(settings, name)]
    for future in admin.delete_acls(filters, request_timeout=30).values():
        future.result()
    deletion = UserScramCredentialDeletion(user_of(settings, name), ScramMechanism.SCRAM_SHA_512)
    for future in admin.alter_user_scram_credentials([deletion], request_timeout=30).values():
        try:
            future.result()
        except KafkaException as exc:   # already gone: a second revoke
            if exc.args[0].code() != KafkaError.RESOURCE_NOT_FOUND:
                raise
    properties_path(settings.kafka_credentials, role_of(name)).unlink(missing_ok=True)
    return revoked
