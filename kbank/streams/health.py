"""Crash records: the supervisor notes each worker's unasked-for exits where the views'
/health and /metrics read them (a small file in BANK_STATE_DIR, so neither side imports
the other)."""
from __future__ import annotations

import os

import orjson

CRASHES_FILE = "worker-crashes.json"


def record_crash(state_dir: str, command: str, worker_id: str, crashes: int, reason: str) -> None:
    """Keep each worker's crash count and last exit reason where the views' /health and
    /metrics read them (BANK_STATE_DIR/worker-crashes.json)."""
    path = os.path.join(state_dir, CRASHES_FILE)
    try:
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
    except (OSError, ValueError):
        data = {}
    data.setdefault(command, {})[worker_id] = {"crashes": crashes, "last_exit": reason}
    os.makedirs(state_dir, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(orjson.dumps(data))
    os.replace(path + ".tmp", path)


def read_crashes(state_dir: str) -> dict:
    """What record_crash wrote: {command: {worker_id: {crashes, last_exit}}} ({} if none)."""
    try:
        with open(os.path.join(state_dir, CRASHES_FILE), "rb") as f:
            return orjson.loads(f.read())
    except (OSError, ValueError):
        return {}
