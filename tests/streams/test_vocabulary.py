"""One vocabulary per concept (issue 43): a ledger event's kind, a request's status, an
account's state, a rejection's reason and a message's kind are distinct types in model.py.
Every constant made of a type is in that type's list, and the words two vocabularies share
are named here, so a new overlap (the confusion the suffixes _STATUS and _STATE paper over)
is a decision someone makes, not an accident."""
from __future__ import annotations

import ast
from pathlib import Path

from kbank.streams import model, storekeys

TYPES = {"EventKind": model.EVENT_KINDS, "Status": model.STATUSES,
         "AccountState": model.ACCOUNT_STATES, "Reason": model.REASONS,
         "MessageKind": model.MESSAGE_KINDS | {storekeys.EXPIRE}}
SHARED = {
    frozenset({"EventKind", "Status"}): {"debited", "rejected", "held", "posted", "expired"},
    frozenset({"EventKind", "AccountState"}): {"frozen", "closed"},
}


def _typed_constants(path: Path) -> dict[str, set[str]]:
    """The words made of each type in a module: `X = Type("w")` and `X, Y = map(Type, (...))`."""
    found: dict[str, set[str]] = {name: set() for name in TYPES}
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id in TYPES and node.args and isinstance(node.args[0], ast.Constant):
            found[node.func.id].add(node.args[0].value)
        elif node.func.id == "map" and isinstance(node.args[0], ast.Name) \
                and node.args[0].id in TYPES:
            found[node.args[0].id] |= {e.value for e in node.args[1].elts}
    return found


def test_every_typed_constant_is_in_its_list():
    root = Path(model.__file__).parent
    made = {name: set() for name in TYPES}
    for module in ("model.py", "storekeys.py"):
        for name, words in _typed_constants(root / module).items():
            made[name] |= words
    assert all(made.values()), made
    assert made == {name: set(words) for name, words in TYPES.items()}


def test_the_words_two_vocabularies_share_are_named():
    names = sorted(TYPES)
    shared = {frozenset({a, b}): set(TYPES[a]) & set(TYPES[b])
              for i, a in enumerate(names) for b in names[i + 1:]}
    assert {pair: words for pair, words in shared.items() if words} == SHARED


def test_an_accounts_state_follows_only_from_its_life_events():
    assert set(model.STATE_AFTER) <= model.EVENT_KINDS
    assert set(model.STATE_AFTER.values()) <= model.ACCOUNT_STATES
    assert model.Account().state in model.ACCOUNT_STATES
