"""The coordinator's policies, driven without Ray (ps_trainer/run/policies.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ps_trainer.run.policies import (EVALUATOR, Action, CoordinatorDeaths, Exit, Ping,
                                     RecoveryLog, Restore,
                                     RestoreAttempts, RestoreSource, ServerHealth, WorkerRestarts,
                                     choose_restore_point, final_evaluation_timeout, plan_resize,
                                     snapshot_fetch_timeout, worker_key)


def test_the_policies_need_no_ray():
    import ps_trainer.run.policies as policies

    tree = ast.parse(Path(policies.__file__).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.split(".")[0] == "ray" for m in modules)


# --------------------------------------------------------------------------- servers

def test_a_server_is_dead_at_once_when_ray_says_it_died():
    health = ServerHealth(unanswered_limit=3)
    assert health.observe(0, Ping.ANSWERED) is False
    assert health.observe(0, Ping.DIED) is True


def test_unanswered_pings_count_in_a_row_per_server():
    health = ServerHealth(unanswered_limit=3)
    assert [health.observe(1, Ping.UNAVAILABLE) for _ in range(2)] == [False, False]
    assert health.observe(0, Ping.UNAVAILABLE) is False      # another server's count
    assert health.observe(1, Ping.ANSWERED) is False         # answered: the run is over
    assert [health.observe(1, Ping.UNAVAILABLE) for _ in range(3)] == [False, False, True]
    health.reset()
    assert health.observe(1, Ping.UNAVAILABLE) is False


# --------------------------------------------------------------------------- restore point

@pytest.mark.parametrize("snapshot, checkpoint, source", [
    (120, 100, RestoreSource.SNAPSHOT),
    (100, 100, RestoreSource.SNAPSHOT),      # the same point: no disk read
    (80, 100, RestoreSource.CHECKPOINT),     # a checkpoint written after the snapshot
    (None, 100, RestoreSource.CHECKPOINT),   # no snapshot yet, or lost with its node
    (50, None, RestoreSource.SNAPSHOT),
    (None, None, RestoreSource.INITIAL),
])
def test_the_restore_point_is_the_newest_consistent_state(snapshot, checkpoint, source):
    assert choose_restore_point(snapshot, checkpoint) is source


# --------------------------------------------------------------------------- resize

def test_a_resize_fills_the_smallest_free_replicas_and_retires_the_newest():
    assert plan_resize([], 3).add == (0, 1, 2)
    grow = plan_resize([0, 2], 4)
    assert (grow.add, grow.retire) == ((1, 3), 0)
    shrink = plan_resize([0, 1, 2], 1)
    assert (shrink.add, shrink.retire) == ((), 2)
    same = plan_resize([0, 1], 2)
    assert (same.add, same.retire) == ((), 0)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        plan_resize([0], -1)


# --------------------------------------------------------------------------- restarts

def test_each_actor_of_a_replica_has_its_own_restart_number():
    fresh = WorkerRestarts()
    assert [fresh.restart_number("rotation", 0) for _ in range(3)] == [0, 1, 2]
    assert fresh.restart_number("rotation", 1) == 0
    resumed = WorkerRestarts(resumed_from=500)
    numbers = [resumed.restart_number("rotation", 0) for _ in range(2)]
    assert len(set(numbers)) == 2 and not set(numbers) & {0, 1, 2}


def test_a_dead_or_failed_actor_is_replaced_and_counted():
    restarts = WorkerRestarts()
    peers = [worker_key("jigsaw", 0)]
    for exit in (Exit.DIED, Exit.UNAVAILABLE, Exit.RETURNED, Exit.FAILED):
        assert restarts.ended("worker", peers[0], exit, peers, "err") is Action.REPLACE
    assert restarts.ended(EVALUATOR, EVALUATOR, Exit.DIED, [EVALUATOR]) is Action.REPLACE
    assert restarts.counts == {"worker": 4, "server": 0, "evaluator": 1}
    assert restarts.failure is None


def test_the_run_ends_only_when_every_peer_failed_to_set_up_often_enough():
    restarts = WorkerRestarts(setup_attempts=3)
    a, b = worker_key("segmentation", 0), worker_key("segmentation", 1)
    for _ in range(3):
        assert restarts.ended("worker", a, Exit.SETUP_FAILED, [a, b], "no labels") is Action.REPLACE
    assert restarts.given_up(a) and not restarts.given_up(b)
    for _ in range(2):
        assert restarts.ended("worker", b, Exit.SETUP_FAILED, [a, b], "no labels") is Action.REPLACE
    restarts.set_up(b)                               # b came up once: its count starts again
    for _ in range(2):
        assert restarts.ended("worker", b, Exit.SETUP_FAILED, [a, b], "no labels") is Action.REPLACE
    assert restarts.ended("worker", b, Exit.SETUP_FAILED, [a, b], "no labels") is Action.END_RUN
    assert restarts.failure == "no labels (failed 3 times in a row; the run is stopped)"
    assert restarts.counts["worker"] == 7            # the ending failure starts no replacement


def test_a_retired_worker_counts_no_more():
    restarts = WorkerRestarts(setup_attempts=1)
    a, b = worker_key("rotation", 0), worker_key("rotation", 1)
    restarts.ended("worker", b, Exit.SETUP_FAILED, [a, b], "bad")   # a is fine: replace
    assert restarts.failure is None
    restarts.forget(b)
    assert not restarts.given_up(b)


def test_failures_while_the_run_finishes_are_not_counted():
    restarts = WorkerRestarts(setup_attempts=1)
    restarts.finishing = True
    assert restarts.ended(EVALUATOR, EVALUATOR, Exit.SETUP_FAILED, [EVALUATOR], "x") is Action.REPLACE
    assert restarts.failure is None and not restarts.given_up(EVALUATOR)
    # the final evaluation ends the evaluator's loop: that is no death
    assert restarts.ended(EVALUATOR, EVALUATOR, Exit.RETURNED, [EVALUATOR]) is Action.NOTHING


def test_an_evaluator_that_returns_before_the_end_is_replaced():
    restarts = WorkerRestarts()
    assert restarts.ended(EVALUATOR, EVALUATOR, Exit.RETURNED, [EVALUATOR]) is Action.REPLACE


def test_the_final_evaluation_time_limit_follows_the_last_evaluation():
    assert final_evaluation_timeout(300.0, None, 3.0) == 300.0
    assert final_evaluation_timeout(300.0, 50.0, 3.0) == 300.0
    assert final_evaluation_timeout(300.0, 400.0, 3.0) == 1200.0


def test_the_recovery_log_is_bounded():
    log = RecoveryLog(keep_seconds=2, keep_restores=3)
    for i in range(5):
        log.restored(i * 10, i * 10 - 5, RestoreSource.SNAPSHOT, float(i), at_s=100.0 + i)
    assert log.recovery_s == [3.0, 4.0]
    assert [r["from"] for r in log.restores] == [20, 30, 40]
    assert log.restores[-1] == {"from": 40, "to": 35, "source": "snapshot", "seconds": 4.0,
                                "at_s": 104.0}


def test_restores_that_keep_failing_back_off_then_give_up():
    attempts = RestoreAttempts(max_failures=3, first_backoff_s=1.0)
    assert attempts.dead(now=0.0) is Restore.NOW          # a death: restore at once
    attempts.restoring()
    # the restored actors die before answering: each failure doubles the wait
    assert attempts.dead(now=1.0, error="KeyError: 'trunk'") is Restore.WAIT
    assert attempts.dead(now=1.5) is Restore.WAIT          # seen again: not a second failure
    assert attempts.failures == 1
    assert attempts.dead(now=2.0) is Restore.NOW
    attempts.restoring()
    assert attempts.dead(now=2.5) is Restore.WAIT
    assert attempts.dead(now=4.4) is Restore.WAIT and attempts.dead(now=4.5) is Restore.NOW
    attempts.restoring()
    assert attempts.dead(now=5.0) is Restore.GIVE_UP
    assert attempts.why() == ("the server actors could not be restored (3 tries in a row failed: "
                              "KeyError: 'trunk'); the run is stopped")


def test_a_restore_whose_actors_answer_ends_the_streak():
    attempts = RestoreAttempts(max_failures=2)
    attempts.dead(now=0.0)
    attempts.restoring()
    assert attempts.dead(now=0.1) is Restore.WAIT
    assert attempts.dead(now=10.0) is Restore.NOW
    attempts.restoring()
    attempts.answered()
    assert attempts.failures == 0
    assert attempts.dead(now=10.5) is Restore.NOW          # a later death is a new streak


def test_states_that_do_not_fit_the_plan_are_named():
    import numpy as np

    from ps_trainer.core.params import Piece, states_misfit

    plan = (Piece("trunk@0:4", "trunk", 0, 4, 0), Piece("trunk@4:8", "trunk", 4, 8, 1),
            Piece("head/a", "head/a", 0, 2, 1))
    good = [{"version": 7, "weights": {"trunk@0:4": np.zeros(4)}},
            {"version": 7, "weights": {"trunk@4:8": np.zeros(4), "head/a": np.zeros(2)}}]
    assert states_misfit(good, plan) is None
    summary = [{"version": 7, "weights": {"trunk@0:4": 4}},
               {"version": 7, "weights": {"trunk@4:8": 4, "head/a": 2}}]
    assert states_misfit(summary, plan) is None
    assert "1 server state(s) for 2" in states_misfit(good[:1], plan)
    skewed = [good[0], {**good[1], "version": 8}]
    assert states_misfit(skewed, plan) == "the actors' states are at versions [7, 8], not at one"
    resized = [good[0], {"version": 7, "weights": {"trunk@4:8": np.zeros(5), "head/a": np.zeros(2)}}]
    assert "trunk@4:8 have other sizes" in states_misfit(resized, plan)
    other = [good[0], {"version": 7, "weights": {"trunk@4:8": np.zeros(4), "head/b": np.zeros(2)}}]
    assert "head/a, head/b" in states_misfit(other, plan)


def test_a_larger_snapshot_is_waited_for_longer():
    small = snapshot_fetch_timeout(10**6, 120.0, 50e6)
    large = snapshot_fetch_timeout(20 * 10**9, 120.0, 50e6)   # 20 GB: Adam on a large model
    assert 120.0 < small < 121.0 and large == pytest.approx(520.0)


def test_coordinator_deaths_are_given_up_only_in_a_row_without_progress():
    deaths = CoordinatorDeaths(limit=3)
    # Each death resumes from a newer state: the run makes progress, it goes on for ever.
    assert all(deaths.restart(v) for v in (100, 300, 500, 700, 900))
    assert deaths.in_a_row == 1
    # Deaths that resume from the same state again are counted; the fourth is given up.
    assert [deaths.restart(900) for _ in range(3)] == [True, True, False]
    # With nothing to resume from, the same: three restarts from the start, then given up.
    fresh = CoordinatorDeaths(limit=3)
    assert [fresh.restart(None) for _ in range(4)] == [True, True, True, False]
