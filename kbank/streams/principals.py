"""Kafka principals: one per role, each with the least privilege its job needs (issue 22).

GRANTS is the one table of who may do what on which topic, group and transactional id;
SECURITY.md shows it (a test keeps the two the same). `provision` makes the SCRAM users and
their ACLs through the Admin API, as the super user, and writes one librdkafka properties
file per principal (readable by its owner only) that every `bank` command finds by role.

Names in GRANTS are logical: the deployment's BANK_TOPIC_PREFIX is put in front of each, and
a name ending in `*` is a prefix (Kafka's PREFIXED pattern). Users are named
`<prefix><role>`, so two deployments on one cluster never share a principal.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                   ResourcePatternType, ResourceType, ScramCredentialInfo,
                                   ScramMechanism, UserScramCredentialUpsertion)

from kbank.streams import topics
from kbank.streams.config import Settings
from kbank.streams.files import write_private
from kbank.streams.kafka import (ADMIN, BOOKS, ENGINE, GATEWAY, INTAKE, OPERATOR, ROLES, TOOLS, VIEWS,
                                 WEBHOOKS, client_config, read_properties)

SCRAM_ITERATIONS = 8192


@dataclass(frozen=True)
class Grant:
    """Allow `role` the `operations` on one resource (a logical name, `*` at the end for a
    prefix), and say why."""

    role: str
    resource: str            # topic, group or transactional_id
    name: str
    operations: tuple[str, ...]
    why: str


GRANTS: tuple[Grant, ...] = (
    Grant(ENGINE, "topic", topics.REQUESTS, ("READ", "DESCRIBE"), "decides every request"),
    Grant(ENGINE, "topic", topics.CREDITS, ("READ", "WRITE", "DESCRIBE"),
          "sends and receives the money in flight between partitions, its own expiries, and "
          "requests a client wrote on another key's partition, forwarded to their owner (so "
          "the engine needs no write access to transfers.requests)"),
    Grant(ENGINE, "topic", topics.CHANGELOG, ("READ", "WRITE", "DESCRIBE"),
          "its state store's changelog: written in each transaction, read on restore"),
    Grant(ENGINE, "topic", topics.BATCHES, ("WRITE", "DESCRIBE"),
          "each batch's input ranges, written in its transaction (recompute's order)"),
    Grant(ENGINE, "topic", topics.LEDGER, ("WRITE", "DESCRIBE"), "appends the audit log"),
    Grant(ENGINE, "topic", topics.OUTCOMES, ("WRITE", "DESCRIBE"), "answers every request"),
    Grant(ENGINE, "topic", topics.DEADLETTER, ("WRITE", "DESCRIBE"),
          "sets aside records it cannot parse"),
    Grant(ENGINE, "group", f"{topics.ENGINE_GROUP}*", ("READ", "DESCRIBE"),
          "its consumer group (offsets committed in its transactions) and restore reader"),
    Grant(ENGINE, "transactional_id", f"{topics.ENGINE_GROUP}-*", ("WRITE", "DESCRIBE"),
          "one transaction owner per worker, fencing its zombies"),
    Grant(VIEWS, "topic", topics.LEDGER, ("READ", "DESCRIBE"), "folds balances and history"),
    Grant(VIEWS, "topic", topics.OUTCOMES, ("READ", "DESCRIBE"), "folds request statuses"),
    Grant(VIEWS, "topic", topics.VIEWS_GENERATION, ("READ", "DESCRIBE"),
          "which generation to serve"),
    Grant(VIEWS, "topic", topics.KEYS, ("READ", "DESCRIBE"),
          "checks every HTTP request's API key (hashed; written only by the super user)"),
    Grant(VIEWS, "topic", "gen-*", ("READ", "DESCRIBE"),
          "a recomputed generation's ledger and outcomes"),
    Grant(VIEWS, "topic", "bank-views*", ("ALL",),
          "its own table changelogs, which it creates and owns"),
    Grant(VIEWS, "group", "bank-views*", ("READ", "DESCRIBE"), "its consumer groups"),
    Grant(VIEWS, "topic", topics.USAGE, ("READ", "WRITE", "DESCRIBE"),
          "what each API key used at each views worker: a key's rate holds across all of them"),
    Grant(VIEWS, "group", topics.ENGINE_GROUP, ("DESCRIBE",),
          "the engine's lag: its committed offsets (read, never by joining the group)"),
    Grant(VIEWS, "topic", topics.REQUESTS, ("READ", "DESCRIBE"),
          "the engine's lag: the inputs' ends, and whether a record waits past its offsets "
          "(read only when they say it is stalled: a marker is not a record)"),
    Grant(VIEWS, "topic", topics.CREDITS, ("READ", "DESCRIBE"),
          "the engine's lag: the inputs' ends, and whether a record waits past its offsets "
          "(read only when they say it is stalled: a marker is not a record)"),
    Grant(INTAKE, "topic", topics.REQUESTS, ("WRITE", "DESCRIBE"), "POST /transfers and /requests"),
    Grant(INTAKE, "topic", topics.OUTCOMES, ("READ", "DESCRIBE"), "answers ?wait=completed"),
    Grant(INTAKE, "group", "bank-web-outcomes*", ("READ",), "its outcome reader"),
    Grant(TOOLS, "topic", "*", ("READ", "DESCRIBE"), "replay, verify and as-of read every log"),
    Grant(TOOLS, "topic", "gen-*", ("CREATE", "WRITE", "DESCRIBE"),
          "recompute writes a new generation, never the live topics"),
    Grant(TOOLS, "topic", topics.VIEWS_GENERATION, ("WRITE",), "replay switch"),
    Grant(TOOLS, "topic", topics.CHECKPOINTS, ("WRITE",),
          "verify --checkpoint signs off where a verify that passed ended"),
    Grant(TOOLS, "group", "bank-reader*", ("READ",), "its readers"),
    Grant(TOOLS, "topic", topics.CLOSES, ("WRITE",), "bank close writes each close of the books"),
    Grant(TOOLS, "group", topics.ENGINE_GROUP, ("DESCRIBE",),
          "bank close waits for the engine's committed offsets to pass its instant (read, "
          "never by joining the group)"),
    Grant(VIEWS, "topic", topics.CLOSES, ("READ", "DESCRIBE"), "GET /closes"),
    Grant(BOOKS, "topic", topics.LEDGER, ("READ", "DESCRIBE"),
          "the events of the accounts that have statements"),
    Grant(BOOKS, "topic", topics.RECON_LINES, ("READ", "DESCRIBE"), "the statement lines"),
    Grant(BOOKS, "topic", topics.RECON_RULES, ("READ", "DESCRIBE"), "each account's rules"),
    Grant(BOOKS, "topic", topics.RECON_RESULTS, ("READ", "WRITE", "DESCRIBE"),
          "its results: read back at start, written in its transactions"),
    Grant(BOOKS, "group", "bank-reconciler*", ("READ", "DESCRIBE"), "its readers (it commits nothing)"),
    Grant(BOOKS, "transactional_id", "bank-reconciler", ("WRITE", "DESCRIBE"),
          "one writer of results at a time: a successor fences it"),
    Grant(OPERATOR, "topic", topics.RECON_LINES, ("READ", "WRITE", "DESCRIBE"),
          "bank reconcile import: a file's new lines in one transaction"),
    Grant(OPERATOR, "transactional_id", "bank-recon-import-*", ("WRITE", "DESCRIBE"),
          "one transaction per imported file"),
    Grant(OPERATOR, "topic", topics.RECON_RULES, ("WRITE", "DESCRIBE"), "bank reconcile rules"),
    Grant(VIEWS, "topic", topics.RECON_RESULTS, ("READ", "DESCRIBE"), "GET /reconciliation"),
    Grant(WEBHOOKS, "topic", topics.RECON_RESULTS, ("READ", "DESCRIBE"),
          "the reconciliation's breaks it delivers (bank break-webhooks)"),
    Grant(WEBHOOKS, "topic", topics.BREAK_DELIVERIES, ("READ", "WRITE", "DESCRIBE"),
          "each break delivery's state: written after each attempt, read back on assignment"),
    Grant(VIEWS, "topic", topics.BREAK_DELIVERIES, ("READ", "DESCRIBE"),
          "GET /webhooks/{id}/deliveries: a webhook's break deliveries"),
    Grant(VIEWS, "topic", topics.WEBHOOKS, ("READ", "DESCRIBE"),
          "lists webhook registrations and checks who owns one"),
    Grant(VIEWS, "topic", topics.DELIVERIES, ("READ", "DESCRIBE"),
          "GET /webhooks/{id}/deliveries"),
    Grant(INTAKE, "topic", topics.WEBHOOKS, ("WRITE", "DESCRIBE"),
          "POST /webhooks and its pause, resume, redrive and delete"),
    Grant(WEBHOOKS, "topic", topics.LEDGER, ("READ", "DESCRIBE"), "the events it delivers"),
    Grant(WEBHOOKS, "topic", topics.WEBHOOKS, ("READ", "DESCRIBE"), "whom to deliver them to"),
    Grant(WEBHOOKS, "topic", topics.KEYS, ("READ", "DESCRIBE"),
          "whether the key that registered a webhook still works (revoked or expired: its "
          "deliveries wait; hashed keys only)"),
    Grant(WEBHOOKS, "topic", topics.DELIVERIES, ("READ", "WRITE", "DESCRIBE"),
          "each delivery's state: written after each attempt, read back on assignment"),
    Grant(WEBHOOKS, "group", f"{topics.WEBHOOKS_GROUP}*", ("READ", "DESCRIBE"),
          "its consumer group over the ledger (committed once each event's deliveries are "
          "recorded) and its restore reader"),
    Grant(OPERATOR, "topic", topics.REQUESTS, ("WRITE", "DESCRIBE"),
          "bank send and an operator's own services: every request type, deposits included"),
    Grant(OPERATOR, "topic", topics.OUTCOMES, ("READ", "DESCRIBE"), "and every outcome"),
    Grant(OPERATOR, "group", "operator-*", ("READ",), "its own consumer groups"),
    Grant(GATEWAY, "topic", f"{topics.CLIENT_TOPICS}*", ("READ", "WRITE", "DESCRIBE"),
          "reads each Kafka client's requests topic, writes the outcomes of its requests to its "
          "outcomes topic"),
    Grant(GATEWAY, "topic", topics.KAFKA_CLIENTS, ("READ", "DESCRIBE"),
          "each Kafka client's grant: the accounts it may move money out of"),
    Grant(GATEWAY, "topic", topics.REQUESTS, ("WRITE", "DESCRIBE"),
          "relays what a client's grant allows, with requested_by set to the client"),
    Grant(GATEWAY, "topic", topics.OUTCOMES, ("READ", "DESCRIBE"),
          "copies the outcomes of each client's requests to it"),
    Grant(GATEWAY, "topic", topics.DEADLETTER, ("WRITE", "DESCRIBE"),
          "sets aside client records it cannot read"),
    Grant(GATEWAY, "group", f"{topics.GATEWAY_GROUP}*", ("READ", "DESCRIBE"),
          "its consumer group (offsets committed in its transactions) and its grant reader"),
    Grant(GATEWAY, "transactional_id", f"{topics.GATEWAY_GROUP}-*", ("WRITE", "DESCRIBE"),
          "one transaction per batch: relayed requests, answers and offsets together"),
)

_RESOURCE = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
             "transactional_id": ResourceType.TRANSACTIONAL_ID}


def user_name(settings: Settings, role: str) -> str:
    assert role in ROLES, role
    return settings.topic(role)


def bindings(settings: Settings) -> list[AclBinding]:
    """Every ACL of GRANTS, for this deployment's prefix and users."""
    out = []
    for grant in GRANTS:
        if grant.name.endswith("*"):
            name = settings.topic(grant.name[:-1])
            # Kafka has no empty prefix: the whole namespace of an unprefixed deployment is `*`
            pattern = ResourcePatternType.PREFIXED if name else ResourcePatternType.LITERAL
            name = name or "*"
        else:
            name, pattern = settings.topic(grant.name), ResourcePatternType.LITERAL
        for op in grant.operations:
            out.append(AclBinding(_RESOURCE[grant.resource], name, pattern,
                                  f"User:{user_name(settings, grant.role)}", "*",
                                  AclOperation[op], AclPermissionType.ALLOW))
    return out


