"""The gateway's decision per record and its grant records, without a broker (pure)."""
from __future__ import annotations

import orjson
import pytest

from kbank.streams.apikeys import InvalidKey
from kbank.streams.gateway.grants import KafkaClient, client_of_topic, requests_topic
from kbank.streams.gateway.relay import DeadLetter, Refuse, Relay, decide, is_clients_outcome
from kbank.streams.partitioning import partition_for

SHOP = KafkaClient("shop", 1, "tests", accounts=("alice",), account_prefix="shop-")


def _decide(body, grant=SHOP, key=b"k"):  # noqa: ANN001, ANN202
    value = body if isinstance(body, bytes) else orjson.dumps(body)
    return decide("shop", grant, key, value, 8, 1_000)


def _refusal(decision) -> tuple[str, str]:  # noqa: ANN001
    assert isinstance(decision, Refuse), decision
    answer = orjson.loads(decision.value)
    assert answer["requested_by"] == "kafka:shop" and answer["status"] == "rejected", answer
    return answer["reason"], answer["detail"]


def test_an_allowed_request_is_relayed_to_its_owner_in_the_clients_name():
    body = {"type": "transfer", "request_id": "t", "from": "shop-1", "to": "bob", "amount": 5}
    relay = _decide(body, key=b"anything")
    assert isinstance(relay, Relay)
    assert relay.key == b"shop-1" and relay.partition == partition_for(b"shop-1", 8)
    assert orjson.loads(relay.value) == {**body, "requested_by": "kafka:shop"}


@pytest.mark.parametrize("body, reason", [
    ({"type": "deposit", "request_id": "d", "account": "alice", "amount": 10**12}, "forbidden"),
    ({"type": "withdraw", "request_id": "w", "account": "alice", "amount": 1}, "forbidden"),
    ({"type": "transfer", "request_id": "s", "from": "bob", "to": "alice", "amount": 1}, "forbidden"),
    ({"type": "freeze", "request_id": "f", "account": "alice"}, "forbidden"),
    ({"type": "set_limits", "request_id": "l", "account": "alice", "daily_limit": 1}, "forbidden"),
    ({"type": "open_account", "request_id": "o", "account": "shop-2", "overdraft_limit": 9},
     "forbidden"),
    ({"type": "linked", "request_id": "k", "from": "alice", "transfers": [
        {"to": "b", "amount": 1}, {"from": "bob", "to": "c", "amount": 1}]}, "forbidden"),
    ({"type": "transfer", "request_id": "c", "from": "alice", "to": "b", "amount": 1,
      "requested_by": "key:0123456789abcdef"}, "invalid"),
    ({"type": ["transfer"], "request_id": "x", "from": "alice", "to": "b", "amount": 1}, "invalid"),
    ({"type": "linked", "request_id": "n", "from": "alice", "transfers": None}, "invalid"),
])
def test_what_a_client_key_may_not_do_is_refused(body, reason):
    assert _refusal(_decide(body))[0] == reason


def test_a_revoked_or_unknown_client_is_refused():
    body = {"type": "transfer", "request_id": "t", "from": "alice", "to": "bob", "amount": 5}
    assert "revoked" in _refusal(_decide(body, KafkaClient("shop", 1, "t", ("alice",), None, 2)))[1]
    assert "no grant" in _refusal(_decide(body, None))[1]


@pytest.mark.parametrize("value", [b"\xff", b"[]", b'{"type":"transfer"}', b"x" * 20_000])
def test_a_record_with_no_request_id_to_answer_is_dead_lettered(value):
    assert isinstance(decide("shop", SHOP, None, value, 8, 1), DeadLetter)


def test_only_the_top_level_requested_by_names_a_client():
    assert is_clients_outcome(b'{"request_id":"r","requested_by":"kafka:shop"}') == "shop"
    assert is_clients_outcome(b'{"request_id":"r","requested_by":"key:0123"}') is None
    decoy = b'{"request_id":"r","metadata":{"requested_by":"kafka:shop"},"requested_by":"key:1"}'
    assert is_clients_outcome(decoy) is None
    assert is_clients_outcome(None) is None


def test_grant_records_round_trip_and_bad_ones_are_refused():
    assert KafkaClient.from_bytes(SHOP.to_bytes()) == SHOP
    for bad in (b"", b"[]", SHOP.to_bytes().replace(b'"shop"', b'"Shop.x"'),
                SHOP.to_bytes().replace(b'"v":1', b'"v":2'),
                orjson.dumps({**orjson.loads(SHOP.to_bytes()), "accounts": [], "account_prefix": None})):
        with pytest.raises(InvalidKey):
            KafkaClient.from_bytes(bad)
    assert client_of_topic(requests_topic("shop")) == "shop"
    assert client_of_topic("clients.shop.outcomes") is None and client_of_topic("x") is None
