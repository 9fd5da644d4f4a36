"""`bank up`'s supervisor: a worker in a crash loop is restarted with a growing backoff, and
its crashes and exit reason are recorded where /health and /metrics read them."""
from __future__ import annotations

import time
from dataclasses import replace

from kbank.streams.config import Settings
from kbank.streams.health import read_crashes
from kbank.streams.supervisor import WorkerPool


def test_a_crash_looping_worker_is_restarted_with_backoff_and_counted(tmp_path):
    # without a broker to point at, `bank worker` exits at once with code 2: a crash loop
    settings = replace(Settings(), bootstrap_servers="", state_dir=str(tmp_path))
    pool = WorkerPool(settings, 1, str(tmp_path))
    restarts: list[float] = []
    deadline = time.monotonic() + 30
    try:
        while len(restarts) < 4:
            assert time.monotonic() < deadline, f"only {len(restarts)} restarts"
            restarts += [time.monotonic()] * len(pool.restart_dead(backoff=True))
            time.sleep(0.02)
    finally:
        pool.stop_all()
    gaps = [b - a for a, b in zip(restarts, restarts[1:])]
    # each delay doubles (1, 2, 4 s after the first 0.5 s), plus the worker's own start time
    assert gaps[0] >= 0.95 and gaps[1] >= 1.95 and gaps[2] >= 3.95, gaps
    assert pool.crashes["0"] >= 4
    crashes = read_crashes(str(tmp_path))["worker"]["0"]
    assert crashes["crashes"] >= 4 and crashes["last_exit"] == "exit code 2"


def test_bank_up_says_when_the_engine_stalls_as_a_views_worker_reports_it():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import orjson

    from kbank.streams.supervisor import engine_report

    answers = [{"status": "ok", "engine": "ok"},
               {"status": "degraded", "engine": "stalled",
                "stall": {"partitions": [2, 5], "since": 1_700_000_000_000,
                          "cause": "engine worker 0 halted: WRITE refused"}}]

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = orjson.dumps(answers[0])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert engine_report(url) == "engine progressing"
        answers.pop(0)
        line = engine_report(url)
        assert line.startswith("ENGINE STALLED on partitions [2, 5] since ")
        assert line.endswith(": engine worker 0 halted: WRITE refused")
    finally:
        server.shutdown()
    assert engine_report(url) is None   # nobody answers
