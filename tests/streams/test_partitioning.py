"""murmur2 must place keys exactly where Kafka's default partitioner does."""
from kbank.streams.partitioning import murmur2, partition_for


def test_murmur2_matches_kafkas_test_vectors():
    # the vectors of Kafka's own UtilsTest.testMurmur2
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_partition_for_is_in_range():
    assert {partition_for(f"acct-{i}", 8) for i in range(200)} == set(range(8))
