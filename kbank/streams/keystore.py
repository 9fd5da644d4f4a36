"""API keys on Kafka: the admin's writes (create, revoke, list) and the views' KeyRing.

Key records live in the compacted topic auth.keys (record key = key id, value =
ApiKey.to_bytes()), which only the admin principal may write and the views may read; each
create and revoke also appends an audit record to auth.audit (kept forever), in the same
transaction as the key record, so the audit log never misses a key that works.
"""
from __future__ import annotations

import getpass
import logging
import time
from dataclasses import replace

import orjson

from kbank.streams import kafka, topics
from kbank.streams.apikeys import ApiKey, InvalidKey, NewKey, lookup, new_key
from kbank.streams.client import read_topic
from kbank.streams.config import Settings
from kbank.streams.tail import TopicTail

log = logging.getLogger("bank.keys")


class KeyNotFound(LookupError):
    """No key has this id."""


def actor(settings: Settings) -> str:
    """Who is making or revoking a key: the Kafka principal and the OS user running it."""
    user = kafka.client_config(settings, kafka.ADMIN).get("sasl.username") or kafka.ADMIN
    return f"{user} ({getpass.getuser()})"


def write_audited(settings: Settings, logical_topic: str, name: str, value: bytes, action: str,
                  audited: tuple[str, dict]) -> None:
    """A credential record (an API key's, a Kafka client's grant) and its auth.audit record
    (`audited`: its field name and the record's public fields), in one transaction, as the
    super user: the audit log never misses a credential that works."""
    producer = kafka.producer(settings, kafka.ADMIN, **{
        "transactional.id": settings.topic(f"bank-{logical_topic}-{name}-{action}"),
        "acks": "all"})
    producer.init_transactions(30)
    producer.begin_transaction()
    audit = {"v": 1, "action": action, "ts": int(time.time() * 1000), "by": actor(settings),
             audited[0]: audited[1]}
    producer.produce(settings.topic(topics.KEYS_AUDIT), key=name.encode(), value=orjson.dumps(audit))
    producer.produce(settings.topic(logical_topic), key=name.encode(), value=value)
    producer.commit_transaction(30)


def _write(settings: Settings, record: ApiKey, action: str) -> None:
    write_audited(settings, topics.KEYS, record.id, record.to_bytes(), action,
                  ("key", record.public()))


def create_key(settings: Settings, role: str, accounts: tuple[str, ...] = (),
               account_prefix: str | None = None, expires_ms: int | None = None,
               label: str = "") -> NewKey:
    """Make and store a key; the caller shows `token` once. Raises InvalidKey."""
    made = new_key(role, int(time.time() * 1000), actor(settings), accounts, account_prefix,
                   expires_ms, label)
    _write(settings, made.record, "key_created")
    return made


def fold_key_record(keys: dict[str, ApiKey], key: bytes | None, value: bytes | None,
                    offset: int) -> None:
    """Apply one auth.keys record to `keys` (by id): the latest record of a key wins, a
    tombstone removes it; a record that is not a key's is logged and skipped (one bad record
    must not lock everyone out)."""
    if value is None:
        keys.pop((key or b"").decode("utf-8", "replace"), None)
        return
    try:
        record = ApiKey.from_bytes(value)
    except InvalidKey as exc:
        log.error("skipping an unreadable key record at offset %d: %s", offset, exc)
        return
    if key != record.id.encode():
        log.error("skipping key record at offset %d: its key is not its id", offset)
        return
    keys[record.id] = record


def list_keys(settings: Settings) -> list[ApiKey]:
    """Every key's latest record, oldest first (read as the admin)."""
    latest: dict[str, ApiKey] = {}
    for msg in read_topic(settings, settings.topic(topics.KEYS), 60, role=kafka.ADMIN):
        fold_key_record(latest, msg.key(), msg.value(), msg.offset())
    return sorted(latest.values(), key=lambda k: (k.created_ms, k.id))


def revoke_key(settings: Settings, key_id: str) -> ApiKey:
    """Revoke a key (kept, marked revoked: the audit trail still names it)."""
    found = {k.id: k for k in list_keys(settings)}.get(key_id)
    if found is None:
        raise KeyNotFound(f"no API key {key_id!r} (bank keys list shows them)")
    if found.revoked_ms is not None:
        return found
    revoked = replace(found, revoked_ms=int(time.time() * 1000))
    _write(settings, revoked, "key_revoked")
    return revoked


class KeyRing:
    """Every key, as auth.keys has it now: a tail of the topic from its start, so a
    revocation reaches every views worker within a fetch (well under a second).

    `ready` is set once the topic was read to its end: before that a key could be missing,
    so the web layer answers 503, never a wrong 401."""

    def __init__(self, settings: Settings, role: str = kafka.VIEWS,
                 group: str = "bank-views-keys") -> None:
        self._keys: dict[str, ApiKey] = {}
        self._tail = TopicTail(settings, role, group, settings.topic(topics.KEYS),
                               lambda msg: fold_key_record(self._keys, msg.key(), msg.value(),
                                                           msg.offset()), "key-ring")
        self.ready = self._tail.ready

    def find(self, token: str) -> tuple[ApiKey | None, str]:
        """The key a bearer token names, or None and why not."""
        return lookup(self._keys, token)

    def get(self, key_id: str) -> ApiKey | None:
        """A key by its id (never by its secret: for what a key owns, such as webhooks)."""
        return self._keys.get(key_id)

    def fresh_since(self, wall_ms: int) -> bool:
        """Whether every key record written before `wall_ms` has been read (TopicTail)."""
        return self._tail.fresh_since(wall_ms)

    def close(self) -> None:
        self._tail.close()
