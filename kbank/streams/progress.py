"""Progress bars on stderr for long operations (replay, verify, recompute, restore, bench)."""
from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


def progress_bar(label: str, unit: str = "events", total: int | None = None,
                 enabled: bool = True, file: TextIO = sys.stderr) -> tqdm:
    """Count and rate (with a total: percentage and time left), redrawn at most twice a second;
    `update(n)` as things are done, `close()` at the end."""
    return tqdm(desc=label, unit=f" {unit}", total=total, disable=not enabled, mininterval=0.5,
                file=file, dynamic_ncols=True)
