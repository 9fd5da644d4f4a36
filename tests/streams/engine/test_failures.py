"""Errors no retry fixes end the engine worker with one line; the supervisor restarts it with
a backoff, and once the cause is repaired the bank heals with nothing lost or applied twice.

Each cause is provoked on the real secured broker (issue 40): an ACL removed, then restored;
a topic deleted, then made again; a topic's record size cut below what the engine writes,
then restored. Before the fix the worker aborted and retried the same batch for ever, about
seven times a second, and never exited (the negative control is the abort loop itself: with
BANK_ENGINE_ABORT_LIMIT out of reach the worker is still running, aborting, at the end).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, ConfigResource,
                                   ConfigEntry, AlterConfigOpType, ResourcePatternType,
                                   ResourceType)

from kbank.streams import kafka, topics
from kbank.streams.engine.failures import AbortStreak, FailureKind, kind_of
from kbank.streams.health import HALTED_EXIT_CODE, read_crashes
from kbank.streams.client import RequestSender
from kbank.streams.principals import user_name
from kbank.streams.topics import ensure_topics
from tests.workload import Workload, assert_invariants, log_count, wait_until


def _engine_acl(settings, logical_topic: str, operation: str) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, settings.topic(logical_topic),
                      ResourcePatternType.LITERAL, f"User:{user_name(settings, kafka.ENGINE)}",
                      "*", AclOperation[operation], AclPermissionType.ALLOW)


def _admin(settings) -> AdminClient:
    return AdminClient(kafka.client_config(settings, kafka.ADMIN))


def _revoke_ledger_write(settings) -> None:
    acl = _engine_acl(settings, topics.LEDGER, "WRITE")
    filt = AclBindingFilter(acl.restype, acl.name, acl.resource_pattern_type, acl.principal,
                            acl.host, acl.operation, acl.permission_type)
    admin = _admin(settings)
    for future in admin.delete_acls([filt]).values():
        assert future.result(30), "the engine's WRITE on the ledger was granted"


def _restore_ledger_write(settings) -> None:
    admin = _admin(settings)
    for future in admin.create_acls([_engine_acl(settings, topics.LEDGER, "WRITE")]).values():
        future.result(30)


def _set_ledger_max_bytes(settings, value: str | None) -> None:
    entry = ConfigEntry("max.message.bytes", value or "",
                        incremental_operation=AlterConfigOpType.SET if value
                        else AlterConfigOpType.DELETE)
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topic(topics.LEDGER),
                              incremental_configs=[entry])
    admin = _admin(settings)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def _delete_deadletter(settings) -> None:
    """The dead-letter topic gone, and a record only it can take (undecodable) sent."""
    name = settings.topic(topics.DEADLETTER)
    admin = _admin(settings)
    admin.delete_topics([name])[name].result(30)
    wait_until(lambda: name not in admin.list_topics(timeout=10).topics, 30,
               "the dead-letter topic to be gone")
    sender = RequestSender(settings)
    sender.send_raw(b"f-0", b"not json")
    sender.flush()


CAUSES = {
    # cause: (break it, repair it, what the halt line names)
    "acl_revoked": (_revoke_ledger_write, _restore_ledger_write,
                    ("TOPIC_AUTHORIZATION_FAILED", "ledger.events", "User:")),
    "topic_deleted": (_delete_deadletter, ensure_topics, ("transfers.deadletter", "User:")),
    # (room for the transaction markers, 70-odd bytes, not for a batch of ledger events)
    "record_too_large": (lambda s: _set_ledger_max_bytes(s, "200"),
                         lambda s: _set_ledger_max_bytes(s, None),
                         ("TOO_LARGE", "User:")),
}


@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_an_error_no_retry_fixes_halts_the_worker_which_heals_once_repaired(
        cause, settings, pool_factory, tmp_path):
    breaks, repair, named = CAUSES[cause]
    pool = pool_factory(settings, 1)
    wl = Workload(settings)
    names = [f"f-{i}" for i in range(4)]
    log = tmp_path / "logs" / "worker-0.log"
    try:
        wl.open_accounts(names, 1_000)
        breaks(settings)
        wl.random_transfers(names, 40, "t", 50)
        # the worker ends by itself, with its one line, and is not left spinning
        wait_until(lambda: pool.procs["0"].poll() is not None, 90, "the worker to halt")
        assert pool.procs["0"].returncode == HALTED_EXIT_CODE, log.read_text()[-3000:]
        halt = read_crashes(settings.state_dir)["worker"]["0"]["halt"]
        assert all(word in halt for word in named), halt
        assert log_count(log, "halted:") >= 1
        # the supervisor restarts it with a backoff while the cause lasts: it halts again
        wait_until(lambda: pool.restart_dead(backoff=True) is not None
                   and pool.crashes["0"] >= 2, 90, "a second halt")
        assert "halted:" in read_crashes(settings.state_dir)["worker"]["0"]["halt"]
        repair(settings)
        wait_until(lambda: pool.restart_dead(backoff=True) is not None and wl.wait(1), 120,
                   "every request decided once the cause is repaired")
    finally:
        wl.close()
    assert pool.crashes["0"] >= 2
    assert_invariants(settings, wl, drained_by=pool)


def test_without_the_limit_a_refused_batch_is_retried_for_ever(settings, pool_factory, tmp_path):
    """Negative control of the halt: classify nothing as final (a limit out of reach and
    refusals treated as retriable, BANK_UNSAFE_RETRY_REFUSED) and the worker aborts the same
    batch again and again without end, as it did before."""
    settings = replace(settings, engine_abort_limit=10_000, unsafe_retry_refused=True)
    pool = pool_factory(settings, 1)
    wl = Workload(settings)
    log = tmp_path / "logs" / "worker-0.log"
    try:
        wl.open_accounts(["n-0", "n-1"], 100)
        _revoke_ledger_write(settings)
        wl.send({"type": "transfer", "request_id": "n", "from": "n-0", "to": "n-1", "amount": 1})
        wl.sender.flush()
        wait_until(lambda: log_count(log, "aborting transaction") >= 10, 90, "ten aborts")
        assert pool.procs["0"].poll() is None, "still running, still aborting"
    finally:
        wl.close()
        _restore_ledger_write(settings)


@pytest.mark.parametrize("code, kind", [
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, FailureKind.NOT_RETRIABLE),
    (KafkaError.GROUP_AUTHORIZATION_FAILED, FailureKind.NOT_RETRIABLE),
    (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, FailureKind.NOT_RETRIABLE),
    (KafkaError._UNKNOWN_TOPIC, FailureKind.NOT_RETRIABLE),
    (KafkaError.MSG_SIZE_TOO_LARGE, FailureKind.NOT_RETRIABLE),
    (KafkaError.PRODUCER_FENCED, FailureKind.FENCED),
    (KafkaError._FENCED, FailureKind.FENCED),
    (KafkaError.NOT_COORDINATOR, FailureKind.RETRIABLE),
    (KafkaError._TIMED_OUT, FailureKind.RETRIABLE),
])
def test_each_error_has_one_kind(code, kind):
    assert kind_of(KafkaError(code)) is kind


def test_aborts_in_a_row_exhaust_the_streak_a_commit_resets_it():
    streak = AbortStreak(3)
    streak.aborted("a")
    streak.aborted("b")
    assert not streak.exhausted
    streak.committed()
    for cause in ("a", "b", "b"):
        streak.aborted(cause)
    assert streak.exhausted and streak.describe() == "2 x b; 1 x a"
