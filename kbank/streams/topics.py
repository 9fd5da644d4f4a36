"""Topic names, the topics.yaml catalogue, and idempotent topic creation."""
from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from kbank.streams.config import Settings
from kbank.streams.kafka import ADMIN, client_config

REQUESTS = "transfers.requests"
CREDITS = "transfers.credits"
LEDGER = "ledger.events"
CHANGELOG = "engine.changelog"
BATCHES = "engine.batches"
OUTCOMES = "transfers.outcomes"
DEADLETTER = "transfers.deadletter"
VIEWS_GENERATION = "views.generation"
KEYS = "auth.keys"
KEYS_AUDIT = "auth.audit"
KAFKA_CLIENTS = "auth.kafka-clients"
USAGE = "views.usage"           # what each API key used at each views worker (shared rate)
CLIENT_TOPICS = "clients."      # clients.<name>.requests / .outcomes, one pair per Kafka client
GATEWAY_GROUP = "bank-gateway"
WEBHOOKS = "webhooks.registrations"
CHECKPOINTS = "verify.checkpoints"
CLOSES = "books.closes"          # closes of the books (bank close), kept for good
RECON_LINES = "recon.lines"      # statement lines imported (bank reconcile import)
RECON_RULES = "recon.rules"      # each account's matching rules
RECON_RESULTS = "recon.results"  # the reconciler's result per statement line or ledger event
DELIVERIES = "webhooks.deliveries"
BREAK_DELIVERIES = "webhooks.break-deliveries"   # the reconciliation's breaks' deliveries
WEBHOOKS_GROUP = "bank-webhooks"
ENGINE_GROUP = "bank-engine"


class TopicLayoutError(RuntimeError):
    """An existing topic breaks co-partitioning (starting would split accounts) or is
    configured against the catalogue (the audit log could expire, a changelog lose state)."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    co_partitioned: bool


def catalogue_path() -> Path:
    """topics.yaml: in the source tree, or shipped inside the package."""
    here = Path(__file__).resolve().parents[2] / "topics.yaml"
    if here.exists():
        return here
    return Path(str(resources.files("kbank.streams").joinpath("topics.yaml")))


def load_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of topics.yaml with its full (prefixed) name."""
    doc = yaml.safe_load(catalogue_path().read_text())
    specs = []
    for name, body in doc["topics"].items():
        co = body["partitions"] == "co"
        specs.append(TopicSpec(
            name=settings.topic(name),
            partitions=settings.partitions if co else int(body["partitions"]),
            config={k: str(v) for k, v in (body.get("config") or {}).items()},
            co_partitioned=co,
        ))
    return specs


def _ready_topics(admin: AdminClient, names: list[str], timeout_s: float) -> dict[str, Any]:
    """Each topic's metadata once every topic is in it (a broker learns of a topic the
    controller created a moment later) with a leader for every partition."""
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        ready = {n: t for n, t in topics.items() if n in names and t.error is None
                 and t.partitions and all(p.leader >= 0 for p in t.partitions.values())}
        if len(ready) == len(names):
            return {n: ready[n] for n in names}
        if time.monotonic() > deadline:
            raise TopicLayoutError(f"topics not ready after {timeout_s:.0f} s: "
                                   f"{sorted(set(names) - set(ready))}")
        time.sleep(0.1)


def min_insync_replicas(settings: Settings) -> int:
    """2 on a replicated cluster (a write survives one broker's loss), else 1."""
    return 2 if settings.replication_factor >= 3 else 1


def replication_config(settings: Settings) -> dict[str, str]:
    """What every topic sets for its replicas: min.insync.replicas, and never an unclean
    leader (a replica missing acknowledged writes elected would lose them)."""
    return {"min.insync.replicas": str(min_insync_replicas(settings)),
            "unclean.leader.election.enable": "false"}


