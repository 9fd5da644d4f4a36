"""Progress bars on stderr for long operations (replay, verify, recompute, restore, bench)."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm


def progress_bar(label: str, unit: str = "events", total: int | None = None,
                 enabled: bool = True, file: TextIO = sys.stderr) -> tqdm:
    """Count and rate (with a total: percentage and time left), redrawn at most twice a second;
    `update(n)` as things are done, `close()` at the end."""
    return tqdm(desc=label, unit=f" {unit}", total=total, disable=not enabled, mininterval=0.5,
                file=file, dynamic_ncols=True)


def wait_with_progress(done: Callable[[], int], total: int, label: str, unit: str,
                       timeout_s: float = 1800) -> None:
    """Wait until `done()` reaches `total`, showing a bar; TimeoutError after `timeout_s`."""
    bar = progress_bar(label, unit, total=total)
    deadline = time.monotonic() + timeout_s
    while (count := done()) < total:
        bar.update(count - bar.n)
        if time.monotonic() > deadline:
            bar.close()
            raise TimeoutError(f"{label}: only {count:,} of {total:,} {unit} in {timeout_s:.0f} s")
        time.sleep(0.2)
    bar.update(total - bar.n)
    bar.close()
