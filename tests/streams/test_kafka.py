"""kbank.streams.kafka: how the clients' errors are read."""
from __future__ import annotations

from confluent_kafka import KafkaError

from kbank.streams.kafka import is_fatal


def test_a_consumers_fatal_error_event_counts_as_fatal():
    """librdkafka hands a consumer's fatal error (a fenced static member) to the application
    as an error of code _FATAL whose fatal() is False; the engine worker must exit on it,
    not poll a consumer that will never fetch again (a 3-node test saw both workers stall)."""
    assert not KafkaError(KafkaError._FATAL).fatal()   # why fatal() alone is not enough
    assert is_fatal(KafkaError(KafkaError._FATAL))
    assert is_fatal(KafkaError(KafkaError._FENCED, fatal=True))
    assert not is_fatal(KafkaError(KafkaError._PARTITION_EOF))
    assert not is_fatal(KafkaError(KafkaError._TRANSPORT))
