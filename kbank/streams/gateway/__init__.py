"""The Kafka gateway: payments services of their own write requests over Kafka with a
principal scoped like a client API key (issue 41).

Only trusted writers touch `transfers.requests` (the intake for HTTP, the operator
principal for `bank send`, and this gateway), so nothing written there claims rights it
does not have. A client service gets its own SCRAM principal and two topics:
`clients.<name>.requests`, which only it may write, and `clients.<name>.outcomes`, which
only it may read. The gateway reads every client's requests topic, checks each request
against the client's grant with the same rule as a client API key
(apikeys.submit_refusal), relays what it may send to `transfers.requests` with
`requested_by: kafka:<name>` set by the gateway (never by the client), answers what it
may not with a `rejected` outcome (`forbidden`), and copies the outcomes of the client's
own requests to its outcomes topic: all in one Kafka transaction per batch, with the
offsets it read, so each record is relayed once whatever crashes.

Rooms: grants (the grant record, pure), relay (the decision per record, pure), admin (the
super user's create, revoke and list), worker (the Kafka plumbing).
"""
