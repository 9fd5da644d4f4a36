"""Kafka clients scoped like client API keys (issue 41): a payments service's own principal
writes only its requests topic, the gateway relays what its grant allows with
`requested_by` set to it, refuses the rest, and copies back the outcomes of its own requests
only. Through the real secured broker: these are the attacks issue 41 found through it."""
from __future__ import annotations

import signal
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, Producer, TopicPartition

from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.gateway.admin import create_client, list_clients, revoke_client
from kbank.streams.gateway.grants import outcomes_topic, requests_topic, role_of
from kbank.streams.gateway.worker import RELAYED_FROM
from kbank.replay.verify import verify
from tests.workload import Workload, ledger, wait_until


class Service:
    """A payments service of a user's own: its producer and what it reads back."""

    def __init__(self, settings, name: str) -> None:  # noqa: ANN001
        self.settings, self.name = settings, name
        self.conf = kafka.client_config(settings, role_of(name))
        self.producer = Producer({**self.conf, "message.timeout.ms": 20_000})
        self.errors: list[KafkaError] = []

    def write(self, topic: str, value: bytes, key: bytes = b"k") -> None:
        def delivered(err, _msg):  # noqa: ANN001
            if err is not None:
                self.errors.append(err)
        self.producer.produce(topic, key=key, value=value, on_delivery=delivered)
        self.producer.flush(30)

    def send(self, request: dict, key: bytes = b"k") -> None:
        self.write(self.settings.topic(requests_topic(self.name)), orjson.dumps(request), key)

    def outcomes(self) -> dict[str, list[dict]]:
        """Its outcomes topic, read as itself: request id -> outcomes."""
        consumer = kafka.consumer(self.settings, role_of(self.name),
                                  self.settings.topic(f"{role_of(self.name)}-reader"),
                                  **{"enable.partition.eof": True})
        topic = self.settings.topic(outcomes_topic(self.name))
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        from kbank.streams.client import read_to_end
        found: dict[str, list[dict]] = {}
        try:
            for msg in read_to_end(consumer, [TopicPartition(topic, p, 0) for p in parts], 30):
                answer = orjson.loads(msg.value())
                found.setdefault(answer["request_id"], []).append(answer)
        finally:
            consumer.close()
        return found

    def final(self, request_id: str) -> dict | None:
        done = [a for a in self.outcomes().get(request_id, [])
                if a["status"] in ("completed", "rejected")]
        return done[-1] if done else None


def relayed(settings) -> list[dict]:  # noqa: ANN001
    """transfers.requests records the gateway wrote."""
    return [orjson.loads(m.value()) for m in read_topic(settings, settings.topic(topics.REQUESTS))
            if any(h == RELAYED_FROM for h, _ in m.headers() or [])]


def gateway_relayed(settings, pool) -> bool:  # noqa: ANN001
    """Whether the gateway relayed anything yet; fails at once, with its log, if it died."""
    proc = pool.procs["0"]
    if proc.poll() is not None:
        log = Path(pool.log_dir, "gateway-0.log").read_text(errors="replace")
        raise AssertionError(f"the gateway exited ({proc.returncode}):\n{log[-3000:]}")
    return len(relayed(settings)) > 0


