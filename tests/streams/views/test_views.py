"""Views over real HTTP equal what the ledger says, through every worker, across crashes."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kbank.replay.ledger import LedgerFold
from kbank.streams import kafka, topics
from kbank.streams.config import Settings
from kbank.streams.supervisor import wait_for_views, wait_for_views_caught_up
from kbank.streams.views.app import VIEWS_APP, VIEWS_TABLE
from tests.http import get_json
from kbank.streams.model import split_request_key
from tests.workload import Workload, assert_invariants, ledger, status_path, wait_until


def assert_views_match_ledger(url: str, fold: LedgerFold, patient: bool = True) -> None:
    """Every account's balance, seq and full history (paged) over HTTP equal the ledger's
    (`patient`: each account's view is waited for until it reaches the ledger's seq; a
    negative control, whose views never will, asks once)."""
    for name, acct in fold.accounts.items():
        view = get_json(f"{url}/accounts/{name}?min_seq={acct.seq}&timeout=10") if patient \
            else get_json(f"{url}/accounts/{name}")
        assert (view["balance"], view["seq"]) == (acct.balance, acct.seq), (url, name)
        entries, before = [], None
        while True:
            page = get_json(f"{url}/accounts/{name}/history?limit=17"
                            + (f"&before_seq={before}" if before else ""))
            entries += page["entries"]
            before = page["next_before_seq"]
            if before is None:
                break
        assert entries == [orjson.loads(raw) for raw in reversed(acct.events)], (url, name)


def assert_statuses(url: str, wl: Workload, request_ids: list[str]) -> None:
    """Each request's status over HTTP equals its final outcome. transfers.outcomes is folded
    on its own, maybe a moment behind the ledger: a status may take a while to arrive."""
    for rid in request_ids:
        wait_until(lambda: get_json(url + status_path(rid))["status"] == wl.watcher.status[rid],
                   30, f"{url} to show the final status of {rid}")


def transfer_counts(wl: Workload, prefix: str) -> tuple[int, int]:
    statuses = [s for rid, s in wl.statuses().items() if rid.startswith(prefix)]
    return statuses.count("completed"), statuses.count("rejected")


def assert_stats(url: str, fold: LedgerFold, wl: Workload) -> None:
    stats = get_json(f"{url}/stats")
    completed, rejected = transfer_counts(wl, "t-")
    usd = {"total_balance": sum(a.balance for a in fold.accounts.values()),
           "money_in_flight": 0, "deposits": wl.deposits, "withdrawals": 0, "money_held": 0}
    assert stats == {
        "accounts": len(fold.accounts), **usd,
        "transfers_completed": completed, "transfers_rejected": rejected,
        "ledger_events": fold.applied, "partitions": wl.settings.partitions,
        "default_currency": "USD", "currencies": {"USD": {**usd, "decimals": 2}}}, url


def test_every_views_worker_answers_like_the_ledger(settings, pool_factory, views_factory):
    pool_factory(settings, 2)
    views = views_factory(settings, 2)
    names = [f"acct-{i}" for i in range(40)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 5_000)
        wl.random_transfers(names, 800, "t", 3_000, duplicate_every=25)
        assert wl.wait(180)
    finally:
        wl.close()
    assert_invariants(settings, wl)
    fold = ledger(settings)
    urls = [views.url(w) for w in views.procs]
    sample = [key for key in wl.request_ids if split_request_key(key)[1].startswith("t-")][::20]
    for url in urls:
        assert_views_match_ledger(url, fold)
        assert_stats(url, fold, wl)
        assert_statuses(url, wl, sample)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["kept", "wiped"])
def test_views_worker_killed_and_restarted_gives_the_same_answers(settings, pool_factory, views_factory,
                                                                 store):
    """Kept, the restarted worker resumes from its own store; wiped, it folds its partitions
    from the start of the ledger (kbank.streams.views.app); either way it answers alike."""
    pool_factory(settings, 1)
    views = views_factory(settings, 2)
    urls = [views.url(w) for w in views.procs]
    names = [f"acct-{i}" for i in range(30)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 5_000)
        wl.random_transfers(names, 300, "t-a", 2_000)
        assert wl.wait(120)
        before = ledger(settings)
        for url in urls:
            assert_views_match_ledger(url, before)
        views.kill("1")
        if store == "wiped":
            shutil.rmtree(os.path.join(settings.state_dir, "views-1"))
        # the survivor takes the dead worker's partitions (restoring their tables) meanwhile
        wl.random_transfers(names, 300, "t-b", 2_000)
        assert wl.wait(120)
        views.start("1")
        assert wait_for_views(urls, settings.partitions)
    finally:
        wl.close()
    after = ledger(settings)
    assert after.applied > before.applied
    # at the end of its transactional sources a worker's lag is 0 (not 1 per partition for
    # the commit marker that ends each), and stays so with its writes in its store
    assert wait_for_views_caught_up(urls, 60)
    for url in urls:
        assert_views_match_ledger(url, after)
        assert_stats(url, after, wl)


@pytest.mark.slow
@pytest.mark.parametrize("resume_at_end", [False, True], ids=["from-its-store", "unsafe-resume-at-end"])
def test_a_views_worker_killed_mid_fold_resumes_from_its_own_store(settings, pool_factory,
                                                                   views_factory, resume_at_end):
    """The views have no changelog (issue 42): a worker killed while folding a backlog resumes
    each source partition just past what its store recorded in the same write batch as the
    state, so it loses nothing and counts nothing twice. The negative control resumes at the
    sources' ends, as a worker that trusted anything but its store's positions would: what it
    had not folded is missing."""
    pool_factory(settings, 1)
    names = [f"acct-{i}" for i in range(30)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 5_000)
        wl.random_transfers(names, 3_000, "t", 2_000)
        assert wl.wait(180)
        backlog = ledger(settings).applied
        # each fold batch (at most 2,000 records) is followed by a pause: the kill lands mid-fold
        views = views_factory(replace(settings, fault_views_batch_delay_ms=300), 1)
        url = views.url("0")
        wait_until(lambda: 0 < folded_events(url) < backlog, 120,
                   "the views to be part way through the backlog", poll_s=0.01)
        views.kill("0")
        views.start("0", {"BANK_UNSAFE_VIEWS_RESUME_AT_END": "1"} if resume_at_end else None)
        assert wait_for_views([url], settings.partitions)
        wl.random_transfers(names, 300, "t-after", 2_000)
        assert wl.wait(180)
        assert wait_for_views_caught_up([url], 60)
    finally:
        wl.close()
    fold = ledger(settings)
    if resume_at_end:
        with pytest.raises(AssertionError):
            assert_views_match_ledger(url, fold, patient=False)
            assert_stats(url, fold, wl)
    else:
        assert_views_match_ledger(url, fold)
        assert_stats(url, fold, wl)
        assert_statuses(url, wl, wl.request_ids[::10])


def folded_events(url: str) -> int:
    """How many ledger events a views worker has folded (its /stats, 0 while it cannot say)."""
    try:
        return get_json(f"{url}/stats?timeout=1")["ledger_events"]
    except Exception:   # noqa: BLE001 - starting, or partitions not all answered yet
        return 0


def test_the_views_write_nothing_to_kafka(settings, pool_factory, views_factory):
    """Their state is a fold of the sources: the views table's changelog stays empty."""
    pool_factory(settings, 1)
    views = views_factory(settings, 1)
    names = [f"acct-{i}" for i in range(10)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 1_000)
        wl.random_transfers(names, 100, "t", 500)
        assert wl.wait(120)
        assert wait_for_views_caught_up([views.url("0")], 60)
    finally:
        wl.close()
    topic = f"{settings.topic(VIEWS_APP)}-{VIEWS_TABLE}-changelog"
    consumer = kafka.consumer(settings, kafka.ADMIN)
    try:
        ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
                for p in range(settings.partitions)]
    finally:
        consumer.close()
    assert ends == [0] * settings.partitions
    assert_views_match_ledger(views.url("0"), ledger(settings))


