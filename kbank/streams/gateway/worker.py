"""The gateway worker (`bank gateway`): Kafka plumbing around gateway.relay.

One consumer group (`bank-gateway`) reads every client's requests topic (a pattern
subscription, so a client made later is found within a metadata refresh) and
transfers.outcomes. Each batch is one Kafka transaction: the relayed requests, the refusals
and the outcome copies, with the offsets of what was read (read_committed), so a crash at
any point relays each record once (the next owner starts at the last committed offsets; a
zombie is fenced by the group's generation, KIP-447). Any error inside a transaction aborts
it and ends the process (the supervisor restarts it from the committed offsets); an
authorization error, which no restart fixes, halts it with HALTED_EXIT_CODE and says why.
"""
from __future__ import annotations

import logging
import signal
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.gateway.admin import fold_grant
from kbank.streams.gateway.grants import (TOPIC_PREFIX, KafkaClient, client_of_topic,
                                          outcomes_topic)
from kbank.streams.gateway.relay import DeadLetter, Refuse, Relay, decide, is_clients_outcome
from kbank.streams.engine import WorkerHalted, error_of
from kbank.streams.health import record_halt
from kbank.streams.model import VERSION_HEADERS, dead_letter

log = logging.getLogger("bank.gateway")
RELAYED_FROM = "bank-relayed-from"    # header of a relayed request: "topic/partition/offset"
_REFRESH_MS = 2000                    # how soon a new client's topic is subscribed
_UNFIXABLE = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                        KafkaError.CLUSTER_AUTHORIZATION_FAILED})


def pattern(settings: Settings) -> str:
    """librdkafka's regex for every client's requests topic of this deployment."""
    literal = "".join(c if c.isalnum() or c in "_-" else "\\" + c
                      for c in settings.topic(TOPIC_PREFIX))
    return f"^{literal}[a-z0-9][a-z0-9_]*\\.requests$"


class GrantReader:
    """auth.kafka-clients, read in the gateway's own thread: everything there is before a
    batch is decided, and to the end when a record names a client not yet known."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(topics.KAFKA_CLIENTS)
        self.grants: dict[str, KafkaClient] = {}
        self.consumer = kafka.consumer(settings, kafka.GATEWAY,
                                       settings.topic(f"{topics.GATEWAY_GROUP}-grants"))
        self.consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self.catch_up()

    def poll(self) -> None:
        for msg in self.consumer.consume(500, 0):
            self._fold(msg)

    def catch_up(self, timeout_s: float = 30.0) -> None:
        """Read to the topic's end as it is now."""
        _, end = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=10)
        deadline = time.monotonic() + timeout_s
        while self._position() < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic} not read to its end in {timeout_s:.0f} s")
            for msg in self.consumer.consume(500, 0.2):
                self._fold(msg)

    def get(self, name: str) -> KafkaClient | None:
        if name not in self.grants:
            self.catch_up()
        return self.grants.get(name)

    def _position(self) -> int:
        offset = self.consumer.position([TopicPartition(self.topic, 0)])[0].offset
        return max(offset, 0)

    def _fold(self, msg: Message) -> None:
        if msg.error() is not None:
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("reading %s: %s", self.topic, msg.error())
            return
        skipped = fold_grant(self.grants, msg.key(), msg.value())
        if skipped is not None:
            log.error("skipping a Kafka client record at offset %d: %s", msg.offset(), skipped)


class GatewayWorker:
    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.requests = settings.topic(topics.REQUESTS)
        self.outcomes = settings.topic(topics.OUTCOMES)
        self.deadletter = settings.topic(topics.DEADLETTER)
        self.partitions = topics.partition_count(settings, topics.REQUESTS, kafka.GATEWAY)
        self.grants = GrantReader(settings)
        self.consumer = kafka.consumer(settings, kafka.GATEWAY,
                                       settings.topic(topics.GATEWAY_GROUP),
                                       **{"topic.metadata.refresh.interval.ms": _REFRESH_MS})
        self.producer = kafka.producer(settings, kafka.GATEWAY, **{
            "transactional.id": settings.topic(f"{topics.GATEWAY_GROUP}-{worker_id}"),
            "acks": "all", "linger.ms": 5})
        self.relayed = self.refused = self.copied = self.dead = 0
        self._stopping = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stopping", True))
        self.producer.init_transactions(60)
        self.consumer.subscribe([pattern(self.settings), self.outcomes])
        log.info("gateway %s relaying %s to %s", self.worker_id, pattern(self.settings),
                 self.requests)
        try:
            while not self._stopping:
                self.grants.poll()
                batch = [m for m in self.consumer.consume(1000, 0.2) if self._usable(m)]
                if batch:
                    self._transact(batch)
        except KafkaException as exc:
            self._end(exc)
        finally:
            self.consumer.close()

    def _usable(self, msg: Message) -> bool:
        error = msg.error()
        if error is None:
            return True
        if error.code() in _UNFIXABLE or kafka.is_fatal(error):
            raise KafkaException(error)
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("reading %s: %s", msg.topic(), error)
        return False

    def _transact(self, batch: list[Message]) -> None:
        """One transaction: every output of the batch and the offsets past it."""
        self.producer.begin_transaction()
        try:
            ends: dict[tuple[str, int], int] = {}
            for msg in batch:
                self._handle(msg)
                ends[(msg.topic(), msg.partition())] = msg.offset() + 1
            self.producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in ends.items()],
                self.consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(30)
        except BaseException:
            self._abort()
            raise

    def _handle(self, msg: Message) -> None:
        ts = msg.timestamp()[1]
        if msg.topic() == self.outcomes:
            name = is_clients_outcome(msg.value())
            if name is not None and self.grants.get(name) is not None:
                self.copied += 1
                self.producer.produce(self.settings.topic(outcomes_topic(name)), key=msg.key(),
                                      value=msg.value(), timestamp=ts, headers=VERSION_HEADERS)
            return
        name = client_of_topic(msg.topic()[len(self.settings.topic_prefix):])
        assert name is not None, msg.topic()    # the subscription's pattern admits no other
        decision = decide(name, self.grants.get(name), msg.key(), msg.value(), self.partitions,
                          int(time.time() * 1000))
        if isinstance(decision, Relay):
            self.relayed += 1
            self.producer.produce(self.requests, key=decision.key, value=decision.value,
                                  partition=decision.partition, headers=[
                                      (RELAYED_FROM, f"{msg.topic()}/{msg.partition()}/"
                                                     f"{msg.offset()}".encode())])
        elif isinstance(decision, Refuse):
            self.refused += 1
            self.producer.produce(self.settings.topic(outcomes_topic(name)), key=decision.key,
                                  value=decision.value, headers=VERSION_HEADERS)
        else:
            assert isinstance(decision, DeadLetter), decision
            self.dead += 1
            key, value = dead_letter(msg, decision.error)
            self.producer.produce(self.deadletter, key=key, value=value, timestamp=ts)

    def _abort(self) -> None:
        try:
            self.producer.abort_transaction(30)
        except KafkaException as exc:
            log.error("abort failed: %s", exc)

    def _end(self, exc: KafkaException) -> None:
        """Halt as the engine does on an error no restart fixes (its halt line recorded,
        WorkerHalted for the CLI to print and exit with); any other one ends the process."""
        error = error_of(exc)
        if error is not None and (error.code() in _UNFIXABLE or kafka.is_fatal(error)):
            message = f"gateway {self.worker_id} halted: {error.str()} (no restart fixes this)"
            record_halt(self.settings.state_dir, "gateway", self.worker_id, message)
            raise WorkerHalted(message) from exc
        raise exc
