"""End to end over the real broker: exact balances, histories and bad input."""
from __future__ import annotations

import random
from collections import Counter

import orjson

from kbank.streams.model import request_key
import pytest

from kbank.streams import topics
from kbank.streams.client import read_json, read_topic
from tests.workload import Workload, assert_invariants, ledger


def exact_histories(settings, expected: dict[str, int]) -> dict[str, list[dict]]:
    """Each account's ledger events, after checking its balance and its gap-free seqs."""
    fold = ledger(settings)
    assert {n: a.balance for n, a in fold.accounts.items()} == expected
    histories = {}
    for name in expected:
        events = [orjson.loads(raw) for raw in fold.accounts[name].events]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), name
        histories[name] = events
    return histories


@pytest.mark.parametrize("workers", [1, 2])
def test_transfers_across_partitions_give_exact_balances_and_histories(settings, pool_factory, workers):
    pool_factory(settings, workers)
    names = [f"user-{i}" for i in range(12)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 1_000)
        rng = random.Random(3)
        expected = {n: 1_000 for n in names}
        history = {n: Counter({("opened", 0, None): 1, ("deposited", 1_000, None): 1}) for n in names}
        for i in range(300):
            src, dst = rng.sample(names, 2)
            amount = rng.randint(1, 5)
            wl.send({"type": "transfer", "request_id": f"t{i}", "from": src, "to": dst, "amount": amount})
            expected[src] -= amount
            expected[dst] += amount
            history[src][("debited", amount, dst)] += 1
            history[dst][("credited", amount, src)] += 1
        wl.sender.flush()
        assert wl.wait(120), [(r, wl.watcher.status.get(r)) for r in wl.request_ids if r not in wl.watcher.final_ts][:10]
        assert all(wl.status(f"t{i}") == "completed" for i in range(300))
    finally:
        wl.close()
    histories = exact_histories(settings, expected)
    for name in names:
        events = histories[name]
        got = Counter((e["kind"], e["amount"], e["counterparty"]) for e in events)
        assert got == history[name], name
    partitions = {e["source"]["partition"] for events in histories.values() for e in events}
    assert len(partitions) >= 4, "the accounts should span several partitions"
    assert_invariants(settings, wl)


def test_bad_input_is_rejected_or_dead_lettered_and_the_worker_goes_on(settings, pool_factory):
    pool = pool_factory(settings, 1)
    wl = Workload(settings)
    try:
        wl.open_accounts(["alice", "bob"], 500)
        deep = b'{"type":"deposit","request_id":"b-deep","account":"alice","amount":' + b"[" * 50_000
        memo = b"m" * 500_000
        bad = [  # (key, value, the request_id it carries if one can be read, expected outcome)
            (b"alice", b"{not json", None, "dead"),
            (b"alice", b"\xff\xfe\x00garbage", None, "dead"),
            (b"alice", b'["a", "list"]', None, "dead"),
            (None, b'{"type": "deposit", "account": "alice", "amount": 5}', None, "dead"),
            (b"alice", deep + b"]" * 50_000 + b"}", None, "dead"),             # nested past any parser
            (b"alice", b'{"type":"deposit","request_id":"' + b"r" * 5000 + b'","account":"alice","amount":5}',
             None, "dead"),                                                  # request_id beyond 128
            (b"alice", b'{"type":"deposit","request_id":"b\xff","account":"alice","amount":5}', None, "dead"),
            (b"alice", b'{"type":"deposit","request_id":"b1","account":"alice","amount":-5}', "b1", "invalid"),
            (b"alice", b'{"type":"deposit","request_id":"b2","account":"alice","amount":99999999999999999999999}',
             "b2", "invalid"),
            (b"alice", b'{"type":"deposit","request_id":"b3","account":"alice","amount":"7"}', "b3", "invalid"),
            (b"alice", b'{"type":"deposit","request_id":"b4","account":"alice","amount":5,"x":1}', "b4", "invalid"),
            (b"bob", b'{"type":"deposit","request_id":"b5","account":"alice","amount":5}', "b5", "invalid"),
            (None, b'{"type":"deposit","request_id":"b6","account":"alice","amount":5}', "b6", "invalid"),
            (b"alice", b'{"type":"transfer","request_id":"b7","from":"alice","to":"alice","amount":5}', "b7",
             "invalid"),
            (b"alice", b'{"type":"transfer","request_id":"b8","from":"alice","to":"bob","amount":501}', "b8",
             "insufficient_funds"),
            (b"zed", b'{"type":"withdraw","request_id":"b9","account":"zed","amount":1}', "b9", "unknown_account"),
            (b"alice", b'{"type":"transfer","request_id":"b10","from":"alice","to":"nobody","amount":5}', "b10",
             "unknown_account"),
            (b"alice", b'{"type":"deposit","request_id":"b11","account":"alice","amount":5,"memo":"' + memo + b'"}',
             "b11", "invalid"),                                              # a 500 kB record
            (b"alice", b'{"type":"deposit","request_id":"b12","account":"alice","amount":1e3}', "b12", "invalid"),
            (b"alice", b'{"type":"deposit","request_id":"b13","account":"alice","amount":true}', "b13", "invalid"),
            # lone UTF-16 surrogates: valid JSON escapes that no output could encode (poison pills)
            (b"alice", b'{"type":"deposit","request_id":"x","account":"\\ud800","amount":5}', None, "dead"),
            (b"alice", b'{"type":"deposit","request_id":"\\udfff","account":"alice","amount":5}', None, "dead"),
            (b"alice", b'{"type":"transfer","request_id":"s1","from":"alice","to":"\\ud800","amount":5}',
             None, "dead"),
            (b"alice", b'{"type":"deposit","request_id":"s2","account":"alice","amount":5,"\\ud800":1}',
             None, "dead"),
        ]
        for key, value, _, _ in bad:
            wl.sender.send_raw(key, value)
        expected = {rid: want for _, _, rid, want in bad if rid is not None}
        wl.request_ids += [key for _, _, key, _ in ((k, v, _scoped(k, v), w) for k, v, r, w in bad)
                           if key is not None]
        wl.send({"type": "transfer", "request_id": "good", "from": "alice", "to": "bob", "amount": 100})
        wl.sender.flush()
        assert wl.wait(60)
    finally:
        wl.close()
    outcomes = {o["request_id"]: o for o in read_json(settings, topics.OUTCOMES)}
    for rid, reason in expected.items():
        assert outcomes[rid]["status"] == "rejected" and outcomes[rid]["reason"] == reason, rid
    assert outcomes["good"]["status"] == "completed"
    dead = list(read_json(settings, topics.DEADLETTER))
    assert len(dead) == sum(want == "dead" for *_, want in bad) and all(d["error"] for d in dead)
    fold = ledger(settings)
    # 500 + 500 deposited; the refund of b10 returned alice's 5; good moved 100
    assert fold.accounts["alice"].balance == 400 and fold.accounts["bob"].balance == 600
    assert pool.procs["0"].poll() is None, "the worker must still be running"
    assert_invariants(settings, wl)


