"""The engine's progress, as the views tell it (issue 40): a stalled engine shows on /health,
/overview and /metrics, and a request that would wait for it is answered 503 at once.

Before, every views worker answered /health `200 {"status": "ok"}` the whole time the engine
stood still; the integration test checks the same moment now says "stalled" (the old 200
stays, for the views still serve reads, with status "degraded")."""
from __future__ import annotations

from dataclasses import replace

import orjson

from kbank.streams.partitioning import partition_for
from kbank.streams.views.engine_watch import EngineProgress, InputOffsets, engine_state
from tests.http import get_json, request
from tests.workload import Workload, assert_invariants, wait_until


def _offsets(committed: int, high: int) -> dict:
    return {("requests", 0): InputOffsets(committed, 0, high)}


def test_records_waiting_past_the_bound_with_no_commit_is_a_stall_once_confirmed():
    progress = EngineProgress(stall_after_s=10)
    progress.observe(0.0, _offsets(5, 5))
    assert progress.suspected(20.0, _offsets(5, 5)) == {}          # idle: nothing waits
    progress.observe(20.0, _offsets(5, 7))
    assert progress.suspected(21.0, _offsets(5, 7)) == {("requests", 0): 0.0}
    assert progress.stalled(21.0, _offsets(5, 7)) == {}            # not yet confirmed
    progress.confirmed(("requests", 0))
    assert progress.stalled(21.0, _offsets(5, 7)) == {("requests", 0): 0.0}
    progress.observe(22.0, _offsets(7, 7))                         # a commit: progressing
    assert progress.suspected(40.0, _offsets(7, 7)) == {}


def test_markers_and_aborted_records_found_settled_are_not_a_stall():
    progress = EngineProgress(stall_after_s=10)
    progress.observe(0.0, _offsets(5, 5))
    progress.observe(11.0, _offsets(5, 8))     # an aborted batch's record and its marker
    assert progress.suspected(11.0, _offsets(5, 8))
    progress.settled(("requests", 0), 8)       # read from 5: nothing a reader sees
    assert progress.suspected(30.0, _offsets(5, 8)) == {}
    progress.observe(31.0, _offsets(5, 9))     # a record arrives after them
    assert progress.suspected(31.0, _offsets(5, 9))


def test_the_cause_is_an_engine_workers_halt_line_when_it_left_one():
    progress = EngineProgress(stall_after_s=1)
    progress.observe(0.0, _offsets(5, 9))
    progress.confirmed(("requests", 0))
    crashes = {"worker": {"0": {"halt": "engine worker 0 halted: WRITE refused",
                                "halted_at": 100_000}}}
    state = engine_state(progress, _offsets(5, 9), 5.0, 104_000, crashes)
    assert state["engine"] == "stalled" and state["stall"]["partitions"] == [0]
    assert state["stall"]["cause"] == "engine worker 0 halted: WRITE refused"
    assert state["stall"]["since"] == 99_000
    assert engine_state(progress, _offsets(5, 9), 5.0, 104_000, {})["stall"]["cause"] \
        .startswith("records wait")


def test_health_overview_and_metrics_say_the_engine_is_stalled(settings, pool_factory,
                                                              views_factory):
    settings = replace(settings, engine_stall_after_s=3.0)
    engine = pool_factory(settings, 1)
    views = views_factory(settings, 1)
    url = views.url("0")
    wl = Workload(settings)
    try:
        wl.open_accounts(["w-a", "w-b"], 100)
        wait_until(lambda: get_json(f"{url}/health")["engine"] == "ok", 60, "engine ok")
        engine.kill("0")            # no supervisor here: it stays down
        wl.send({"type": "transfer", "request_id": "w1", "from": "w-a", "to": "w-b", "amount": 1})
        wl.sender.flush()
        wait_until(lambda: get_json(f"{url}/health")["engine"] == "stalled", 60, "a stall")
        health = request("GET", f"{url}/health")
        assert health.status == 200, "the views still serve reads"
        body = health.json()
        assert body["status"] == "degraded"
        assert partition_for("w-a", settings.partitions) in body["stall"]["partitions"]
        assert "no transaction committed" in body["stall"]["cause"]
        overview = get_json(f"{url}/overview")
        assert overview["engine_progress"]["engine"] == "stalled"
        metrics = request("GET", f"{url}/metrics").body.decode()
        assert "bank_engine_stalled_partitions 1.0" in metrics
        # a request that would wait for the stalled partition is answered at once
        answer = request("POST", f"{url}/transfers?wait=completed&timeout=10", orjson.dumps(
            {"request_id": "w2", "from": "w-a", "to": "w-b", "amount": 1}))
        assert answer.status == 503, answer.body
        assert answer.json()["error"] == "engine_stalled", answer.body   # and not sent
        engine.start("0")
        wait_until(lambda: get_json(f"{url}/health")["engine"] == "ok", 60, "progress again")
        assert wl.wait(60)
    finally:
        wl.close()
    assert_invariants(settings, wl)
