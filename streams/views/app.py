"""The views worker: a Faust app folding ledger.events and transfers.outcomes into tables.

Tables (RocksDB via rocksdict, each backed by a Faust changelog topic):
  accounts  account -> AccountView (balance, seq, limits)
  history   (account, seq) -> the ledger event, raw bytes
  totals    "p<partition>" -> PartitionTotals of that ledger partition
  status    request_id -> furthest-along status (from transfers.outcomes,
            which is keyed by request_id, so a status lives on the partition
            a router finds from the request_id alone)

Every table is partitioned like its source topic, so one worker owns every
view of an account and the router sends a query to that worker. The app
runs at_least_once (Faust's exactly_once cannot start on the embedded
broker); the folds in streams.views.fold make re-deliveries harmless.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable

import faust
import orjson
from faust.types import TP

from streams import topics
from streams.config import Settings
from streams.kafka import client_config
from streams.views.credentials import faust_credentials
from streams.views.fold import (AccountView, Applied, PartitionTotals, apply_to_account, classify,
                                history_key, merge_status)
from streams.views.metrics import ViewsMetrics

log = logging.getLogger("bank.views")

VIEWS_APP = "bank-views"


def _raw_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of raw bytes (the app's default serializers are raw; we encode with orjson)."""
    return app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes)


class ViewsWorker:
    """One views worker process: tables, agents and the web endpoint."""

    def __init__(self, settings: Settings, worker_id: str, web_port: int) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.web_port = web_port
        self.requests_topic = settings.topic(topics.REQUESTS)
        self.positions: dict[TP, int] = {}  # next offset to read, per source partition
        self.metrics = ViewsMetrics(self.lag)
        from streams.views.web import observe_middleware, register_routes

        from replay.generations import LIVE, live_generation, source_settings

        self.generation = live_generation(settings)
        source = source_settings(settings, self.generation)
        app_id = settings.topic(VIEWS_APP) + ("" if self.generation == LIVE else f"-gen-{self.generation}")
        datadir = os.path.join(settings.state_dir, f"views-{worker_id}")
        os.makedirs(datadir, exist_ok=True)
        self.app = faust.App(
            app_id,
            broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
            broker_credentials=faust_credentials(client_config(settings)),
            store="rocksdb://",
            datadir=datadir,
            processing_guarantee="at_least_once",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=0.5,
            broker_commit_interval=1.0,
            web_port=web_port, web_bind=settings.web_bind, web_host=settings.web_host,
            canonical_url=f"http://{settings.web_host}:{web_port}",
            web_application_options={"client_max_size": settings.web_max_body_bytes,
                                     "middlewares": [observe_middleware(self)]},
            key_serializer="raw", value_serializer="raw",
            **({"producer_max_batch_size": 1} if settings.one_record_per_batch else {}),
        )
        n = settings.partitions
        self.accounts = _raw_table(self.app, "accounts", n)
        self.history = _raw_table(self.app, "history", n)
        self.totals = _raw_table(self.app, "totals", n)
        self.status = _raw_table(self.app, "status", n)
        self.ledger_topic = self.app.topic(source.topic(topics.LEDGER), key_type=bytes,
                                           value_type=bytes, key_serializer="raw",
                                           value_serializer="raw")
        self.outcomes_topic = self.app.topic(source.topic(topics.OUTCOMES), key_type=bytes,
                                             value_type=bytes, key_serializer="raw",
                                             value_serializer="raw")
        self.app.agent(self.ledger_topic, name="apply-ledger")(self._ledger_agent)
        self.app.agent(self.outcomes_topic, name="apply-outcomes")(self._outcomes_agent)
        register_routes(self)

    # -- agents (Kafka plumbing only; decisions are in streams.views.fold) --

    async def _ledger_agent(self, stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            self.apply_ledger_record(msg.partition, msg.offset, event.value)
            self.positions[msg.tp] = msg.offset + 1

    async def _outcomes_agent(self, stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            self.apply_outcome_record(event.value)
            self.positions[msg.tp] = msg.offset + 1

    def apply_ledger_record(self, partition: int, offset: int, raw: bytes | None) -> None:
        try:
            event = orjson.loads(raw or b"")
            account, seq = event["account"], event["seq"]
            key = account.encode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.error("malformed ledger event at %s@%d", partition, offset)
            self.metrics.ledger_events.labels("malformed").inc()
            return
        stored = self.accounts.get(key)
        view = AccountView.from_bytes(stored) if stored is not None else None
        verdict = classify(view, seq, offset)
        self.metrics.ledger_events.labels(verdict.value).inc()
        if verdict is Applied.DUPLICATE:
            return
        if verdict is Applied.GAP:
            log.error("ledger gap for %s: have seq %s, got %s at %d@%d",
                      account, view.seq if view else 0, seq, partition, offset)
            return
        self.history[history_key(account, seq)] = raw
        if verdict is Applied.NEW:
            self.accounts[key] = apply_to_account(view, event, offset).to_bytes()
        tkey = f"p{partition}".encode()
        stored_totals = self.totals.get(tkey)
        totals = PartitionTotals.from_bytes(stored_totals) if stored_totals else PartitionTotals()
        if totals.count(event, offset, self.requests_topic):
            self.totals[tkey] = totals.to_bytes()

    def apply_outcome_record(self, raw: bytes | None) -> None:
        self.metrics.outcomes.inc()
        try:
            out = orjson.loads(raw or b"")
            key = out["request_id"].encode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return
        stored = self.status.get(key)
        new = merge_status(orjson.loads(stored) if stored is not None else None, out)
        if new is not None:
            self.status[key] = orjson.dumps(new)

    # -- reads used by the web endpoint --

    def account_view(self, account: str) -> AccountView | None:
        stored = self.accounts.get(account.encode())
        return AccountView.from_bytes(stored) if stored is not None else None

    def history_page(self, account: str, before_seq: int, limit: int) -> list[dict[str, Any]]:
        """Events with seq < before_seq, newest first."""
        out = []
        for seq in range(before_seq - 1, max(0, before_seq - 1 - limit), -1):
            raw = self.history.get(history_key(account, seq))
            if raw is not None:
                out.append(orjson.loads(raw))
        return out

    def local_totals_by_partition(self) -> list[tuple[int, PartitionTotals]]:
        """Totals of the ledger partitions this worker owns."""
        parts = []
        for tp in self.app.assignor.assigned_actives():
            if tp.topic == self.ledger_topic.get_topic_name():
                stored = self.totals.get(f"p{tp.partition}".encode())
                parts.append((tp.partition,
                              PartitionTotals.from_bytes(stored) if stored else PartitionTotals()))
        return parts

    def lag(self) -> Iterable[tuple[str, int, int]]:
        """(topic, partition, records behind) for the source partitions this worker reads."""
        sources = {self.ledger_topic.get_topic_name(), self.outcomes_topic.get_topic_name()}
        try:
            consumer = self.app.consumer
            assigned = [tp for tp in consumer.assignment() if tp.topic in sources]
        except Exception:  # noqa: BLE001 - not started or rebalancing: no figures
            return []
        rows = []
        for tp in assigned:
            high = consumer.highwater(tp)
            if high is None or high < 0:
                continue
            pos = self.positions.get(tp)
            if pos is None:  # nothing read since start: from the last committed position
                pos = consumer._committed_offset.get(tp) or 0
            rows.append((tp.topic, tp.partition, max(0, high - pos)))
        return rows

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (Faust's worker handles the signals)."""
        from faust.worker import Worker

        Worker(self.app, loglevel="WARNING").execute_from_commandline()
