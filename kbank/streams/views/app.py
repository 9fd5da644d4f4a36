"""The views worker: a Faust app folding ledger.events and transfers.outcomes into one table.

One Faust table, `views` (RocksDB via rocksdict, one store per partition), holds every view,
told apart by a key prefix (see ViewKeys):
  accounts  account -> AccountView (balance, seq, limits)
  history   (account, seq) -> the ledger event, raw bytes
  totals    ledger partition -> PartitionTotals, whose `offset` is also how
            far that ledger partition has been folded
  status    request key -> furthest-along status (from transfers.outcomes,
            which is co-partitioned with the ledger by the deciding account)
  outcomes position  outcomes partition -> next offset to fold

The sources are the changelog (issue 42). The state is a function of ledger.events and
transfers.outcomes, both kept for ever, so nothing of it is copied to Kafka: a fold batch's
writes and the source positions they reach go to the partition's store in one RocksDB
write batch (kbank.streams.views.writes), and a worker resumes each source partition just
past what its own store has folded (ViewsApp.read_sources_from_table), never at the consumer
group's committed offsets. A worker that gets a partition it has no store for (a new
machine, or a store deleted) folds it from the start of the ledger; one that had it before
resumes from where its store stopped, and only reads what came since.

Faust keeps what it is good at: the group (which worker has which partitions), the web
server and the routing of a key to its owner. It has no changelog to replay and keeps no
standby: a failover is a fold of the sources, timed by `bank bench --views-failover`.

The app runs at_least_once and reads read_committed (ReadCommittedThread); the folds in
kbank.streams.views.fold make re-deliveries harmless.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable, Iterator

import faust
import orjson
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import ConsumerRebalanceListener
from faust.types import TP

from kbank.streams.books.recon import ReconShelf
from kbank.streams.books.shelf import ClosesShelf
from kbank.streams.files import private_dir
from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.generations import LIVE, live_generation, source_settings
from kbank.streams.kafka import client_config
from kbank.streams.keystore import KeyRing
from kbank.streams.views.credentials import faust_credentials
from kbank.streams.views.fold import AccountView, PartitionTotals, ranked_figure
from kbank.streams.views.queries import highest, parse_rank_value, top_ranked
from kbank.streams.views.metrics import LagUnavailable, ViewsMetrics
from kbank.streams.views.layout import ViewKeys, history_totals, split_history_value
from kbank.streams.views.processor import ViewsProcessor
from kbank.streams.views.store import STORE_URL, ViewsStore
from kbank.streams.runtime import quiet_gc
from kbank.streams.storage import StoreBudget
from kbank.streams.views.engine_watch import EngineWatch
from kbank.streams.views.rate import RateLimiter
from kbank.streams.views.usage import UsageShare
from kbank.streams.views.routes import register_routes
from kbank.streams.views.web import observe_middleware
from kbank.streams.views.sources import SourceReader

log = logging.getLogger("bank.views")
EXIT_FOLD_FAILED = 70    # the exit status of a worker whose fold raised (EX_SOFTWARE)

VIEWS_APP = "bank-views"
VIEWS_TABLE = "views"


class ReadCommittedThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, reading read_committed.

    Faust reads read_uncommitted unless the app itself is exactly_once; the
    views must not see the engine's aborted transactions (or a fenced
    zombie's writes), so they read committed records only.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"
        return consumer

    def verify_event_path(self, now: float, tp: TP) -> None:
        """Faust's check that every assigned partition is fetched and processed; the sources
        are paused here on purpose (the SourceReader reads them), so they are not checked."""
        if tp.topic not in self.app.source_topics:  # type: ignore[attr-defined]
            super().verify_event_path(now, tp)


class PauseSources(ConsumerRebalanceListener):
    """Pauses the source partitions in aiokafka as soon as they are assigned: their records
    are read by the SourceReader, and aiokafka fetching them too would decode each one in
    Python for nothing (Faust's own pause only stops handing them to agents)."""

    async def on_partitions_assigned(self, assigned: Any) -> None:
        sources = self._thread.app.source_topics  # type: ignore[attr-defined]
        self._thread._ensure_consumer().pause(*[tp for tp in assigned if tp.topic in sources])
        await super().on_partitions_assigned(assigned)


class SourcesPausedConsumer(AIOKafkaConsumer):
    """Faust's consumer, reading read_committed, with the source partitions paused."""

    RebalanceListener = PauseSources

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class ViewsApp(faust.App):
    """A Faust app whose source partitions are read by a SourceReader, started once the
    partitions are assigned and stopped, with the fold's writes flushed to the stores, before
    a revocation returns (so no batch is folded for a partition after it, and the store a
    worker keeps of it ends at a flush)."""

    source_topics: frozenset[str] = frozenset()
    sources: SourceReader | None = None        # set by ViewsWorker
    processor: ViewsProcessor | None = None    # set by ViewsWorker
    source_positions: Any = None   # set by ViewsWorker: assignment -> {(topic, p): offset}

    async def _on_partitions_revoked(self, revoked: Any) -> None:
        if self.sources is not None:
            self.sources.revoke()
        if self.processor is not None:
            self.processor.after_batch()   # into the stores before Faust closes them
        await super()._on_partitions_revoked(revoked)

    def _new_consumer(self) -> Any:
        transport = self.transport
        consumer = SourcesPausedConsumer(
            transport, callback=self.topics.on_message, loop=transport.loop,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned, beacon=self.beacon)
        self.on_rebalance_complete.connect(self.read_sources_from_table)
        return consumer

    async def read_sources_from_table(self, *_: Any, **__: Any) -> None:
        """Once the assignment is complete: read each assigned source partition from just
        past what the store has folded (never from the group's committed offsets)."""
        assert self.sources is not None
        self.sources.assign(self.source_positions(self.consumer.assignment()))


class ViewsWorker:
    """One views worker process: the table, agents and the web endpoint."""

    def __init__(self, settings: Settings, worker_id: str, web_port: int) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.web_port = web_port
        self.requests_topic = settings.topic(topics.REQUESTS)
        self.engine_watch = EngineWatch(settings)
        self._watching = False
        self.metrics = ViewsMetrics(self.lag, settings.state_dir,
                                    self.engine_watch.stalled_partitions)
        # every API key, tailed from auth.keys (none with BANK_UNSAFE_WEB_NO_AUTH: no checks)
        self.keys = None if settings.unsafe_web_no_auth else KeyRing(settings)
        # each key's rate, shared with the other views workers through views.usage
        self.limiter = RateLimiter(settings.web_rate_limit_per_s, settings.web_rate_burst)
        self.usage = UsageShare(settings, self.limiter)
        self.closes = ClosesShelf(settings)
        self.recon = ReconShelf(settings)
        self.generation = live_generation(settings, kafka.VIEWS, "bank-views-generation")
        source = source_settings(settings, self.generation)
        app_id = settings.topic(VIEWS_APP) + ("" if self.generation == LIVE else f"-gen-{self.generation}")
        datadir = os.path.join(settings.state_dir, f"views-{worker_id}")
        private_dir(datadir)      # kept across restarts: the stores resume from it
        self.app = ViewsApp(
            app_id,
            broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
            broker_credentials=faust_credentials(client_config(settings, kafka.VIEWS)),
            store=STORE_URL,
            datadir=datadir,
            processing_guarantee="at_least_once",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            consumer_auto_offset_reset="earliest",
            # no standby: there is no changelog to keep one warm (the sources are the changelog)
            table_standby_replicas=0,
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=0.5,
            broker_commit_interval=1.0,
            web_port=web_port, web_bind=settings.web_bind, web_host=settings.web_host,
            canonical_url=f"http://{settings.web_host}:{web_port}",
            web_application_options={"client_max_size": settings.web_max_body_bytes,
                                     "middlewares": [observe_middleware(self)]},
            # Faust's own pages (/router, /table, /graph, /stats, /performance) are not ours:
            # none is served, so every route is in openapi.yaml or kbank.streams.views.access
            web_router_enabled=False, web_tables_enabled=False, web_graph_enabled=False,
            web_stats_enabled=False, web_metrics_enabled=False,
            key_serializer="raw", value_serializer="raw",
            # every setting above is ours: Faust reads WEB_PORT, WEB_HOST, BROKER_URL and
            # dozens more from the environment over what it is given, so it gets none (a
            # WEB_PORT exported in a shell took every views worker to one port)
            env={},
        )
        self.app.source_positions = self.source_positions
        # the stores' options, bloom filters included (most reads of new requests miss)
        ViewsStore.budget = StoreBudget(settings.rocksdb_memory_mb)
        self.views = self.app.Table(VIEWS_TABLE, partitions=settings.partitions,
                                    key_type=bytes, value_type=bytes)
        self.processor = ViewsProcessor(lambda: self.views.data, self.requests_topic,
                                        settings.id_window_ms, self.metrics, self.read_ledger)
        self.app.processor = self.processor
        self.ledger_topic = self.app.topic(source.topic(topics.LEDGER), key_type=bytes,
                                           value_type=bytes, key_serializer="raw",
                                           value_serializer="raw")
        self.outcomes_topic = self.app.topic(source.topic(topics.OUTCOMES), key_type=bytes,
                                             value_type=bytes, key_serializer="raw",
                                             value_serializer="raw")
        ledger, outcomes = self.ledger_topic.get_topic_name(), self.outcomes_topic.get_topic_name()
        self.sources = SourceReader(
            kafka.consumer(settings, kafka.VIEWS, settings.topic("bank-views-sources"), **{
                "fetch.wait.max.ms": 100, "queued.min.messages": 100_000,
                "max.partition.fetch.bytes": 10 * 1024 * 1024,
                "enable.partition.eof": True}),   # where a source ends: SourceReader.lag
            ledger, outcomes, self.processor.fold_ledger, self.processor.fold_outcome,
            self.processor.after_batch, settings.fault_views_batch_delay_ms / 1000)
        self.app.source_topics = frozenset({ledger, outcomes})
        self.app.sources = self.sources
        self.app.agent(self.ledger_topic, name="apply-ledger")(self._subscription_only)
        self.app.agent(self.outcomes_topic, name="apply-outcomes")(self._subscription_only)
        self.app.task(self._fold_sources)
        self.app.timer(3.0)(self._watch_engine)
        self.app.timer(settings.web_rate_share_s)(self._share_usage)
        register_routes(self)

    # -- agents (Kafka plumbing only; decisions are in kbank.streams.views.fold) --

    async def _fold_sources(self) -> None:
        """The fold. If it fails, the worker exits at once, to be restarted: it must not go on
        answering from a table that has stopped moving (a bug is not bad input, and bad input
        never raises: it is counted and skipped)."""
        try:
            await self.sources.run()
        except Exception:
            log.critical("the views' fold failed; the worker exits", exc_info=True)
            logging.shutdown()
            os._exit(EXIT_FOLD_FAILED)

    async def _share_usage(self) -> None:
        self.usage.publish()

    async def _watch_engine(self) -> None:
        """Read the engine's offsets (off the event loop): /health tells a stalled engine. A
        reading that takes longer than the interval (a broker down) is not doubled."""
        import asyncio

        if self._watching:
            return
        self._watching = True
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.engine_watch.sample)
        finally:
            self._watching = False

    async def _subscription_only(self, stream: Any) -> None:
        """Faust assigns a worker the source partitions its agents subscribe to, and the
        table's partitions with them; the records are read by the SourceReader (aiokafka is
        paused on them), so anything delivered here is ignored."""
        async for _ in stream.events():
            pass

    def source_positions(self, assignment: Iterable[TP]) -> dict[tuple[str, int], int]:
        """Where each assigned source partition resumes: just past what the table has folded."""
        ledger, outcomes = self.ledger_topic.get_topic_name(), self.outcomes_topic.get_topic_name()
        self.processor.flush()            # nothing, if the revocation wrote it all
        self.processor.forget_decoded()   # another worker may have moved the partitions
        positions = {}
        for tp in assignment:
            if tp.topic == ledger:
                positions[(tp.topic, tp.partition)] = self.processor.ledger_position(tp.partition)
            elif tp.topic == outcomes:
                positions[(tp.topic, tp.partition)] = self.processor.outcomes_position(tp.partition)
        if self.settings.unsafe_views_resume_at_end:   # the negative control of the above
            from confluent_kafka import OFFSET_END

            positions = {tp: OFFSET_END for tp in positions}
        return positions

    def read_ledger(self, partition: int, start: int, end: int
                    ) -> Iterator[tuple[int, bytes | None]]:
        """The ledger records [start, end) of a partition, read straight from the log
        (read_committed): what the processor heals a gap with."""
        from confluent_kafka import TopicPartition

        from kbank.streams.client import BULK_READ

        topic = self.ledger_topic.get_topic_name()
        consumer = kafka.consumer(self.settings, kafka.VIEWS, self.settings.topic("bank-views-heal"),
                                  **BULK_READ)
        try:
            consumer.assign([TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + 60
            while start < end and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 1.0):
                    if msg.error() is not None or msg.offset() >= end:
                        return     # the end of the partition (EOF), an error, or `end`
                    yield msg.offset(), msg.value()
        finally:
            consumer.close()

    # -- reads used by the web endpoint --

    def account_view(self, account: str) -> AccountView | None:
        stored = self.views.get(ViewKeys.account(account))
        return AccountView.from_bytes(stored) if stored is not None else None

    def indexed_accounts(self, name: str, value: str, after: str, limit: int) -> list[str]:
        """Accounts (in name order, after `after`) of this worker's ledger partitions whose
        `name` (currency, or metadata.<key>) is `value`: a prefix scan of the index."""
        prefix = ViewKeys.index_prefix(name, value)
        found: list[str] = []
        for partition in self.ledger_partitions():
            found += [v.decode("utf-8", "surrogatepass") for v in self.views.data.scan(
                partition, prefix, after.encode("utf-8", "surrogatepass"), limit)]
        return sorted(found)[:limit]

    def top_accounts(self, ranking: str, group: str, limit: int,
                     budget: int) -> tuple[list[tuple[int, str]], bool]:
        """The `limit` accounts of this worker's ledger partitions highest in a ranking (their
        figure, account) and whether every partition's answer is complete (within budget)."""
        prefix = ViewKeys.rank_prefix(ranking, group)

        def figure_of(account: str, bucket: int, stored: int) -> int | None:
            return ranked_figure(self.account_view(account), ranking, group, bucket, stored)

        rows: list[tuple[int, str]] = []
        complete = True
        for partition in self.ledger_partitions():
            entries = map(parse_rank_value, self.views.data.values(partition, prefix))
            found, whole = top_ranked(entries, figure_of, limit, budget)
            rows += found
            complete &= whole
        return highest(rows, limit), complete

    def history_entry(self, account: str, seq: int) -> tuple[dict[str, Any], int | None] | None:
        """One history entry: the event and its ledger offset."""
        stored = self.views.get(ViewKeys.history(account, seq))
        if stored is None:
            return None
        offset, raw = split_history_value(stored)
        return orjson.loads(raw), offset

    def totals_after(self, account: str, seq: int) -> list[Any] | None:
        """The account's running totals after its event `seq` (seq 0: before any)."""
        if seq == 0:
            return [0, 0, {}]
        stored = self.views.get(ViewKeys.history(account, seq))
        return None if stored is None else history_totals(stored)

    def history_page(self, account: str, before_seq: int, limit: int) -> list[tuple[dict[str, Any], int | None]]:
        """Events with seq < before_seq, newest first, each with its ledger offset."""
        entries = (self.history_entry(account, seq)
                 for seq in range(before_seq - 1, max(0, before_seq - 1 - limit), -1))
        return [entry for entry in entries if entry is not None]

    @property
    def table_name(self) -> str:
        return self.views.name

    def ledger_partitions(self) -> list[int]:
        """The ledger partitions this worker owns now."""
        ledger = self.ledger_topic.get_topic_name()
        return sorted(tp.partition for tp in self.app.assignor.assigned_actives()
                      if tp.topic == ledger)

    def local_totals_by_partition(self) -> list[tuple[int, PartitionTotals]]:
        """Totals of the ledger partitions this worker owns."""
        return [(tp.partition, self.partition_totals(tp.partition))
                for tp in self.app.assignor.assigned_actives()
                if tp.topic == self.ledger_topic.get_topic_name()]

    def partition_totals(self, partition: int) -> PartitionTotals:
        """A partition's totals as the store holds them (as of the fold's last flush)."""
        stored = self.views.data.read(partition, ViewKeys.totals(partition))
        return PartitionTotals.from_bytes(stored) if stored is not None else PartitionTotals()

    def request_status(self, key: str) -> dict[str, Any] | None:
        """The status of a request, by its request key (model.request_key)."""
        stored = self.views.get(ViewKeys.status(key))
        return orjson.loads(stored) if stored is not None else None

    def lag(self) -> Iterable[tuple[str, int, int]]:
        """(topic, partition, records behind) for the source partitions this worker reads."""
        if self.app.rebalancing:
            raise LagUnavailable("partitions are moving between workers")
        return self.sources.lag()

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (Faust's worker handles the signals)."""
        from faust.worker import Worker

        worker = Worker(self.app, loglevel=self.settings.log_level)
        # Faust's terminal spinner sets the root logger to DEBUG, so every debug call of
        # aiokafka and Faust built a log record (5% of a busy worker's CPU): no spinner
        worker.spinner = None
        quiet_gc()   # as the engine: the views hold many long-lived objects too
        worker.execute_from_commandline()
