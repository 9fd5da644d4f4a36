"""ChangelogRestore on the real broker: a restore advances in bounded steps (the poll loop calls
it between batches, outside the rebalance callback), and is done only once the store reflects
the group's committed offsets."""
from __future__ import annotations

import orjson
import pytest

from kbank.streams import kafka, topics
from kbank.streams.engine.changelog import BatchRecord, account_key
from kbank.streams.engine.task import PartitionTask
from kbank.streams.engine.restore import ChangelogRestore
from kbank.streams.engine.state import PartitionStore
from kbank.streams.model import Account
from kbank.streams.storage import StoreBudget


def _write(settings, records: list[tuple[bytes, bytes]]) -> None:  # noqa: ANN001
    producer = kafka.producer(settings, kafka.ADMIN)
    for key, value in records:
        producer.produce(settings.topic(topics.CHANGELOG), key=key, value=value, partition=0)
    assert producer.flush(30) == 0


def test_a_restore_goes_in_bounded_steps_until_the_committed_offsets_are_reflected(settings, tmp_path):
    accounts = [(account_key(f"acct-{i}"), orjson.dumps(Account(balance=i, seq=1).to_json()))
                for i in range(1_000)]
    first = BatchRecord((0, 0), (0, 1_000), {"r:x": "fp completed "})
    _write(settings, accounts + [(first.key, first.encode())])
    task = PartitionTask(0, PartitionStore(str(tmp_path / "p0"), StoreBudget(64)), next_request=1_500)
    restorer = kafka.consumer(settings, kafka.ADMIN, settings.topic("restore-test"), **{"enable.partition.eof": True})
    applied: list[int] = []
    restore = ChangelogRestore(restorer, settings.topic(topics.CHANGELOG), progress=applied.append)
    restore.add([task])
    steps = 0
    while sum(applied) < 1_001:
        assert restore.step(max_records=100) == []   # committed offsets not reflected yet
        steps += 1
        assert steps < 500, applied
    assert max(applied) <= 100 and len(applied) >= 10, applied
    for _ in range(20):   # at the changelog's end, still behind the committed offsets: waits
        assert restore.step(max_records=100) == []
    assert restore.active and task.store.position == (0, 1_000)
    second = BatchRecord((0, 0), (1_000, 1_500), {})
    _write(settings, [(account_key("acct-7"), orjson.dumps(Account(balance=70, seq=2).to_json())),
                      (second.key, second.encode())])
    done: list[PartitionTask] = []
    while not done:
        done = restore.step(max_records=100)
    assert done == [task] and not restore.active
    store = task.store
    assert store.position == (0, 1_500) and store.changelog_offset == 1_003
    assert (store.account("acct-7").balance, store.account("acct-999").balance) == (70, 999)
    assert store.applied("r:x") == "fp completed "
    restorer.close()
    store.close()


class _Eof:
    """A partition-EOF event as confluent-kafka delivers one (the consumer's own report)."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self):  # noqa: ANN201 - a KafkaError
        from confluent_kafka import KafkaError
        return KafkaError(KafkaError._PARTITION_EOF)


class _Record:
    """A changelog record as confluent-kafka delivers one."""

    def __init__(self, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self._partition, self._offset, self._key, self._value = partition, offset, key, value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


class _ScriptedRestorer:
    """Hands out one scripted fetch: the events a slow link delivered together."""

    def __init__(self, fetch: list) -> None:  # noqa: ANN001
        self.fetch = fetch

    def consume(self, _max: int, _wait: float) -> list:
        fetch = self.fetch.pop(0) if self.fetch and isinstance(self.fetch[0], list) else self.fetch
        if fetch is self.fetch:
            self.fetch = []
        return fetch

    def incremental_assign(self, _partitions) -> None:  # noqa: ANN001
        pass

    def incremental_unassign(self, _partitions) -> None:  # noqa: ANN001
        pass


def test_a_fetch_that_ends_a_partition_twice_finishes_its_restore_once(tmp_path):
    """Seen across hosts (bank chaos --hosts): one consume() held two partition-EOF events of
    one partition; the restore marked it done twice and the worker died on a KeyError."""
    task = PartitionTask(6, PartitionStore(str(tmp_path / "p6"), StoreBudget(64)))
    restore = ChangelogRestore(_ScriptedRestorer([_Eof(6, 0), _Eof(6, 0)]), "changelog")
    restore.add([task])
    assert restore.step() == [task] and not restore.active
    task.store.close()


def _account(balance: int, seq: int) -> bytes:
    return orjson.dumps(Account(balance=balance, seq=seq).to_json())


def test_a_fetch_started_over_below_the_store_applies_nothing_old_and_waits_for_the_end(tmp_path):
    """Seen across hosts (bank chaos --hosts, a leader isolated): a replica that had lost its
    leadership answered the restore's offset "out of range", the consumer started the
    partition over from the beginning, and the restore applied older accounts over the store
    and ended at that replica's end, before the store's own: a hold's expiry then found the
    account's `held` short (the engine's invariant check stopped it)."""
    store = PartitionStore(str(tmp_path / "p5"), StoreBudget(64))
    store.apply_changelog([(account_key("acct-7"), _account(70, 2))], 10)
    task = PartitionTask(5, store)
    restore = ChangelogRestore(_ScriptedRestorer([
        [_Record(5, 3, account_key("acct-7"), _account(7, 1)), _Eof(5, 5)],     # started over
        [_Record(5, 10, account_key("acct-7"), _account(80, 3)), _Eof(5, 11)],  # the real end
    ]), "changelog")
    restore.add([task])
    assert restore.step() == [] and restore.active
    assert store.account("acct-7").balance == 70 and store.changelog_offset == 10
    assert restore.step() == [task]
    assert store.account("acct-7").balance == 80 and store.changelog_offset == 11
    store.close()


def test_changelog_records_applied_over_a_newer_store_are_refused(tmp_path):
    store = PartitionStore(str(tmp_path / "p5"), StoreBudget(64))
    store.apply_changelog([(account_key("acct-7"), _account(70, 2))], 10)
    with pytest.raises(AssertionError):
        store.apply_changelog([(account_key("acct-7"), _account(7, 1))], 5)
    store.close()
