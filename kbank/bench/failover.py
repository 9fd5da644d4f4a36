"""`bank bench --views-failover N`: how soon a views worker serves again, N ledger events
behind it (issue 42).

The views keep no changelog (the ledger is theirs), so a worker that restarts on its own
store resumes where the store stopped, and a worker that takes partitions it has no store
for folds them from the ledger's start. On a synthetic ledger of N events (the replay
bench's), one views worker folds it all from nothing (cold), is SIGKILLed and restarted on
its store (restart), then SIGKILLed for good while another worker, with no store, takes its
partitions (failover). Each time is from the process's start to every partition folded to
its end (/health: lag 0, for a second), so it includes the process's own start-up.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import replace

from kbank.bench.replay import SyntheticLedger
from kbank.streams.config import Settings
from kbank.streams.supervisor import WorkerPool, wait_for_views, wait_for_views_caught_up
from kbank.streams.topics import ensure_topics

SERVE_TIMEOUT_S = 1800.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(pool: WorkerPool, worker_id: str, partitions: int, what: str) -> float:
    """Start a views worker; seconds until it serves every partition, caught up."""
    started = time.monotonic()
    pool.start(worker_id)
    url = pool.url(worker_id)
    if not (wait_for_views([url], partitions, SERVE_TIMEOUT_S)
            and wait_for_views_caught_up([url], SERVE_TIMEOUT_S)):
        raise RuntimeError(f"views worker {worker_id} ({what}) did not catch up within "
                           f"{SERVE_TIMEOUT_S:.0f} s (logs in {pool.log_dir})")
    return time.monotonic() - started - 1.0    # wait_for_views_caught_up holds for a second


def views_failover(settings: Settings, events: int, accounts: int) -> dict[str, float | int]:
    ensure_topics(settings)
    written = SyntheticLedger(settings, accounts).extend(events)
    state = tempfile.mkdtemp(prefix="bank-bench-failover-")
    logs = os.path.join(state, "logs")
    os.makedirs(logs)
    pool = WorkerPool(replace(settings, state_dir=state), 0, logs,
                      command="views", web_ports=[_free_port(), _free_port()])
    try:
        cold = _serving(pool, "0", settings.partitions, "from nothing")
        pool.kill("0")
        restart = _serving(pool, "0", settings.partitions, "on its store")
        pool.kill("0")
        failover = _serving(pool, "1", settings.partitions, "without a store")
    finally:
        pool.stop_all()
    return {"ledger_events": written, "cold_fold_s": round(cold, 2),
            "cold_fold_events_per_s": round(written / max(cold, 1e-9)),
            "restart_on_own_store_s": round(restart, 2),
            "failover_without_store_s": round(failover, 2)}
