"""Crash records: the supervisor notes each worker's unasked-for exits, and a worker that
halts its own reason, where the views' /health and /metrics read them (a small file in BANK_STATE_DIR, so neither side imports
the other)."""
from __future__ import annotations

import os
import time

import orjson

from kbank.streams.files import private_dir

CRASHES_FILE = "worker-crashes.json"
HALTED_EXIT_CODE = 78   # a worker that met an error no retry fixes (sysexits' EX_CONFIG)


def record_crash(state_dir: str, command: str, worker_id: str, crashes: int, reason: str) -> None:
    """Keep each worker's crash count and last exit reason where the views' /health and
    /metrics read them (BANK_STATE_DIR/worker-crashes.json)."""
    _update(state_dir, command, worker_id, {"crashes": crashes, "last_exit": reason,
                                            "exited_at": int(time.time() * 1000)})


def _update(state_dir: str, command: str, worker_id: str, fields: dict) -> None:
    path = os.path.join(state_dir, CRASHES_FILE)
    data = read_crashes(state_dir)
    entry = data.setdefault(command, {}).setdefault(worker_id, {})
    entry.update(fields)
    private_dir(state_dir)
    tmp = f"{path}.{os.getpid()}.tmp"   # the supervisor and a worker may write at once
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(data))
    os.replace(tmp, path)


def record_halt(state_dir: str, command: str, worker_id: str, message: str) -> None:
    """A worker's own line on why it ended (an error no retry fixes), with the time: the
    supervisor prints it with the restart, the views' /health shows it."""
    _update(state_dir, command, worker_id,
            {"halt": message, "halted_at": int(time.time() * 1000)})


def read_crashes(state_dir: str) -> dict:
    """What record_crash wrote: {command: {worker_id: {crashes, last_exit}}} ({} if none)."""
    try:
        with open(os.path.join(state_dir, CRASHES_FILE), "rb") as f:
            return orjson.loads(f.read())
    except (OSError, ValueError):
        return {}
