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
        self.headers: list[list[tuple[str, bytes]] | None] = []   # of each record sent
        self.fail_on = fail_on

    def send(self, topic, key, value, partition=None, timestamp=None, on_delivery=None, headers=None):  # noqa: ANN001
        if topic == self.fail_on:
            raise TransactionAborted("the transaction is in an error state")
        self.sent.append((topic, key, value, partition))
        self.headers.append(headers)

    def record_delivery(self, err, msg) -> None:  # noqa: ANN001 - never called: nothing is delivered
        raise AssertionError("no delivery reports here")


def _request(partition: int, offset: int, key: bytes, body: bytes) -> Message:
    return Message(topic="req", partition=partition, offset=offset, key=key, value=body,
                   timestamp=(1, 1_700_000_000_000))


@pytest.fixture
def here(tmp_path) -> Settings:
    """Settings whose state directory is the test's own: the processor counts a failing
    record's failures there (kbank.streams.engine.poison), and they must not outlive it."""
    return Settings(state_dir=str(tmp_path / "state"))


@pytest.fixture
def task(tmp_path):
    store = PartitionStore(str(tmp_path / "p"), StoreBudget(64))
    yield PartitionTask(partition_for("alice", 8), store)
    store.close()


def test_a_bug_in_the_rules_is_not_dead_lettered_but_raised_with_the_record_named(here, task, monkeypatch):
    """A bug is not bad input: it must stop the batch (and the worker) loudly, never turn a
    request into a silent dead letter."""
    out = RecordingOutput()
    processor = BatchProcessor(here, TOPICS, 8, out)  # type: ignore[arg-type]
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
    assert raised.value.__notes__[0].startswith(f"while deciding req[{p}]@1 ")
    assert processor.stats.deadletters == 0 and not any(t == "dead" for t, *_ in out.sent)


def test_bad_input_is_dead_lettered_bounded_and_the_batch_goes_on(here, task):
    out = RecordingOutput()
    processor = BatchProcessor(here, TOPICS, 8, out)  # type: ignore[arg-type]
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


def test_a_failed_output_aborts_the_batch_instead_of_dead_lettering(here, task):
    processor = BatchProcessor(here, TOPICS, 8, RecordingOutput(fail_on="ledger"))  # type: ignore[arg-type]
    with pytest.raises(TransactionAborted):
        processor.run(task, [], [_request(task.partition, 0, b"alice", orjson.dumps(
            {"type": "open_account", "request_id": "o", "account": "alice"}))])
    assert processor.stats.deadletters == 0


def test_a_record_on_another_partition_is_forwarded_unchanged(here, task):
    out = RecordingOutput()
    processor = BatchProcessor(here, TOPICS, 8, out)  # type: ignore[arg-type]
    owner = task.partition
    task.partition = (owner + 1) % 8    # the task of a partition alice's key does not map to
    body = orjson.dumps({"type": "open_account", "request_id": "o", "account": "alice"})
    misrouted = task.partition
    processor.run(task, [], [_request(misrouted, 7, b"alice", body)])
    # to the engine's own topic (never the clients'), on the owner's partition, saying whence
    forwards = [(i, rec) for i, rec in enumerate(out.sent) if rec[0] == "cred"]
    assert [rec for _, rec in forwards] == [("cred", b"alice", body, owner)]
    assert out.headers[forwards[0][0]] == [("bank-forwarded-from", f"req/{misrouted}/7".encode())]
    assert not any(t in ("ledger", "req") for t, *_ in out.sent)
    # the owner decides it with the client's record as its source
    task.partition = owner
    decided = RecordingOutput()
    forwarded = Message(topic="cred", partition=owner, offset=3, key=b"alice", value=body,
                        headers=out.headers[forwards[0][0]], timestamp=(1, 1_700_000_000_000))
    BatchProcessor(here, TOPICS, 8, decided).run(task, [forwarded], [])  # type: ignore[arg-type]
    events = [orjson.loads(v) for t, _, v, _ in decided.sent if t == "ledger"]
    assert [(e["kind"], e["source"]) for e in events] == [
        ("opened", {"topic": "req", "partition": misrouted, "offset": 7})]


def test_a_forwarded_request_with_a_malformed_header_is_dead_lettered(here, task):
    out = RecordingOutput()
    body = orjson.dumps({"type": "open_account", "request_id": "o", "account": "alice"})
    forged = Message(topic="cred", partition=task.partition, offset=3, key=b"alice", value=body,
                     headers=[("bank-forwarded-from", b"req/x/7")],
                     timestamp=(1, 1_700_000_000_000))
    BatchProcessor(here, TOPICS, 8, out).run(task, [forged], [])  # type: ignore[arg-type]
    assert [t for t, *_ in out.sent if t in ("ledger", "dead")] == ["dead"]
