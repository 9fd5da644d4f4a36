"""`bank bench --webhook-events N`: deliveries per second from a webhook worker to a local
receiver.

N/2 accounts are opened and funded (N ledger events) while no webhook worker runs; one
webhook wanting every event is registered; then one webhook worker is started. The rate is
N over the time from the first to the last distinct event the receiver (an aiohttp server
in this process, answering 200 at once) got; the worker's CPU per delivery is reported too.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

from aiohttp import web

from kbank.bench.driver import fresh_deployment, opened_by_engine
from kbank.bench.procs import cpu_by_kind
from kbank.streams import kafka, topics
from kbank.streams.broker import free_port
from kbank.streams.config import Settings
from kbank.streams.progress import wait_with_progress
from kbank.streams.supervisor import WorkerPool
from kbank.streams.webhooks.rules import EVENT_ID_HEADER, new_webhook


class Receiver:
    """Counts distinct event ids and when the first and the last new one arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.ids: set[str] = set()
        self.calls = 0
        self.first = self.last = 0.0
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    async def _receive(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        ev_id = request.headers[EVENT_ID_HEADER]
        if ev_id not in self.ids:
            self.ids.add(ev_id)
            self.last = time.monotonic()
            self.first = self.first or self.last
        return web.Response(status=200)

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        ready.set()
        loop.run_forever()


def delivery_speed(settings: Settings, events: int, concurrency: int = 64) -> dict[str, object]:
    receiver = Receiver()
    settings = replace(fresh_deployment(settings, "webhooks"),
                       webhook_allowed_hosts=f"127.0.0.1:{receiver.port}",
                       webhook_concurrency=concurrency)
    accounts = max(1, events // 2)
    opened_by_engine(settings, accounts, deposit=1_000)
    hook = new_webhook({"url": f"http://127.0.0.1:{receiver.port}/hook"}, "bench", True,
                       frozenset({f"127.0.0.1:{receiver.port}"}), int(time.time() * 1000))
    producer = kafka.producer(settings, kafka.INTAKE)
    producer.produce(settings.topic(topics.WEBHOOKS), key=hook.id.encode(), value=hook.to_bytes())
    producer.flush(30)
    wanted = 2 * accounts
    pool = WorkerPool(settings, 1, command="webhooks")
    try:
        pids = {"webhooks": [p.pid for p in pool.procs.values()]}
        before = cpu_by_kind(pids)
        wait_with_progress(lambda: len(receiver.ids), wanted, "delivering", "events")
        after = cpu_by_kind(pids)
    finally:
        pool.stop_all()
    seconds = max(1e-3, receiver.last - receiver.first)
    return {"mode": "webhooks", "events": wanted, "concurrency": concurrency,
            "deliver_s": round(seconds, 2), "deliveries_per_s": round(wanted / seconds, 1),
            "calls": receiver.calls,
            "worker_cpu_us_per_delivery": round((after["webhooks"] - before["webhooks"]) /
                                                wanted * 1e6, 1)}
