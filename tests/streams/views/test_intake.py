"""The intake's outcome waiter reads transfers.outcomes only while someone waits (issue 42),
and a wait that starts its tail still gets an outcome written right after it (real broker,
the intake's principal reading, the engine's writing)."""
from __future__ import annotations

import asyncio

import orjson

from kbank.streams import kafka, topics
from kbank.streams.model import COMPLETED, outcome, outcome_key
from kbank.streams.partitioning import partition_for
from kbank.streams.views.intake import OutcomeWaiter


def _write_outcome(settings, producer, account: str, request_id: str) -> None:  # noqa: ANN001
    out = outcome(account, request_id, COMPLETED, 1)
    producer.produce(settings.topic(topics.OUTCOMES), orjson.dumps(out),
                     outcome_key(out).encode(), partition=partition_for(account, settings.partitions))
    assert producer.flush(30) == 0


def test_the_waiter_reads_only_while_someone_waits_and_misses_nothing(settings):
    producer = kafka.producer(settings, kafka.ENGINE)

    async def scenario() -> None:
        waiter = OutcomeWaiter(settings)
        waiter.IDLE_S = 0.5
        stopper = asyncio.ensure_future(waiter.stop_when_idle())
        try:
            assert not waiter.reading, "nobody waits yet: nothing is read"
            for round_ in (1, 2):
                key = outcome_key({"account": "alice", "request_id": f"r{round_}"})
                fut = await waiter.register(key)
                assert waiter.reading and waiter.starts == round_
                # written at once after the wait began: its tail must not start past it
                await asyncio.get_running_loop().run_in_executor(
                    None, _write_outcome, settings, producer, "alice", f"r{round_}")
                got = await asyncio.wait_for(fut, 30)
                assert got["request_id"] == f"r{round_}"
                waiter.forget(key, fut)
                for _ in range(200):          # idle: the tail stops
                    if not waiter.reading:
                        break
                    await asyncio.sleep(0.05)
                assert not waiter.reading, "the tail kept reading with nobody waiting"
        finally:
            stopper.cancel()

    asyncio.run(scenario())