def source_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of the views' two sources."""
    consumer = kafka.consumer(settings, kafka.ADMIN)
    try:
        return {(topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
                for topic in (settings.topic(topics.LEDGER), settings.topic(topics.OUTCOMES))
                for p in range(settings.partitions)}
    finally:
        consumer.close()


def commit_views_group_offsets(settings: Settings, offsets: dict[tuple[str, int], int]) -> bool:
    """Commit offsets for the views' group; False while the group still has a member."""
    consumer = kafka.consumer(settings, kafka.VIEWS, settings.topic(VIEWS_APP))
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                        asynchronous=False)
        return True
    except KafkaException as exc:
        if exc.args[0].code() in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
                                  KafkaError.ILLEGAL_GENERATION):
            return False
        raise
    finally:
        consumer.close()


@pytest.mark.slow
def test_a_views_worker_resumes_where_its_table_is_not_where_the_group_committed(
        settings, pool_factory, views_factory):
    """Faust commits the offsets its agents processed while their table writes may still be
    buffered, so after a kill the group's offsets can lie ahead of the recovered table. Records
    delivered from those offsets before the sources are sought to the table's positions would
    move the table's positions past records it never folded (CI saw statuses stuck at `debited`
    and 404s). Here the group's offsets are set midway through a stretch the table lacks."""
    pool_factory(settings, 1)
    views = views_factory(settings, 1)
    url = views.url("0")
    names = [f"acct-{i}" for i in range(20)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 5_000)
        wl.random_transfers(names, 200, "t-a", 2_000)
        assert wl.wait(120)
        assert_views_match_ledger(url, ledger(settings))
        assert wait_for_views_caught_up([url], 60)
        views.kill("0")
        before = source_ends(settings)
        wl.random_transfers(names, 400, "t-b", 2_000)
        assert wl.wait(120)
        after = source_ends(settings)
        midway = {tp: (before[tp] + after[tp]) // 2 for tp in after}
        wait_until(lambda: commit_views_group_offsets(settings, midway), 60,
                   "the killed worker to leave the views' group")
        views.start("0")
        assert wait_for_views([url], settings.partitions)
    finally:
        wl.close()
    fold = ledger(settings)
    assert_views_match_ledger(url, fold)
    assert_stats(url, fold, wl)
    assert_statuses(url, wl, [rid for rid in wl.request_ids if rid.startswith("t-b")])
