"""The peer `bank bench --peer quix` measures the engine against: the transfer pipeline a
Python user would write with Quix Streams instead of this project (issue 44).

Written from Quix Streams' documentation, as its users write pipelines: read the requests
keyed by the payer, debit in a stateful step (a deposit credits there; a transfer is refused
without funds, and each request id is applied once per payer), `group_by` the receiver,
credit in a second stateful step, and write each final outcome. Exactly-once is Quix's own
(`processing_guarantee="exactly-once"`: Kafka transactions around each checkpoint, state
changelogs in the same transaction); everything else is left at Quix's defaults.

It runs in a virtualenv of its own (`.venv-peer`, made by the bench from the `peer` extra:
Quix pins an older confluent-kafka than this project uses), so it imports only the standard
library and Quix Streams. Run as
`python quix_peer.py CONFIG_JSON`, CONFIG_JSON holding `connection` (librdkafka settings),
`requests`, `outcomes`, `group` and `state_dir`.
"""
from __future__ import annotations

import json
import sys


def debit(request: dict, state) -> dict:  # noqa: ANN001 - quixstreams.State
    """Keyed by the payer (or the depositor): apply the request once, refuse a transfer the
    balance does not cover."""
    seen = f"request:{request['request_id']}"
    if state.get(seen) is not None:
        return {"request_id": request["request_id"], "status": "duplicate"}
    state.set(seen, 1)
    balance = state.get("balance", 0)
    if request["type"] == "deposit":
        state.set("balance", balance + request["amount"])
        return {"request_id": request["request_id"], "status": "completed"}
    if request["amount"] > balance:
        return {"request_id": request["request_id"], "status": "refused",
                "reason": "insufficient funds"}
    state.set("balance", balance - request["amount"])
    return {"request_id": request["request_id"], "status": "debited", "to": request["to"],
            "amount": request["amount"]}


def credit(debited: dict, state) -> dict:  # noqa: ANN001 - quixstreams.State
    """Keyed by the receiver: add what the payer's step took."""
    state.set("balance", state.get("balance", 0) + debited["amount"])
    return {"request_id": debited["request_id"], "status": "completed"}


def main(config: dict) -> None:
    from quixstreams import Application
    from quixstreams.kafka.configuration import ConnectionConfig

    app = Application(broker_address=ConnectionConfig.from_librdkafka_dict(config["connection"]),
                      consumer_group=config["group"], auto_offset_reset="earliest",
                      processing_guarantee="exactly-once", state_dir=config["state_dir"],
                      loglevel="WARNING")
    requests = app.topic(config["requests"], key_deserializer="str", value_deserializer="json")
    outcomes = app.topic(config["outcomes"], key_serializer="str", value_serializer="json")

    sdf = app.dataframe(requests)
    sdf = sdf.apply(debit, stateful=True)
    sdf[sdf["status"] != "debited"].to_topic(outcomes)          # final at the payer's step
    credits = sdf[sdf["status"] == "debited"].group_by(lambda d: d["to"], name="receiver")
    credits.apply(credit, stateful=True).to_topic(outcomes)
    app.run()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
