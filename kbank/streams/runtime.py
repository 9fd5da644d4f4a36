"""How a worker process runs Python: its garbage collector tuned for long-lived state."""
from __future__ import annotations

import gc


def quiet_gc() -> None:
    """Collect reference cycles rarely. The workers' hot paths make few (their records,
    decisions and states are freed by reference counting), while CPython's collector rescans
    every tracked object in the older generations, hundreds of thousands in a worker (decoded
    accounts, buffered records, views): with the default thresholds that was 27% of the
    engine's CPU under `bank bench` (py-spy --native). What exists at start-up is frozen out
    of collection."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
