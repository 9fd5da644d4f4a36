"""Which partition owns a key: Kafka's default partitioner (murmur2), as the Java
client, librdkafka's murmur2_random and aiokafka compute it."""
from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2 as _murmur2


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of a key, as the signed 32-bit int the Java client returns."""
    h = _murmur2(data)
    return h - (1 << 32) if h & 0x80000000 else h


@lru_cache(maxsize=1 << 17)
def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a non-null key. Cached: the engine asks
    for every input record and aiokafka's murmur2 is pure Python (about 3 us a key)."""
    data = key.encode() if isinstance(key, str) else key
    return (_murmur2(data) & 0x7FFFFFFF) % partitions