def test_records_on_the_wrong_partition_are_forwarded_to_their_accounts_partition(settings, pool_factory,
                                                                                  tmp_path):
    """Clients with librdkafka's default partitioner (consistent_random) or a hand-picked
    partition: every account still has one state, one seq chain, exact balances."""
    from confluent_kafka import Producer

    from kbank.streams.kafka import OPERATOR, client_config
    from kbank.streams.partitioning import partition_for

    pool_factory(settings, 2)
    names = [f"p-{i}" for i in range(6)]
    wl = Workload(settings)
    topic = settings.topic(topics.REQUESTS)
    default_client = Producer(client_config(settings, OPERATOR))      # librdkafka's consistent_random
    expected = {n: 0 for n in names}
    try:
        # (records sent to different partitions have no order between them: the opens first)
        for step in ("open", "deposit"):
            for i, name in enumerate(names):
                if step == "open":
                    req = {"type": "open_account", "request_id": f"o-{name}", "account": name}
                    kwargs = {"partition": (partition_for(name, settings.partitions) + 1 + i)
                              % settings.partitions}          # hand-picked, wrong
                else:
                    req = {"type": "deposit", "request_id": f"d-{name}", "account": name, "amount": 1_000}
                    kwargs = {}                               # librdkafka's default partitioner
                    expected[name] += 1_000
                    wl.deposits += 1_000
                default_client.produce(topic, key=name.encode(), value=orjson.dumps(req), **kwargs)
                wl.request_ids.append(request_key(name, req["request_id"]))
            default_client.flush(30)
            assert wl.wait(60)
        rng = random.Random(4)
        for i in range(60):
            src, dst = rng.sample(names, 2)
            req = {"type": "transfer", "request_id": f"w{i}", "from": src, "to": dst, "amount": 7}
            # a hand-picked wrong partition for every other one
            part = (partition_for(src, settings.partitions) + 3) % settings.partitions if i % 2 else None
            default_client.produce(topic, key=src.encode(), value=orjson.dumps(req),
                                   **({"partition": part} if part is not None else {}))
            wl.request_ids.append(request_key(src, req["request_id"]))
            expected[src] -= 7
            expected[dst] += 7
        default_client.flush(30)
        assert wl.wait(60)
    finally:
        wl.close()
    # the clients' topic holds only what they wrote (forwards go to the engine's own topic),
    # and each event's source is the record the client wrote, wherever it put it
    written = {(m.partition(), m.offset()): orjson.loads(m.value())["request_id"]
               for m in read_topic(settings, settings.topic(topics.REQUESTS))}
    assert len(written) == len(wl.request_ids)
    for name, events in exact_histories(settings, expected).items():
        for e in events:
            if e["source"]["topic"] == settings.topic(topics.REQUESTS):
                assert written[(e["source"]["partition"], e["source"]["offset"])] == e["request_id"]
    from kbank.replay.verify import fold_outcomes

    statuses = fold_outcomes(list(read_json(settings, topics.OUTCOMES)))
    assert len(statuses) == len(wl.request_ids) and set(statuses.values()) == {"completed"}
    assert_invariants(settings, wl)
    # recompute routes as the engine did: the same ledger, byte for byte, in one process and
    # in two (each forwarded request decided once, at its owner, with the same source)
    from kbank.replay.recompute import events_by_account, simulate, simulate_in_parallel
    from kbank.streams.decisions import Rules

    live = {}
    for m in read_topic(settings, settings.topic(topics.LEDGER)):
        live.setdefault(orjson.loads(m.value())["account"], []).append(m.value())
    rules = Rules.from_settings(settings, settings.partitions)
    assert events_by_account(simulate(settings, rules, settings.partitions,
                                      show_progress=False).events) == live
    assert events_by_account(simulate_in_parallel(settings, rules, settings.partitions,
                                                  2).events) == live


def _scoped(key: bytes | None, value: bytes) -> str | None:
    """The request key an outcome of this raw request has (None: dead-lettered, no outcome)."""
    from kbank.streams.decisions import Undecodable, parse_request

    try:
        req = parse_request(key, value)
    except Undecodable:
        return None
    return request_key(req.account or "", req.request_id)
