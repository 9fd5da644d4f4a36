"""What the web endpoint and the console read of a views worker: a narrow protocol, so
they depend on these reads and not on the worker (kbank.streams.views.app implements it)."""
from __future__ import annotations

from typing import Any, Iterable, Protocol

from kbank.streams.books.recon import ReconShelf
from kbank.streams.books.shelf import ClosesShelf
from kbank.streams.config import Settings
from kbank.streams.keystore import KeyRing
from kbank.streams.views.rate import RateLimiter
from kbank.streams.views.fold import AccountView, PartitionTotals
from kbank.streams.views.metrics import ViewsMetrics
from kbank.streams.views.engine_watch import EngineWatch


class ViewsReads(Protocol):
    settings: Settings
    worker_id: str
    generation: str
    metrics: ViewsMetrics
    keys: KeyRing | None     # None: BANK_UNSAFE_WEB_NO_AUTH
    limiter: RateLimiter     # each API key's rate (shared with the other workers)
    engine_watch: EngineWatch   # whether the engine makes progress
    closes: ClosesShelf      # the closes of the books (GET /closes)
    recon: ReconShelf        # the reconciliation's results (GET /reconciliation)
    app: Any                 # the Faust app: pages, router, peers' URLs, rebalancing state

    @property
    def table_name(self) -> str:
        """The views table's name (the router finds a key's owner by it)."""

    def ledger_partitions(self) -> list[int]:
        """The ledger partitions this worker owns now."""

    def account_view(self, account: str) -> AccountView | None: ...

    def history_page(self, account: str, before_seq: int,
                     limit: int) -> list[tuple[dict[str, Any], int | None]]: ...

    def indexed_accounts(self, name: str, value: str, after: str, limit: int) -> list[str]:
        """Accounts of this worker's partitions indexed under name=value, after `after`."""

    def top_accounts(self, ranking: str, group: str, limit: int,
                     budget: int) -> tuple[list[tuple[int, str]], bool]:
        """This worker's accounts highest in a ranking, and whether the answer is complete."""

    def history_entry(self, account: str, seq: int) -> tuple[dict[str, Any], int | None] | None:
        """The event of that seq and its ledger offset."""

    def totals_after(self, account: str, seq: int) -> list[Any] | None:
        """The account's running totals after its event `seq`: [in, out, {kind: count}]."""

    def request_status(self, key: str) -> dict[str, Any] | None: ...

    def local_totals_by_partition(self) -> list[tuple[int, PartitionTotals]]: ...

    def lag(self) -> Iterable[tuple[str, int, int]]: ...
