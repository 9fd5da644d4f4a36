"""BatchProcessor without a broker: what a poison record and a failed output each do.

The outputs go to a recording stand-in for EngineTransaction: these tests are about
the processor's own choices (dead-letter the record, or abort the batch), not about
Kafka; the guarantees are tested end to end on the real broker."""
from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Message

from kbank.streams.config import Settings
from kbank.streams.engine.processor import BatchProcessor, Topics
from kbank.streams.engine.task import PartitionTask
from kbank.streams.engine.state import PartitionStore
from kbank.streams.engine.transaction import TransactionAborted
from kbank.streams.partitioning import partition_for
from kbank.streams.storage import StoreBudget

TOPICS = Topics("req", "cred", "ledger", "out", "dead", "changelog", "batches")


class RecordingOutput:
    def __init__(self, fail_on: str | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []
        self.fail_on = fail_on

    def send(self, topic, key, value, partition=None, timestamp=None, on_delivery=None, headers=None):  # noqa: ANN001
        if topic == self.fail_on:
            raise TransactionAborted("the transaction is in an error state")
        self.sent.append((topic, key, value, partition))


def _request(partition: int, offset: int, key: bytes, body: bytes) -> Message:
    return Message(topic="req", partition=partition, offset=offset, key=key, value=body,
                   timestamp=(1, 1_700_000_000_000))


@pytest.fixture
def task(tmp_path):
    store = PartitionStore(str(tmp_path / "p"), StoreBudget(64))
    yield PartitionTask(partition_for("alice", 8), store)
    store.close()


def test_a_bug_in_the_rules_is_not_dead_lettered_but_raised_with_the_record_named(task, monkeypatch):
    """A bug is not bad input: it must stop the batch (and the worker) loudly, never turn a
    request into a silent dead letter."""
    out = RecordingOutput()
    processor = BatchProcessor(Settings(), TOPICS, 8, out)  # type: ignore[arg-type]
    p = task.partition
    import kbank.streams.engine.apply as module

    real = module.decide_request

    def explode_on_bad(req, *args):  # noqa: ANN001
        if req.request_id == "bad":
            raise RuntimeError("a bug")
        return real(req, *args)
    monkeypatch.setattr(module, "decide_request", explode_on_bad)
    with pytest.raises(RuntimeError, match="a bug") as raised:
        processor.run(task, [], [
            _request(p, 0, b"alice", orjson.dumps({"type": "open_account", "request_id": "ok", "account": "alice"})),
            _request(p, 1, b"alice", orjson.dumps({"type": "open_account", "request_id": "bad", "account": "alice"})),
        ])
    assert f"while deciding req[{p}]@1" in raised.value.__notes__
    assert processor.stats.deadletters == 0 and not any(t == "dead" for t, *_ in out.sent)


def test_bad_input_is_dead_lettered_bounded_and_the_batch_goes_on(task):
    out = RecordingOutput()
    processor = BatchProcessor(Settings(), TOPICS, 8, out)  # type: ignore[arg-type]
    p = task.partition
    huge = b"x" * 500_000
    processor.run(task, [Message(topic="cred", partition=p, offset=0, key=b"alice", value=huge,
                                 timestamp=(1, 1_700_000_000_000))], [
        _request(p, 0, b"alice", b"not json" + huge),
        _request(p, 1, b"alice", orjson.dumps({"type": "open_account", "request_id": "ok", "account": "alice"})),
    ])
    dead = [orjson.loads(v) for t, _, v, _ in out.sent if t == "dead"]
    assert len(dead) == 2 and all(d["truncated"] and d["value_bytes"] >= 500_000 for d in dead)
    assert all(len(v) < 8_192 for t, _, v, _ in out.sent if t == "dead")
    assert any(t == "ledger" for t, *_ in out.sent), "the next record was still decided"


def test_a_failed_output_aborts_the_batch_instead_of_dead_lettering(task):
    processor = BatchProcessor(Settings(), TOPICS, 8, RecordingOutput(fail_on="ledger"))  # type: ignore[arg-type]
    with pytest.raises(TransactionAborted):
        processor.run(task, [], [_request(task.partition, 0, b"alice", orjson.dumps(
            {"type": "open_account", "request_id": "o", "account": "alice"}))])
    assert processor.stats.deadletters == 0


def test_a_record_on_another_partition_is_forwarded_unchanged(task):
    out = RecordingOutput()
    processor = BatchProcessor(Settings(), TOPICS, 8, out)  # type: ignore[arg-type]
    owner = task.partition
    task.partition = (owner + 1) % 8    # the task of a partition alice's key does not map to
    body = orjson.dumps({"type": "open_account", "request_id": "o", "account": "alice"})
    processor.run(task, [], [_request(task.partition, 7, b"alice", body)])
    assert [(t, k, v, part) for t, k, v, part in out.sent if t == "req"] == [("req", b"alice", body, owner)]
    assert not any(t == "ledger" for t, *_ in out.sent)
