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
    assert chain.position == (3, 5) and chain.replay is None
    # a restore starts again at the last batch's manifest, from where that batch started
    assert chain.checkpoint == 4 and chain.checkpoint_position == (2, 5)
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


def feed_tagged(chain: ChangelogChain, records: list[tuple[bytes, bytes, object]]) -> None:
    for offset, (batch, key, value) in enumerate(records):
        chain.add(offset, key, orjson.dumps(value), batch)


def test_a_zombies_late_records_inside_the_new_owners_batch_change_nothing():
    # seen in CI: worker Z froze after its batch's manifest and outputs; the new owner N re-ran
    # that batch, went on, and Z woke and wrote its batch's state and END inside N's next batch
    chain = ChangelogChain((0, 0))
    feed_tagged(chain, [
        (b"Z1", MANIFEST, [0, 0, 0, 5]),
        (b"N1", MANIFEST, [0, 0, 0, 5]), (b"N1", b"a:x", [1]), (b"N1", END, [0, 5]),   # the re-run
        (b"N2", MANIFEST, [0, 0, 5, 9]), (b"N2", b"a:x", [2]),
        (b"Z1", b"a:x", [1]), (b"Z1", END, [0, 5]),                                   # the zombie wakes
        (b"N2", b"a:y", [3]), (b"N2", END, [0, 9]),
        (b"N3", MANIFEST, [0, 0, 9, 12]), (b"N3", b"a:x", [4]), (b"N3", END, [0, 12])])
    assert chain.position == (0, 12) and chain.replay is None and chain.checkpoint == 10
    assert chain.records == [(b"a:x", b"[1]"), (b"a:x", b"[2]"), (b"a:y", b"[3]"), (b"a:x", b"[4]")]
    assert chain.applied == [(0, 0, 0, 5), (0, 0, 5, 9), (0, 0, 9, 12)]


def test_a_zombie_that_ends_its_batch_before_the_re_run_does_wins_and_the_re_run_is_a_copy():
    chain = ChangelogChain((0, 0))
    feed_tagged(chain, [
        (b"Z1", MANIFEST, [0, 1, 0, 5]), (b"N1", MANIFEST, [0, 1, 0, 5]), (b"N1", b"a:x", [1]),
        (b"Z1", b"a:x", [1]), (b"Z1", END, [1, 5]),
        (b"N1", END, [1, 5])])
    assert chain.position == (1, 5) and chain.checkpoint == 0 and chain.records == [(b"a:x", b"[1]")]


def test_a_cut_short_batch_among_other_writers_is_the_one_to_re_run():
    chain = ChangelogChain((0, 0))
    feed_tagged(chain, [
        (b"A1", MANIFEST, [0, 1, 0, 5]), (b"A1", b"a:x", [1]), (b"A1", END, [1, 5]),
        (b"A2", MANIFEST, [1, 3, 5, 5]), (b"A2", b"a:x", [9]),          # A is killed here
        (b"old", MANIFEST, [0, 1, 0, 5]), (b"old", b"a:x", [1])])        # a stale copy, not at the position
    assert chain.position == (1, 5) and chain.replay == (1, 3, 5, 5)
    assert chain.records == [(b"a:x", b"[1]")]


def test_a_restore_from_a_zombies_checkpoint_follows_the_new_owner():
    # seen in a chaos run: the zombie Z ended its batch late and checkpointed its store there;
    # restoring from Z's manifest (its checkpoint) must end where the new owner N got to
    log = [(b"Z1", MANIFEST, [0, 0, 0, 5]),
           (b"N1", MANIFEST, [0, 0, 0, 5]), (b"N1", b"a:x", [1]), (b"N1", END, [0, 5]),
           (b"N2", MANIFEST, [0, 0, 5, 9]), (b"N2", b"a:x", [2]), (b"N2", END, [0, 9]),
           (b"Z1", b"a:x", [1]), (b"Z1", END, [0, 5])]
    chain = ChangelogChain((0, 0))      # Z's store: checkpoint 0 (its manifest), position (0, 0)
    feed_tagged(chain, log)
    assert chain.position == (0, 9) and chain.records[-1] == (b"a:x", b"[2]")