def properties_path(credentials_dir: str | os.PathLike[str], role: str) -> Path:
    return Path(credentials_dir) / f"{role}.properties"


def secure_deployment(settings: Settings, admin_conf: dict[str, str],
                      credentials_dir: str | os.PathLike[str]) -> Settings:
    """A deployment on a cluster whose super user is `admin_conf` (the embedded broker's):
    the super user's properties file, then every role's user, ACLs and file; returns the
    settings every process then connects with."""
    settings = with_admin(settings, admin_conf, credentials_dir)
    provision(settings, client_config(settings, ADMIN), credentials_dir)
    return settings


def with_admin(settings: Settings, admin_conf: dict[str, str],
               credentials_dir: str | os.PathLike[str]) -> Settings:
    """The super user's properties file in `credentials_dir`, and settings that find it
    there (no role's user yet: secure_deployment makes them)."""
    write_properties(properties_path(credentials_dir, ADMIN), admin_conf,
                      f"the super user of {settings.bootstrap_servers}: administration only")
    return replace(settings, kafka_credentials=str(credentials_dir))


def write_properties(path: Path, conf: dict[str, str], comment: str) -> None:
    write_private(path, f"# {comment}\n" + "".join(f"{k}={v}\n" for k, v in conf.items()))


def provision(settings: Settings, admin_conf: dict[str, object],
              credentials_dir: str | os.PathLike[str], timeout_s: float = 30.0) -> dict[str, Path]:
    """Make (or refresh) every role's SCRAM user and ACLs as the super user `admin_conf`;
    returns each role's properties file. A role that has a file keeps its password."""
    admin = AdminClient(admin_conf)
    paths, upserts = {}, []
    for role in ROLES:
        path = properties_path(credentials_dir, role)
        conf = read_properties(path) if path.exists() else {
            "security.protocol": str(admin_conf.get("security.protocol", "SASL_PLAINTEXT")),
            "sasl.mechanism": "SCRAM-SHA-512",   # the users made here are SCRAM users
            "sasl.username": user_name(settings, role),
            "sasl.password": secrets.token_urlsafe(24)}
        upserts.append(UserScramCredentialUpsertion(
            conf["sasl.username"], ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512,
                                                       SCRAM_ITERATIONS),
            conf["sasl.password"].encode()))
        if not path.exists():
            write_properties(path, conf, f"the {role} principal of {settings.bootstrap_servers} "
                                          f"(BANK_TOPIC_PREFIX {settings.topic_prefix!r})")
        paths[role] = path
    for future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).values():
        future.result()
    for future in admin.create_acls(bindings(settings), request_timeout=timeout_s).values():
        future.result()
    return paths
