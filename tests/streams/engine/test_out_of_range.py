"""An engine input whose broker no longer holds the worker's position is never skipped past
nor read again from its first record: the worker asks again for a while (the old leader of a
partition, cut from the controller, answers "out of range" until the client learns of its
successor) and then halts with one line.

The position is taken away on the secured broker as retention would: requests the engine has
not read yet, sent while no worker runs, deleted (delete_records), then more sent. The
negative control (BANK_UNSAFE_RESET_TO_EARLIEST, librdkafka's auto.offset.reset=earliest as the
engine had it) jumps to the log's new start and decides the later requests as if the deleted
ones had never been sent; past the log's end, the same setting read every request again.
"""
from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from kbank.streams import kafka, topics
from kbank.streams.engine.failures import LostPositions
from kbank.streams.health import HALTED_EXIT_CODE, read_crashes
from tests.workload import Workload, log_count, wait_until

PATIENCE = {"BANK_ENGINE_OUT_OF_RANGE_S": "3"}


def _delete_what_is_there(settings) -> None:  # noqa: ANN001 - Settings
    """Delete every record of every requests partition, as retention would."""
    name = settings.topic(topics.REQUESTS)
    admin = AdminClient(kafka.client_config(settings, kafka.ADMIN))
    reader = kafka.consumer(settings, kafka.ADMIN, settings.topic("bank-reader"))
    try:
        parts = reader.list_topics(name, timeout=30).topics[name].partitions
        ends = [TopicPartition(name, p, reader.get_watermark_offsets(
            TopicPartition(name, p), timeout=30)[1]) for p in parts]
    finally:
        reader.close()
    for future in admin.delete_records(ends).values():
        future.result(30)


@pytest.mark.parametrize("unsafe", [False, True], ids=["error", "unsafe-earliest"])
def test_an_input_whose_position_is_gone_halts_the_worker_rather_than_skip_it(
        unsafe, settings, pool_factory, tmp_path):
    pool = pool_factory(settings, 1)
    wl = Workload(settings)
    names = [f"r-{i}" for i in range(4)]
    log = tmp_path / "logs" / "worker-0.log"
    try:
        wl.open_accounts(names, 1_000)
        pool.stop("0")
        wl.random_transfers(names, 40, "gone", 50)
        wl.sender.flush()
        _delete_what_is_there(settings)
        later = len(wl.request_ids)
        wl.random_transfers(names, 40, "later", 50)
        wl.sender.flush()
        pool.start("0", {**PATIENCE, **({"BANK_UNSAFE_RESET_TO_EARLIEST": "true"} if unsafe else {})})
        if unsafe:   # the negative control: the later requests decided, the deleted ones skipped
            assert wl.watcher.wait(wl.request_ids[later:], 90), "the later requests decided"
            assert pool.procs["0"].poll() is None, "still running, as if nothing were missing"
            assert not any(wl.status(r) for r in wl.request_ids[8:later]), "deleted: no outcome"
            return
        wait_until(lambda: pool.procs["0"].poll() is not None, 90, "the worker to halt")
        assert pool.procs["0"].returncode == HALTED_EXIT_CODE, log.read_text()[-3000:]
        halt = read_crashes(settings.state_dir)["worker"]["0"]["halt"]
        assert "has no record at offset" in halt and settings.topic(topics.REQUESTS) in halt, halt
        assert log_count(log, "out of range") >= 2, "asked again before it halted"
        assert not any(wl.status(r) for r in wl.request_ids[8:]), "nothing decided past the gap"
    finally:
        wl.close()


def test_a_lost_position_is_asked_again_each_second_until_found_or_patience_ends():
    lost = LostPositions(patience_s=10, reseek_s=1)
    assert lost.lost("requests", 3, now=100.0) == 0
    assert lost.due(100.5) == [] and lost.due(101.0) == [("requests", 3)]
    assert lost.due(101.5) == [], "each once per reseek_s"
    assert lost.lost("requests", 3, now=105.0) == 5
    assert not lost.exhausted("requests", 3, 109.9) and lost.exhausted("requests", 3, 110.0)
    lost.found("requests", 3)
    assert not lost.exhausted("requests", 3, 200.0) and lost.due(200.0) == []
    lost.lost("credits", 1, now=0.0)
    lost.forget({1})
    assert lost.since == {} and lost.next_seek == {}
