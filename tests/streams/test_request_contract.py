"""One request kind, one description (issue 43): the rules' REQUEST_KINDS and the published
JSON Schema of transfers.requests say the same fields for every type."""
from __future__ import annotations

import json
from pathlib import Path

import kbank
from kbank.streams.decisions import REQUEST_KINDS, deciding_account

SCHEMA = json.loads((Path(kbank.__file__).parent / "schemas" / "transfers.requests.v1.json")
                    .read_text())


def test_the_schema_and_the_rules_describe_every_request_kind_alike():
    variants = {v["title"]: v for v in SCHEMA["oneOf"]}
    assert set(variants) == set(REQUEST_KINDS)
    for name, kind in REQUEST_KINDS.items():
        variant = variants[name]
        assert set(variant["required"]) == {"type", "request_id", *kind.required}, name
        assert set(variant["properties"]) == set(kind.fields), name
        body = {field: f"x-{field}" for field in kind.required} | {"type": name}
        assert deciding_account(body) == body[kind.deciding], name