def config_mismatches(spec: TopicSpec, actual: dict[str, str], replication_factor: int,
                      settings: Settings) -> list[str]:
    """What an existing topic gets wrong against the catalogue, one phrase per setting.

    Every setting topics.yaml names must be exactly as written (a 7-day retention on the
    audit log would silently expire it); replication factor and min.insync.replicas may be
    stronger than this deployment asks for, never weaker.
    """
    wrong = [f"{key}={actual.get(key)!r} (topics.yaml says {want!r})"
             for key, want in sorted(spec.config.items()) if actual.get(key) != want]
    if replication_factor < settings.replication_factor:
        wrong.append(f"replication factor {replication_factor} "
                     f"(BANK_REPLICATION_FACTOR is {settings.replication_factor})")
    want_isr = min_insync_replicas(settings)
    isr = actual.get("min.insync.replicas")
    if isr is None or not isr.isdigit() or int(isr) < want_isr:
        wrong.append(f"min.insync.replicas={isr!r} (at least {want_isr})")
    if actual.get("unclean.leader.election.enable") != "false":
        wrong.append(f"unclean.leader.election.enable="
                     f"{actual.get('unclean.leader.election.enable')!r} (must be 'false')")
    return wrong


def _topic_configs(admin: AdminClient, names: list[str], timeout_s: float) -> dict[str, Any]:
    """Each topic's configuration. A topic created a moment ago can still be unknown to the
    broker asked (its metadata is on its way: seen on a fresh 3-node cluster), so that one
    answer is asked again until timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        futures = admin.describe_configs(
            [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names],
            request_timeout=timeout_s)
        try:
            return {resource.name: future.result(timeout=timeout_s)
                    for resource, future in futures.items()}
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError)
                    and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART) \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _check_configs(admin: AdminClient, specs: list[TopicSpec], metadata: dict[str, Any],
                   settings: Settings, timeout_s: float) -> None:
    """Refuse to start on a topic whose settings break the catalogue, naming each one."""
    by_name = _topic_configs(admin, [s.name for s in specs], timeout_s)
    problems = []
    for spec in specs:
        actual = {k: entry.value for k, entry in by_name[spec.name].items()}
        replicas = min(len(p.replicas) for p in metadata[spec.name].partitions.values())
        problems += [f"{spec.name}: {w}"
                     for w in config_mismatches(spec, actual, replicas, settings)]
    if problems:
        raise TopicLayoutError(
            "existing topics are configured against topics.yaml: " + "; ".join(problems)
            + "; fix them with kafka-configs.sh (or recreate them) or use another "
            "BANK_TOPIC_PREFIX")


def partition_count(settings: Settings, logical_topic: str, role: str) -> int:
    """How many partitions a topic has on the cluster (not BANK_PARTITIONS, which only says
    how many to create), read as `role`."""
    name = settings.topic(logical_topic)
    found = AdminClient(client_config(settings, role)).list_topics(name, timeout=30).topics[name]
    if found.error is not None or not found.partitions:
        raise TopicLayoutError(f"topic {name} cannot be read: {found.error}")
    return len(found.partitions)


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; refuse if the co-partitioned ones disagree or an existing
    topic's settings break the catalogue.

    Returns the partition count of every topic.
    """
    admin = AdminClient(client_config(settings, ADMIN))
    specs = load_specs(settings)
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, settings.replication_factor,
                  config={**s.config, **replication_config(settings)})
         for s in specs],
        request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - inspect the Kafka error code
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
    metadata = _ready_topics(admin, [s.name for s in specs], timeout_s)
    counts = {name: len(topic.partitions) for name, topic in metadata.items()}
    co_counts = {s.name: counts[s.name] for s in specs if s.co_partitioned}
    if len(set(co_counts.values())) != 1:
        raise TopicLayoutError(
            "co-partitioned topics must have the same partition count, found "
            + ", ".join(f"{n}={c}" for n, c in sorted(co_counts.items()))
            + "; recreate them or use another BANK_TOPIC_PREFIX")
    _check_configs(admin, specs, metadata, settings, timeout_s)
    return counts
