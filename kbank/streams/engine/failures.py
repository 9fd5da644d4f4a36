"""What a Kafka error means for the engine, decided once (issue 40).

Every error the engine's clients report is sorted into one kind, and the worker acts on
the kind, never on a code it happens to meet:

- FENCED: a newer incarnation or owner exists; drop the tasks, take a new producer, rejoin.
- FATAL: this client can no longer be used; a new producer, as fenced.
- RETRIABLE: the broker may answer otherwise next time (a leader moved, a timeout); abort,
  rewind, run the batch again.
- NOT_RETRIABLE: no retry can succeed until someone changes the cluster (an ACL refused, a
  topic is gone, a record is larger than the broker takes): the worker ends at once with one
  line naming the operation, the resource and the principal, and its supervisor restarts it
  with a backoff, so the bank heals by itself once the cause is fixed and never spins.

A worker whose batches abort `abort_limit` times in a row, with no commit between them, ends
the same way (AbortStreak), whatever the kinds: a retry that keeps failing is not a retry
(one cause often shows as two alternating errors: a failed delivery, then a fenced
producer after the failed abort).
"""
from __future__ import annotations

import collections
import enum
import logging
import re
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException

from kbank.streams.kafka import is_fatal

log = logging.getLogger("bank.engine")


class FailureKind(enum.Enum):
    FENCED = "fenced"
    FATAL = "fatal"
    RETRIABLE = "retriable"
    NOT_RETRIABLE = "not_retriable"


_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                     KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.ILLEGAL_GENERATION,
                     KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID,
                     KafkaError.REBALANCE_IN_PROGRESS})

# code -> the operation that was refused, as the broker's ACLs name it
_NOT_RETRIABLE = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic access (WRITE or READ)",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "READ on the consumer group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "WRITE on the transactional id",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "a cluster operation",
    KafkaError.SASL_AUTHENTICATION_FAILED: "authentication",
    KafkaError._AUTHENTICATION: "authentication",
    KafkaError.UNKNOWN_TOPIC_OR_PART: "a topic that does not exist",
    KafkaError._UNKNOWN_TOPIC: "a topic that does not exist",
    KafkaError._UNKNOWN_PARTITION: "a partition that does not exist",
    KafkaError.MSG_SIZE_TOO_LARGE: "a record larger than the broker accepts",
    KafkaError.RECORD_LIST_TOO_LARGE: "a batch larger than the broker accepts",
}

_TOPIC_IN_LOG = re.compile(r'(?:partition "([^"]+)"|ProduceRequest for (\S+)) \[\d+\]')
_TXN_ERROR_IN_LOG = re.compile(r"^TXNERR .*\(([A-Z_]+)\)\s*$")


def error_of(exc: BaseException) -> KafkaError | None:
    """The KafkaError an exception carries (itself, or its cause's), if any."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, KafkaException) and candidate.args \
                and isinstance(candidate.args[0], KafkaError):
            return candidate.args[0]
    return getattr(exc, "kafka_error", None)


def kind_of(err: KafkaError) -> FailureKind:
    """The one classification of a Kafka error."""
    if err.code() in _NOT_RETRIABLE:
        return FailureKind.NOT_RETRIABLE
    if err.code() in _FENCED:
        return FailureKind.FENCED
    if is_fatal(err):
        return FailureKind.FATAL
    return FailureKind.RETRIABLE


def refused_operation(err: KafkaError) -> str:
    return _NOT_RETRIABLE.get(err.code(), err.name())


class WorkerHalted(Exception):
    """An error retrying cannot fix: the worker ends with this one line (its supervisor
    restarts it with a backoff)."""


class ClientLog(logging.Handler):
    """librdkafka's log lines of one client, passed on to `bank.kafka` and the last few
    errors kept: its error codes do not name the topic a transaction was refused, its log
    line does (`Failed to add partition "t" [2] to transaction: ...`)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.recent: collections.deque[str] = collections.deque(maxlen=20)
        self.txn_error: KafkaError | None = None   # the open transaction's failure, if any
        self.logger = logging.getLogger(f"bank.kafka.{id(self)}")
        self.logger.propagate = False
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        self._out = logging.getLogger("bank.kafka")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.recent.append(message)
            found = _TXN_ERROR_IN_LOG.match(message)
            code = getattr(KafkaError, found.group(1), None) if found else None
            if isinstance(code, int):
                self.txn_error = KafkaError(code, message)
        self._out.log(record.levelno, "%s", message)

    def topics_named(self) -> list[str]:
        """Topics the recent error lines name as refused, newest first, each once (the others
        of a refused request answer 'not attempted')."""
        found: list[str] = []
        for line in reversed(self.recent):
            if "not attempted" in line:
                continue
            for quoted, produced in _TOPIC_IN_LOG.findall(line):
                topic = quoted or produced
                if topic not in found:
                    found.append(topic)
        return found


@dataclass
class AbortStreak:
    """Aborts since the last commit, and their causes; the worker halts at `limit`."""

    limit: int
    causes: collections.Counter[str] = field(default_factory=collections.Counter)
    count: int = 0

    def aborted(self, cause: str) -> int:
        self.count += 1
        self.causes[cause] += 1
        return self.count

    def committed(self) -> None:
        self.causes.clear()
        self.count = 0

    def describe(self) -> str:
        return "; ".join(f"{n} x {cause}" for cause, n in self.causes.most_common(3))

    @property
    def exhausted(self) -> bool:
        return self.count >= self.limit


def halt_message(worker_id: str, principal: str, err: KafkaError | None, topics: list[str],
                 detail: str) -> str:
    """The one line a halted worker leaves: what was refused, on what, to whom."""
    if err is None and not topics:   # not the broker's refusal: the engine's own reason
        return f"engine worker {worker_id} halted ({principal}): {detail}"
    what = refused_operation(err) if err is not None else "a batch"
    on = f" on topic {', '.join(topics)}" if topics else ""
    code = f" ({err.name()})" if err is not None else ""
    return (f"engine worker {worker_id} halted: {what}{on} refused for principal {principal}"
            f"{code}: {detail}")
