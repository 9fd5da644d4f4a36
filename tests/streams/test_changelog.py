"""The batch framing of engine.changelog (streams.changelog), without a broker."""
import orjson

from streams.changelog import APPLIED_IDS, END, MANIFEST, ChangelogChain


def feed(chain: ChangelogChain, records: list[tuple[bytes, object]]) -> None:
    for offset, (key, value) in enumerate(records):
        chain.add(offset, key, orjson.dumps(value))


def test_whole_batches_are_applied_and_move_the_position():
    chain = ChangelogChain((0, 0))
    feed(chain, [(MANIFEST, [0, 2, 0, 5]), (b"a:x", [1]), (APPLIED_IDS, ["r:1"]), (END, [2, 5]),
                 (MANIFEST, [2, 3, 5, 5]), (b"a:y", [2]), (END, [3, 5])])
    assert chain.position == (3, 5) and chain.checkpoint == 7 and chain.replay is None
    assert [k for k, _ in chain.records] == [b"a:x", APPLIED_IDS, b"a:y"]


def test_a_cut_short_batch_is_dropped_and_must_be_re_run_exactly():
    chain = ChangelogChain((0, 0))
    feed(chain, [(MANIFEST, [0, 2, 0, 5]), (b"a:x", [1]), (END, [2, 5]),
                 (MANIFEST, [2, 4, 5, 9]), (b"a:y", [99])])            # no END: cut short
    assert chain.position == (2, 5) and chain.replay == (2, 4, 5, 9)
    assert [k for k, _ in chain.records] == [b"a:x"]


def test_the_re_run_of_a_cut_short_batch_completes_it():
    chain = ChangelogChain((0, 0))
    feed(chain, [(MANIFEST, [0, 2, 0, 5]), (b"a:x", [99]),             # cut short
                 (MANIFEST, [0, 2, 0, 5]), (b"a:x", [1]), (END, [2, 5])])
    assert chain.position == (2, 5) and chain.replay is None
    assert chain.records == [(b"a:x", b"[1]")]


def test_batches_that_do_not_continue_the_position_are_ignored():
    chain = ChangelogChain((2, 5))           # the store already has the first batch
    feed(chain, [(MANIFEST, [0, 2, 0, 5]), (b"a:x", [1]), (END, [2, 5]),
                 (MANIFEST, [2, 3, 5, 6]), (b"a:x", [7]), (END, [3, 6])])
    assert chain.position == (3, 6) and chain.records == [(b"a:x", b"[7]")]
