"""The engine store's key layout is named in one place and no two prefixes share keys."""
from __future__ import annotations

import pytest

from kbank.streams import storekeys
from kbank.streams.decisions import (credit_marker, external_ref_marker, incoming_marker,
                                     marked_request, request_marker)


def test_no_prefix_begins_another_and_a_new_one_that_would_is_refused():
    storekeys.check_layout(storekeys.layout())
    with pytest.raises(AssertionError, match="collide"):
        storekeys.check_layout({**storekeys.layout(), "a new kind": b"a:x"})
    with pytest.raises(AssertionError, match="collide"):
        storekeys.check_layout({**storekeys.layout(), "a short one": b"h"})


def test_the_markers_the_rules_make_use_the_named_prefixes():
    assert request_marker("alice", "r1").startswith(storekeys.REQUEST_MARKER)
    assert marked_request(request_marker("alice", "r:1")) == marked_request(
        request_marker("alice", "r:1")) is not None
    assert external_ref_marker("alice", "inv").startswith(storekeys.EXTERNAL_REF_MARKER)
    assert incoming_marker("alice", "h1").encode().startswith(storekeys.INCOMING_PREFIX)
    credit = {"kind": "credit", "request_id": "t", "account": "bob", "counterparty": "alice",
              "amount": 1, "currency": "USD"}
    assert credit_marker(credit).startswith(storekeys.MESSAGE_MARKER["credit"])
    member = {**credit, "index": 3, "link": "alice"}
    assert credit_marker(member).startswith(storekeys.MEMBER_MARKER["credit"] + "3:")
