"""The embedded broker's own helpers, without starting a broker."""
from __future__ import annotations

import re

from streams.broker import _cluster_id


def test_cluster_ids_are_what_the_storage_tool_accepts():
    ids = {_cluster_id() for _ in range(5_000)}   # ~78 would start with "-" if not guarded
    assert len(ids) == 5_000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)
