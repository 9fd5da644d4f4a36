"""`bank up`: the embedded broker, the topics and the engine workers, kept alive.

Workers are child processes (`bank worker`); one that dies is restarted.
Everything started here is stopped on exit, Ctrl-C included.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

from streams.broker import embedded_settings, kafka_cluster
from streams.config import Settings
from streams.topics import ensure_topics


class WorkerPool:
    """Engine worker processes with the given settings, restarted if they die."""

    def __init__(self, settings: Settings, count: int, log_dir: str | None = None) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for i in range(count):
            self.start(str(i))

    def start(self, worker_id: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.env()}
        out = subprocess.DEVNULL
        if self.log_dir:
            out = open(os.path.join(self.log_dir, f"worker-{worker_id}.log"), "ab")
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--worker-id", worker_id],
                                env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        self.procs[worker_id] = proc
        return proc

    def kill(self, worker_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[worker_id]
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(30)

    def stop(self, worker_id: str) -> None:
        """Graceful stop (SIGTERM): the worker leaves the group."""
        proc = self.procs.pop(worker_id)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart_dead(self) -> list[str]:
        dead = [wid for wid, p in self.procs.items() if p.poll() is not None]
        for wid in dead:
            self.start(wid)
        return dead

    def stop_all(self) -> None:
        for wid in list(self.procs):
            self.stop(wid)


def up(settings: Settings, workers: int, broker_port: int | None, demo: bool) -> int:
    """Start everything, optionally show a demo, and serve until Ctrl-C."""
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with kafka_cluster(settings.bootstrap_servers, broker_port) as bootstrap:
        if not settings.bootstrap_servers:
            # the embedded broker starts empty: so must the local stores
            state_dir = tempfile.mkdtemp(prefix="bank-state-", dir=settings.state_dir
                                         if os.path.isdir(settings.state_dir) else None)
            settings = embedded_settings(replace(settings, state_dir=state_dir))
            print(f"embedded broker on {bootstrap} (memory only)", flush=True)
        settings = replace(settings, bootstrap_servers=bootstrap)
        counts = ensure_topics(settings)
        print(f"topics ready: {', '.join(f'{t}[{n}]' for t, n in counts.items())}", flush=True)
        pool = WorkerPool(settings, workers)
        print(f"{workers} engine worker(s) started; KAFKA_BOOTSTRAP_SERVERS={bootstrap}", flush=True)
        try:
            if demo:
                from streams.demo import run_demo
                run_demo(settings)
            print("serving; Ctrl-C to stop", flush=True)
            while not stopping:
                for wid in pool.restart_dead():
                    print(f"worker {wid} died; restarted", flush=True)
                time.sleep(0.5)
        finally:
            print("stopping workers", flush=True)
            pool.stop_all()
    return 0
