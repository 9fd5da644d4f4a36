"""Running it: /health (readiness, the engine's progress, crashes), /live, /metrics and the
API's description."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web as aioweb

from kbank.streams.health import read_crashes
from kbank.streams.views.http import get_page, json_response
from kbank.streams.views.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, LagUnavailable
from kbank.streams.views.reads import ViewsReads
from kbank.streams.views.routes.requests import WritePath

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi.yaml"


class Operations:
    """What operators and their probes read of one views worker."""

    def __init__(self, worker: ViewsReads, write_path: WritePath) -> None:
        self.worker, self.write_path = worker, write_path

    async def health(self, request: aioweb.Request) -> aioweb.Response:
        """Readiness: 200 only when this worker serves (503 + the reasons otherwise)."""
        worker, app = self.worker, self.worker.app
        reasons = []
        try:
            lag: int | None = sum(row[2] for row in worker.lag())
        except LagUnavailable as exc:   # not 0: a lag that cannot be read is not "no lag"
            lag = None
            reasons.append(f"consumer lag unavailable: {exc}")
        if app.rebalancing:
            reasons.append("partitions are moving between workers")
        accepting = self.write_path.ready and (worker.keys is None or worker.keys.ready.is_set())
        if not accepting:
            reasons.append("starting: the request producer or the API keys are not ready")
        ready = not reasons
        engine = worker.engine_watch.state()   # the views serve reads whatever it says
        silent = worker.engine_watch.unreachable_for_s()
        degraded = engine["engine"] == "stalled" or silent is not None
        return json_response({
            "status": ("degraded" if degraded else "ok") if ready else "not_ready",
            **engine,
            "brokers_unreachable_for_s": None if silent is None else round(silent, 1),
            **({"reason": "; ".join(reasons)} if reasons else {}),
            "worker": worker.worker_id, "generation": worker.generation,
            "ledger_partitions": worker.ledger_partitions(),
            "rebalancing": bool(app.rebalancing), "accepting_requests": accepting,
            "auth": "off" if worker.keys is None else "api_keys",
            "lag": lag, "changelog_backlog": app.producer.buffer.size + worker.processor.unwritten,
            "worker_crashes": read_crashes(worker.settings.state_dir)},
            200 if ready else 503, None if ready else {"Retry-After": "1"})

    async def live(self, request: aioweb.Request) -> aioweb.Response:
        """Liveness: 200 while the process serves HTTP at all."""
        return json_response({"status": "alive", "worker": self.worker.worker_id})

    async def metrics(self, request: aioweb.Request) -> aioweb.Response:
        return aioweb.Response(body=self.worker.metrics.render(),
                               headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi(self, request: aioweb.Request) -> aioweb.Response:
        return aioweb.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/yaml")


def register(worker: ViewsReads, write_path: WritePath) -> None:
    app, operations = worker.app, Operations(worker, write_path)
    get_page(app, "/health", "Health", operations.health)
    get_page(app, "/live", "Live", operations.live)
    get_page(app, "/metrics", "Metrics", operations.metrics)
    get_page(app, "/openapi.yaml", "OpenAPI", operations.openapi)
