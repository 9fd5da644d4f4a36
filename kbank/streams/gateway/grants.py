"""A Kafka client's grant: which accounts its principal may move money out of (pure).

Grants live in the compacted topic `auth.kafka-clients` (record key = the client's name),
written only by the super user (`bank kafka-config client NAME --accounts ...`) and read by
the gateway. The latest record of a name wins; a revoked grant is kept (the audit trail
still names it) and its records are refused.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from kbank.streams.apikeys import CLIENT, InvalidKey, scope_problem, versioned_record

_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,47}")   # no '.' or '-': topic and group names stay apart
REQUESTS_SUFFIX, OUTCOMES_SUFFIX = ".requests", ".outcomes"
TOPIC_PREFIX = "clients."      # clients.<name>.requests and clients.<name>.outcomes
PRINCIPAL_PREFIX = "kafka:"    # requested_by of what the gateway relays


def is_client_name(value: Any) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def requests_topic(name: str) -> str:
    """The logical name of the topic only this client writes."""
    assert is_client_name(name), name
    return f"{TOPIC_PREFIX}{name}{REQUESTS_SUFFIX}"


def outcomes_topic(name: str) -> str:
    """The logical name of the topic only this client reads."""
    assert is_client_name(name), name
    return f"{TOPIC_PREFIX}{name}{OUTCOMES_SUFFIX}"


def client_of_topic(logical_topic: str) -> str | None:
    """The client whose requests topic this is, if it is one."""
    if logical_topic.startswith(TOPIC_PREFIX) and logical_topic.endswith(REQUESTS_SUFFIX):
        name = logical_topic[len(TOPIC_PREFIX):-len(REQUESTS_SUFFIX)]
        return name if is_client_name(name) else None
    return None


def role_of(name: str) -> str:
    """The credentials file and SCRAM user suffix of this client (`client-<name>`)."""
    assert is_client_name(name), name
    return f"client-{name}"


@dataclass(frozen=True)
class KafkaClient:
    """One client service's grant, as stored."""

    name: str
    created_ms: int
    created_by: str
    accounts: tuple[str, ...] = ()
    account_prefix: str | None = None
    revoked_ms: int | None = None

    def __post_init__(self) -> None:
        assert is_client_name(self.name), self.name
        assert scope_problem(CLIENT, self.accounts, self.account_prefix) is None, self

    # -- what apikeys.submit_refusal asks of a scope --

    role = CLIENT

    @property
    def holder(self) -> str:
        return f"Kafka client {self.name}"

    def covers(self, account: str) -> bool:
        return account in self.accounts or (
            self.account_prefix is not None and account.startswith(self.account_prefix))

    @property
    def principal(self) -> str:
        """How its requests are recorded (`requested_by`)."""
        return f"{PRINCIPAL_PREFIX}{self.name}"

    # -- storage --

    def to_bytes(self) -> bytes:
        return orjson.dumps({"v": 1, **asdict(self)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> "KafkaClient":
        """Raises InvalidKey for anything but a well-formed record."""
        doc = versioned_record(raw, set(cls.__dataclass_fields__), "Kafka client")
        if not is_client_name(doc["name"]):
            raise InvalidKey("name must be 1 to 48 of a-z, 0-9 and _, starting with a letter or digit")
        if not all(doc[f] is None or (isinstance(doc[f], int) and not isinstance(doc[f], bool))
                   for f in ("created_ms", "revoked_ms")) or doc["created_ms"] is None:
            raise InvalidKey("times must be integers of milliseconds")
        if not isinstance(doc["accounts"], list) or not isinstance(doc["created_by"], str):
            raise InvalidKey("accounts must be a list and created_by a string")
        doc["accounts"] = tuple(doc["accounts"])
        problem = scope_problem(CLIENT, doc["accounts"], doc["account_prefix"])
        if problem is not None:
            raise InvalidKey(problem)
        return cls(**doc)

    def public(self) -> dict[str, Any]:
        return asdict(self)
