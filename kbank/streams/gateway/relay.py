"""What the gateway does with one record of a client's requests topic (pure).

A record is relayed (to the owning partition of transfers.requests, keyed by its deciding
account, with `requested_by` set to the client's principal), refused (a `rejected` outcome
on the client's outcomes topic: `invalid` or `forbidden`, with why), or dead-lettered (no
request id to answer by). The rights are apikeys.submit_refusal's, the rule a client API
key is held to, so a Kafka principal can do exactly what a client key of the same accounts
can, and no more.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from kbank.streams.apikeys import submit_refusal
from kbank.streams.decisions import (MAX_REQUEST_BYTES, REQUESTED_BY, Undecodable,
                                     deciding_account, parse_json, parse_request)
from kbank.streams.gateway.grants import PRINCIPAL_PREFIX, KafkaClient
from kbank.streams.model import FORBIDDEN, INVALID, REJECTED_STATUS, is_name, outcome, request_key
from kbank.streams.partitioning import partition_for


@dataclass(frozen=True)
class Relay:
    """Send this request to transfers.requests, on this partition."""

    key: bytes
    value: bytes
    partition: int


@dataclass(frozen=True)
class Refuse:
    """Answer the client on its outcomes topic; the request goes no further."""

    key: bytes
    value: bytes


@dataclass(frozen=True)
class DeadLetter:
    """Nothing to answer by: set the record aside with why."""

    error: str


def decide(client_name: str, grant: KafkaClient | None, key: bytes | None, value: bytes | None,
           partitions: int, now_ms: int) -> Relay | Refuse | DeadLetter:
    """The gateway's decision on one record `client_name` wrote (its grant: None if it has
    none any more)."""
    assert partitions >= 1, partitions
    if value is None:
        return DeadLetter("empty record")
    if len(value) > MAX_REQUEST_BYTES:
        return DeadLetter(f"the request is {len(value)} bytes, over the limit of {MAX_REQUEST_BYTES}")
    try:
        body = parse_json(value)
    except (ValueError, UnicodeDecodeError) as exc:
        return DeadLetter(f"not JSON: {exc}")
    deciding = deciding_account(body) if isinstance(body, dict) else None
    # the client's partitioner and key do not matter: the engine's key is the deciding account
    routing_key = deciding.encode("utf-8", "surrogatepass") if is_name(deciding) else key
    try:
        request = parse_request(routing_key, value)
    except Undecodable as exc:
        return DeadLetter(str(exc))
    principal = f"{PRINCIPAL_PREFIX}{client_name}"

    def refuse(reason: str, detail: str) -> Refuse:
        account = request.account or ""
        answer = outcome(account, request.request_id, REJECTED_STATUS, now_ms, reason, detail)
        answer[REQUESTED_BY] = principal
        return Refuse(request_key(account, request.request_id).encode("utf-8", "surrogatepass"),
                      orjson.dumps(answer))

    if grant is None:
        return refuse(FORBIDDEN, f"Kafka client {client_name} has no grant (revoked or never made)")
    if grant.revoked_ms is not None:
        return refuse(FORBIDDEN, f"Kafka client {client_name} was revoked")
    if REQUESTED_BY in request.body:
        return refuse(INVALID, "requested_by is set by the gateway: the client's principal")
    if request.problem is not None:
        return refuse(INVALID, request.problem)
    assert request.account is not None and routing_key is not None, request
    refusal = submit_refusal(grant, request.body, request.account)
    if refusal is not None:
        return refuse(FORBIDDEN, refusal)
    relayed = orjson.dumps({**request.body, REQUESTED_BY: principal})
    return Relay(routing_key, relayed, partition_for(routing_key, partitions))


def is_clients_outcome(value: bytes | None) -> str | None:
    """The client an outcome of transfers.outcomes belongs to (its request came through the
    gateway), else None. A byte search skips the rest cheaply; a match is then read whole,
    since a metadata object may hold the same bytes."""
    if value is None or b'"requested_by":"kafka:' not in value:
        return None
    try:
        answer = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    by = answer.get(REQUESTED_BY) if isinstance(answer, dict) else None
    if isinstance(by, str) and by.startswith(PRINCIPAL_PREFIX):
        return by[len(PRINCIPAL_PREFIX):]
    return None
