"""The engine store's key layout and the views' (ViewKeys) are each named in one place, and
for any valid names no two entries are one key and no scanned prefix holds another's keys."""
from __future__ import annotations

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from kbank.streams import storekeys
from kbank.streams.decisions import (credit_marker, external_ref_marker, incoming_marker,
                                     marked_request, marker_key, request_marker)
from kbank.streams.views.layout import ViewKeys


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


# -- any valid name: no two keys of the engine's markers, nor of the views', are one key --

NAMES = st.text(min_size=1, max_size=12) | st.sampled_from(["a", "a\x00", "a\x000", "1:a", "\x00"])
SEQS = st.integers(min_value=1, max_value=10**12 - 1)
MARKER_PREFIXES = sorted({storekeys.REQUEST_MARKER, storekeys.EXTERNAL_REF_MARKER,
                          *storekeys.MESSAGE_MARKER.values(),
                          *(f"{p}{i}:" for p in storekeys.MEMBER_MARKER.values() for i in range(16))})


@hypothesis_settings(max_examples=400, deadline=None)
@given(st.tuples(st.sampled_from(MARKER_PREFIXES), NAMES, NAMES),
       st.tuples(st.sampled_from(MARKER_PREFIXES), NAMES, NAMES))
def test_two_different_markers_are_never_one_key(one, other):
    if one != other:
        assert marker_key(*one) != marker_key(*other)


def _view_key(view: str, a: str, b: str, n: int) -> bytes:
    return {"account": lambda: ViewKeys.account(a), "history": lambda: ViewKeys.history(a, n),
            "totals": lambda: ViewKeys.totals(n), "status": lambda: ViewKeys.status(a),
            "outcomes position": lambda: ViewKeys.outcomes_position(n),
            "index": lambda: ViewKeys.index(a, b, a + b),
            "rank": lambda: ViewKeys.rank(a, b, n % 65536, a)}[view]()


VIEWS = st.sampled_from(["account", "history", "totals", "status", "outcomes position", "index",
                         "rank"])


@hypothesis_settings(max_examples=400, deadline=None)
@given(st.tuples(VIEWS, NAMES, NAMES, SEQS), st.tuples(VIEWS, NAMES, NAMES, SEQS))
def test_two_different_view_entries_are_never_one_key(one, other):
    # the inputs a key is made of (a view's key ignores the ones it does not use)
    used = {"account": (1,), "history": (1, 3), "totals": (3,), "status": (1,),
            "outcomes position": (3,), "index": (1, 2), "rank": (1, 2, 3)}
    def made_of(entry):  # noqa: ANN001, ANN202
        view = entry[0]
        values = [entry[i] for i in used[view]]
        if view == "rank":
            values[-1] %= 65536
        return view, *values
    if made_of(one) != made_of(other):
        assert _view_key(*one) != _view_key(*other)


@hypothesis_settings(max_examples=400, deadline=None)
@given(NAMES, NAMES, NAMES, NAMES)
def test_a_scanned_prefix_of_the_views_holds_only_its_own_keys(name, value, other_name, other_value):
    """Rankings and indexes are read by prefix: another (name, value)'s keys never start with it."""
    if (name, value) != (other_name, other_value):
        assert not ViewKeys.index(other_name, other_value, "x").startswith(
            ViewKeys.index_prefix(name, value))
        assert not ViewKeys.rank(other_name, other_value, 7, "x").startswith(
            ViewKeys.rank_prefix(name, value))


def test_the_views_prefixes_are_distinct_and_none_begins_another():
    prefixes = [ViewKeys.ACCOUNT, ViewKeys.HISTORY, ViewKeys.TOTALS, ViewKeys.STATUS,
                ViewKeys.OUTCOMES_POSITION, ViewKeys.INDEX, ViewKeys.RANK]
    storekeys.check_layout({f"view {i}": p for i, p in enumerate(prefixes)})
