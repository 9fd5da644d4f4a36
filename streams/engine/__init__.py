"""The transfer engine: Kafka plumbing around streams.decisions, split as Kafka Streams
splits a task: worker (poll loop, rebalances), processor (records -> decisions ->
outputs), transaction (the one owner of begin/commit/abort), state and restore
(RocksDB stores and their recovery from the changelog), faults (test seams)."""
from streams.engine.worker import EngineWorker

__all__ = ["EngineWorker"]
