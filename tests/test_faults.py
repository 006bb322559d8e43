"""Faults on the session's local Ray, each test on a run of its own: actors killed with
ray.kill and with SIGKILL, every server actor restored from one snapshot, and a chaos run
finishing like an undisturbed run of the same seed. Tests wait on versions and restart
counts, not on seconds."""
from __future__ import annotations

import pytest
import ray

from ps_trainer.tools.chaos import checkpoints_valid, run_with_kills
from ps_trainer.run.launch import load_run_config, start_coordinator
from support import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TASKS = ("rotation", "colorization", "segmentation")


@pytest.fixture
def started(ray_session, tmp_path, tiny):
    """started(extra) -> (coordinator, its run() ref); stopped and freed after the test."""
    runs = []

    def start(extra=()):
        cfg = load_run_config(None, tiny(tmp_path, TASKS, extra=[
            "run.max_updates=100000", "run.max_minutes=10", "metrics.enabled=false", *extra]))
        coordinator = start_coordinator(cfg)
        runs.append(coordinator)
        return coordinator, coordinator.run.remote()

    yield start
    for coordinator in runs:
        coordinator.stop.remote()
        ray.kill(coordinator)


def status(coordinator):
    return ray.get(coordinator.status.remote())


def handles(coordinator) -> dict:
    return ray.get(coordinator.handles.remote())


def version(coordinator) -> int:
    return status(coordinator).version or 0


def applied(coordinator, task) -> int:
    servers = status(coordinator).servers
    return servers[0].applied[task] if servers else 0


def test_ray_killed_worker_and_evaluator_are_replaced(started):
    coordinator, _ = started()
    wait_for(lambda: version(coordinator) >= 20, 120, what="training to start")
    victim = handles(coordinator)["workers"]["colorization"][0]
    ray.kill(victim, no_restart=True)
    wait_for(lambda: status(coordinator).restarts["worker"] == 1, what="a replacement worker")
    assert handles(coordinator)["workers"]["colorization"][0] != victim
    # The replacement draws new batches: its restart number follows the first actor's.
    workers = handles(coordinator)["workers"]
    assert ray.get(workers["colorization"][0].status.remote()).restart == 1
    assert ray.get(workers["rotation"][0].status.remote()).restart == 0
    count = applied(coordinator, "colorization")
    wait_for(lambda: applied(coordinator, "colorization") > count + 5, 90,
             what="colorization updates from the new worker")

    ray.kill(handles(coordinator)["evaluator"], no_restart=True)
    wait_for(lambda: status(coordinator).restarts["evaluator"] == 1, what="a new evaluator")
    evaluated = status(coordinator).latest_eval
    wait_for(lambda: (status(coordinator).latest_eval or {}).get("step", -1) >
             (evaluated or {}).get("step", -1), 60, what="an evaluation by the new evaluator")


def test_a_dead_server_actor_brings_every_server_actor_back_from_one_snapshot(started):
    # No checkpoint is ever written: the only way back to a version > 0 is the snapshot.
    coordinator, _ = started(["server.actors=2", "server.snapshot_every_s=0.5",
                              "eval.every_s=1e9"])
    wait_for(lambda: (status(coordinator).snapshot_version or 0) >= 30, 120,
             what="a snapshot at version >= 30")
    before = status(coordinator)
    old = handles(coordinator)["servers"]
    ray.kill(old[1], no_restart=True)                     # the actor that does not decide
    wait_for(lambda: status(coordinator).restarts["server"] == 1, 60,
             what="the server actors to be replaced")
    after = status(coordinator)
    restore = after.restores[-1]
    assert restore["source"] == "snapshot" and restore["to"] >= before.snapshot_version
    new = handles(coordinator)["servers"]
    assert new[0] != old[0] and new[1] != old[1]          # the survivor was replaced too
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(old[0].ping.remote(), timeout=30)
    # One point in time: a snapshot (which actor 0 takes through its ordered channel to the
    # other actor) finds both at one version. Their status replies may differ by a push that
    # is being committed, since training goes on at once.
    assert len({s["version"] for s in ray.get(new[0].snapshot.remote(), timeout=60)}) == 1
    wait_for(lambda: version(coordinator) > restore["to"] + 20, 90, what="training to resume")
    assert status(coordinator).restarts["worker"] == 0  # workers re-pulled, none replaced
    server = ray.get(new[0].status.remote())            # counts go on from the snapshot's
    assert sum(server.applied.values()) == server.version