def test_a_kafka_client_moves_only_its_own_money_and_reads_only_its_own_outcomes(
        settings, pool_factory):
    pool_factory(settings, 1)
    pool_factory(settings, 1, command="gateway")
    operator = Workload(settings)                     # bank send's principal: the operator
    try:
        operator.open_accounts(["alice", "bob", "carol"], 1_000)
    finally:
        operator.close()
    create_client(settings, "shop", accounts=("alice",))
    assert [g.name for g in list_clients(settings)] == ["shop"]
    shop = Service(settings, "shop")

    allowed = {"type": "transfer", "request_id": "ok-1", "from": "alice", "to": "bob", "amount": 10}
    attacks = {
        "mint": {"type": "deposit", "request_id": "mint", "account": "alice", "amount": 10**12},
        "steal": {"type": "transfer", "request_id": "steal", "from": "bob", "to": "alice",
                  "amount": 1_000},
        "freeze": {"type": "freeze", "request_id": "freeze", "account": "carol"},
        "overdraft": {"type": "open_account", "request_id": "lend", "account": "alice2",
                      "overdraft_limit": 5_000},
        "claim": {**allowed, "request_id": "claim", "requested_by": "key:0123456789abcdef"},
        "linked": {"type": "linked", "request_id": "linked", "from": "alice", "transfers": [
            {"to": "bob", "amount": 1}, {"from": "bob", "to": "carol", "amount": 1}]},
        "list-type": {"type": ["transfer"], "request_id": "list-type", "from": "alice",
                      "to": "bob", "amount": 1},
    }
    shop.send(allowed, key=b"whatever")              # its key and partition do not matter
    for body in attacks.values():
        shop.send(body)
    shop.write(settings.topic(requests_topic("shop")), b"\xff not json")
    assert shop.errors == []

    wait_until(lambda: all(shop.final(r) for r in ("ok-1", *(b["request_id"]
                                                             for b in attacks.values()))),
               90, "an answer to every request of the client")
    assert shop.final("ok-1")["status"] == "completed"
    assert shop.final("ok-1")["requested_by"] == "kafka:shop"
    for name in ("mint", "steal", "freeze", "overdraft", "linked"):
        answer = shop.final(attacks[name]["request_id"])
        assert (answer["status"], answer["reason"]) == ("rejected", "forbidden"), (name, answer)
    for name in ("claim", "list-type"):
        answer = shop.final(attacks[name]["request_id"])
        assert (answer["status"], answer["reason"]) == ("rejected", "invalid"), (name, answer)
    # its outcomes topic holds its own requests' outcomes, nothing of the operator's
    assert set(shop.outcomes()) == {"ok-1", *(b["request_id"] for b in attacks.values())}
    # only the allowed request reached the engine, once, in the name of the client
    assert [(r["request_id"], r["requested_by"]) for r in relayed(settings)] == [("ok-1", "kafka:shop")]
    dead = [orjson.loads(m.value()) for m in read_topic(settings, settings.topic(topics.DEADLETTER))]
    assert [d["topic"] for d in dead] == [settings.topic(requests_topic("shop"))], dead
    fold = ledger(settings)
    assert {n: fold.accounts[n].balance for n in ("alice", "bob", "carol")} == \
        {"alice": 990, "bob": 1_010, "carol": 1_000}
    assert "alice2" not in fold.accounts
    assert fold.accounts["carol"].state == "open"

    # the client principal itself: no write to the bank's request topic, no read of anyone's outcomes
    shop.write(settings.topic(topics.REQUESTS), orjson.dumps(attacks["mint"]), b"alice")
    assert [e.code() for e in shop.errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    shop.errors.clear()
    reader = kafka.consumer(settings, role_of("shop"), settings.topic("client-shop-x"))
    try:   # a topic it may not describe: the metadata refuses it
        name = settings.topic(topics.OUTCOMES)
        refused = reader.list_topics(name, timeout=10).topics[name].error
        assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    finally:
        reader.close()

    # another client's topics are not the shop's
    create_client(settings, "other", account_prefix="o-")
    shop.write(settings.topic(requests_topic("other")), orjson.dumps(allowed))
    assert [e.code() for e in shop.errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    shop.errors.clear()

    # revoked: it can no longer write, and what it wrote is no longer relayed
    revoke_client(settings, "shop")
    def refused() -> bool:
        shop.send({**allowed, "request_id": "after-revoke"})
        return bool(shop.errors)
    wait_until(refused, 30, "the revoked client to be refused", poll_s=0.5)
    report = verify(settings, require_final=True)
    assert report.violations == [] and report.lost == report.applied_twice == 0, report.render()
    assert report.money_conserved and report.deposits == 3_000, report.render()


def test_a_gateway_killed_mid_stream_relays_each_request_once(settings, pool_factory):
    pool_factory(settings, 1)
    operator = Workload(settings)
    names = [f"s-{i}" for i in range(4)]
    try:
        operator.open_accounts(names + ["sink"], 100_000)
    finally:
        operator.close()
    create_client(settings, "fast", account_prefix="s-")
    # started after the client exists: the test above covers a client made while it runs
    gateway = pool_factory(settings, 1, command="gateway")
    fast = Service(settings, "fast")
    fast.producer = Producer({**fast.conf, "linger.ms": 5})
    topic = settings.topic(requests_topic("fast"))
    count = 3_000
    for i in range(count):
        fast.producer.produce(topic, key=b"x", value=orjson.dumps(
            {"type": "transfer", "request_id": f"f-{i}", "from": names[i % 4], "to": "sink",
             "amount": 1}))
        if i == count // 3:
            fast.producer.flush(30)
            wait_until(lambda: gateway_relayed(settings, gateway), 60,
                       "the gateway to relay something")
            gateway.kill("0", signal.SIGKILL)            # mid-stream, likely mid-transaction
            gateway.start("0")
        fast.producer.poll(0)
    fast.producer.flush(60)
    wait_until(lambda: len(fast.outcomes()) == count and all(
        any(a["status"] == "completed" for a in answers) for answers in fast.outcomes().values()),
        180, "every request of the client completed", poll_s=1)
    ids = [r["request_id"] for r in relayed(settings)]
    assert len(ids) == count and len(set(ids)) == count, "each request relayed exactly once"
    copies = fast.outcomes()
    assert all(sum(a["status"] == "completed" for a in answers) == 1
               for answers in copies.values()), "each outcome copied once"
    fold = ledger(settings)
    assert fold.accounts["sink"].balance == 100_000 + count
