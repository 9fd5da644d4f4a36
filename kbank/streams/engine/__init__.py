"""The transfer engine: Kafka plumbing around kbank.streams.decisions, split as Kafka Streams
splits a task: worker (poll loop, rebalances), task (one owned partition), processor
(records -> decisions -> outputs, through apply), transaction (the one owner of
begin/commit/abort), state and restore (RocksDB stores and their recovery from the
changelog), routing (requests on another key's partition), faults (test seams).

Tools (replay, bench) use the names exported here and nothing deeper."""
from kbank.streams.engine.apply import (MemoryState, credit_decision, record, request_decision,
                                        stamp)
from kbank.streams.engine.changelog import BATCH_PREFIX, BatchRecord, account_key
from kbank.streams.engine.failures import WorkerHalted, error_of
from kbank.streams.engine.processor import BatchProcessor, Topics
from kbank.streams.engine.restore import ChangelogRestore
from kbank.streams.engine.routing import forwarded_from, is_misrouted
from kbank.streams.engine.state import PartitionStore
from kbank.streams.engine.task import PartitionTask
from kbank.streams.engine.worker import EngineWorker

__all__ = ["BATCH_PREFIX", "BatchProcessor", "BatchRecord", "ChangelogRestore", "EngineWorker",
           "MemoryState", "PartitionStore", "PartitionTask", "Topics", "WorkerHalted",
           "account_key", "credit_decision", "error_of", "forwarded_from", "is_misrouted", "record",
           "request_decision", "stamp"]