def every_updates(n: int):
    """A kill schedule: one kill whenever the run has gained `n` versions since the last
    (versions, not seconds: the same schedule on a fast or a loaded machine)."""
    last = [0]

    def due(status) -> bool:
        v = status.version
        if v is None or not status.servers or v < last[0] + n:
            return False
        last[0] = v
        return True
    return due


def test_sigkill_chaos_run_finishes_like_an_undisturbed_run(ray_session, tmp_path, tiny):
    """Processes of every role die by SIGKILL; the run still finishes its updates, keeps
    valid checkpoints, never falls back further than its newest snapshot, and scores like
    the same seed undisturbed."""
    def config(name):
        return load_run_config(None, tiny(tmp_path / name, TASKS, extra=[
            f"run.name={name}", "run.max_updates=450", "server.actors=2",
            "server.snapshot_every_s=1", "metrics.enabled=false"]))

    calm, _ = run_with_kills(config("calm"))
    cfg = config("chaos")
    stormy, kills = run_with_kills(cfg, every_updates(60), roles=("server", "worker", "evaluator"))

    assert {k.role for k in kills} == {"server", "worker", "evaluator"}
    assert stormy.updates >= 450 and stormy.final is not None
    for role in ("server", "worker", "evaluator"):
        assert stormy.runtime.restarts[role] >= sum(k.role == role for k in kills) >= 1
    server_kills = [k for k in kills if k.role == "server"]
    restores = stormy.runtime.restores
    assert len(restores) == len(server_kills)
    for kill, restore in zip(server_kills, restores):
        assert restore["to"] >= (kill.snapshot_version or 0)   # no further back than the snapshot
    valid, total = checkpoints_valid(cfg.run.out_dir, cfg.eval.keep_last)
    assert total > 0 and valid == total
    assert abs(stormy.miou - calm.miou) < 0.1, (stormy.miou, calm.miou)


def test_a_server_paused_past_the_ping_time_out_is_not_taken_for_dead(started):
    """SIGSTOP a server actor for longer than a control call's time-out, then SIGCONT it:
    nothing is restored (no rollback), no worker is replaced (no duplicate replicas), and
    training goes on from where it was."""
    import os
    import signal
    import time

    from ps_trainer.run.coordinator import _CALL_TIMEOUT_S

    coordinator, _ = started()
    wait_for(lambda: version(coordinator) >= 20, 120, what="training to start")
    server = handles(coordinator)["servers"][0]
    pid = ray.get(server.process.remote())["pid"]
    paused_at = version(coordinator)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(_CALL_TIMEOUT_S * 1.5)          # the fault itself: a pause this long
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: version(coordinator) > paused_at + 20, 120, what="training to go on")
    after = status(coordinator)
    assert after.restarts["server"] == 0 and not after.restores
    assert after.restarts["worker"] == 0
    assert handles(coordinator)["servers"][0] == server
    assert all(len(ws) == 1 for ws in handles(coordinator)["workers"].values())


def test_a_chaos_run_never_replaces_another_runs_checkpoints(ray_session, tmp_path, tiny):
    """run_with_kills claims its folder like train does: a kept run there is refused."""
    from ps_trainer.run.launch import run_local
    from ps_trainer.run.run_folder import RunFolderInUse

    cfg = load_run_config(None, tiny(tmp_path, TASKS, extra=["run.max_updates=6",
                                                             "eval.every_s=600"]))
    run_local(cfg)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(RunFolderInUse):
        run_with_kills(cfg)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == kept
