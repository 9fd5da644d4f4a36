"""kbank: exactly-once bank transfers on Kafka.

One installed name for the whole project: kbank.streams (the engine, views and web
endpoint), kbank.replay (rebuild, recompute, verify), kbank.bench and kbank.chaos (the
benchmark and fault schedule run by `bank bench` and `bank chaos`)."""
