"""`bank replay as-of`: an account's balance and history at a point of the log."""
from __future__ import annotations

import orjson
from confluent_kafka import TopicPartition

from kbank.replay.ledger import LedgerFold
from kbank.streams import kafka, topics
from kbank.streams.client import read_to_end
from kbank.streams.config import Settings
from kbank.streams.partitioning import partition_for
from kbank.streams.views.queries import parse_time



def account_as_of(settings: Settings, account: str, offset: int | None = None,
                  time_ms: int | None = None) -> tuple[LedgerFold, int]:
    """Fold the account's ledger events up to (excluding) `offset` of its partition,
    or up to and including events with ts <= time_ms. Returns the fold and the partition."""
    topic = settings.topic(topics.LEDGER)
    consumer = kafka.consumer(settings, kafka.TOOLS, settings.topic("bank-reader-as-of"), **{"enable.partition.eof": True})
    try:
        count = len(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        partition = partition_for(account, count)
        fold = LedgerFold()
        key = account.encode()
        for msg in read_to_end(consumer, [TopicPartition(topic, partition, 0)]):
            if offset is not None and msg.offset() >= offset:
                continue
            if msg.key() != key:
                continue
            if time_ms is not None and orjson.loads(msg.value())["ts"] > time_ms:
                continue
            fold.apply(msg.value(), f"{topic}[{partition}]@{msg.offset()}")
        return fold, partition
    finally:
        consumer.close()


def main(settings: Settings, account: str, offset: int | None, time_text: str | None) -> int:
    time_ms = parse_time(time_text) if time_text else None
    fold, partition = account_as_of(settings, account, offset, time_ms)
    state = fold.accounts.get(account)
    point = f"offset {offset} of partition {partition}" if offset is not None else f"ts <= {time_ms}"
    if state is None:
        print(f"account {account}: no events as of {point}")
        return 1
    print(f"account {account} as of {point}: balance {state.balance}, seq {state.seq}")
    for raw in reversed(state.events):
        ev = orjson.loads(raw)
        extra = f" reason={ev['reason']}" if "reason" in ev else ""
        print(f"  seq {ev['seq']:>6}  {ev['kind']:<9} {ev['amount']:>12}  balance {ev['balance']:>12}"
              f"  {ev.get('counterparty') or '':<12} {ev['request_id']}{extra}")
    for violation in fold.violations:
        print(f"  violation: {violation}")
    return 0
