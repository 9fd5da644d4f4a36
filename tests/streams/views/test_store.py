"""recovered_value: which of two changelog values of a key a recovering views worker keeps."""
from __future__ import annotations

import orjson

from kbank.streams.views.fold import AccountView, PartitionTotals
from kbank.streams.views.store import ViewKeys, recovered_value


def status(name: str, since: int = 1) -> bytes:
    return orjson.dumps({"request_id": "r", "status": name, "ts": since, "since": since})


def test_the_value_further_along_wins_whatever_the_order():
    pairs = [
        (ViewKeys.account("a"), AccountView(balance=5, seq=2, offset=7).to_bytes(),
         AccountView(balance=9, seq=3, offset=9).to_bytes()),
        (ViewKeys.totals(0), PartitionTotals(offset=4).to_bytes(), PartitionTotals(offset=11).to_bytes()),
        (ViewKeys.status("r"), status("debited"), status("completed")),
        (ViewKeys.status("r"), status("accepted"), status("rejected")),
        # the id re-used after the window: its new use, though less far along, is newer
        (ViewKeys.status("r"), status("completed"), status("debited", since=10**9)),
        (ViewKeys.outcomes_position(3), b"9", b"10"),
    ]
    for key, older, newer in pairs:
        assert recovered_value(key, older, newer) == newer, key
        assert recovered_value(key, newer, older) == newer, key


def test_a_first_value_a_tie_or_an_unreadable_value_falls_back_to_the_later_write():
    key = ViewKeys.account("a")
    value = AccountView(seq=1, offset=0).to_bytes()
    assert recovered_value(key, None, value) == value
    assert recovered_value(ViewKeys.history("a", 1), b"x", b"y") == b"y"
    assert recovered_value(ViewKeys.status("r"), status("completed"), status("rejected")) == status("rejected")
    assert recovered_value(key, b"not json", value) == value
    assert recovered_value(key, value, None) is None
