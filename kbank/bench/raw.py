"""The broker's raw produce+consume throughput, measured in the same run."""
from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kbank.streams import kafka
from kbank.streams.client import read_to_end
from kbank.streams.config import Settings


def broker_raw_throughput(settings: Settings, messages: int = 300_000, size: int = 100) -> dict[str, float]:
    """Produce then consume `messages` records of `size` bytes; msgs/s of each and of both."""
    topic = settings.topic("bench.raw")
    admin = AdminClient(kafka.client_config(settings, kafka.ADMIN))
    for future in admin.create_topics([NewTopic(topic, settings.partitions, settings.replication_factor)]).values():
        future.result()
    producer = kafka.producer(settings, kafka.ADMIN, **{"linger.ms": 5, "batch.num.messages": 10000,
                                           "queue.buffering.max.messages": 2_000_000,
                                           "enable.idempotence": False, "acks": 1})
    payload = b"x" * size
    start = time.perf_counter()
    for i in range(messages):
        kafka.produce_waiting(producer, topic, 0.001, value=payload,
                              partition=i % settings.partitions)
    producer.flush(120)
    produced_s = time.perf_counter() - start
    consumer = kafka.consumer(settings, kafka.ADMIN, settings.topic("bench-raw"), **{"enable.partition.eof": True})
    start = time.perf_counter()
    count = sum(1 for _ in read_to_end(consumer, [TopicPartition(topic, p, OFFSET_BEGINNING)
                                                  for p in range(settings.partitions)]))
    consumed_s = time.perf_counter() - start
    consumer.close()
    return {"produce_msgs_per_s": messages / produced_s, "consume_msgs_per_s": count / consumed_s,
            "msgs_per_s": 2 * messages / (produced_s + consumed_s)}
