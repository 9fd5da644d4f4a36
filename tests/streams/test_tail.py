"""A topic tail's freshness: once `fresh_since(t)` says yes, every record written before `t`
has been folded. The webhook workers rely on it so that an event recorded after a key's
revocation never reaches that key's webhooks (real broker, the views' principal)."""
from __future__ import annotations

import time

from kbank.streams import kafka
from kbank.streams.apikeys import CLIENT
from kbank.streams.keystore import KeyRing, create_key, revoke_key
from tests.workload import wait_until


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_a_fresh_key_ring_holds_every_record_written_before(settings):
    ring = KeyRing(settings, kafka.VIEWS, "bank-test-keys")
    try:
        _check_freshness(settings, ring)
    finally:
        ring.close()


def _check_freshness(settings, ring: KeyRing) -> None:  # noqa: ANN001 - the test's Settings
    assert ring.ready.wait(30)
    assert not ring.fresh_since(_now_ms() + 3_600_000), "an instant to come is never fresh"
    for attempt in range(3):
        made = create_key(settings, CLIENT, accounts=(f"acct-{attempt}",))
        written = _now_ms()
        wait_until(lambda: ring.fresh_since(written), 10, "the ring fresh since the write")
        assert ring.get(made.record.id) is not None, "fresh, yet the key written before is unread"
        revoke_key(settings, made.record.id)
        written = _now_ms()
        wait_until(lambda: ring.fresh_since(written), 10, "the ring fresh since the revocation")
        assert ring.get(made.record.id).revoked_ms is not None
