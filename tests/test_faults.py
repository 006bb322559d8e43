"""Faults on the session's local Ray, each test on a run of its own: actors killed with
ray.kill and with SIGKILL, every server actor restored from one snapshot, and a chaos run
finishing like an undisturbed run of the same seed. Tests wait on versions and restart
counts, not on seconds."""
from __future__ import annotations

import pytest
import ray

from ps_trainer.tools.chaos import checkpoints_valid, run_with_kills
from ps_trainer.run.launch import load_run_config, start_coordinator
from ps_trainer.transport.snapshots import take_snapshot
from conftest import tiny_overrides
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
    assert len({s["version"] for s in take_snapshot(new, "test", timeout_s=60)}) == 1
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


def chaos_config(root, name):
    return load_run_config(None, tiny_overrides(root / name, TASKS, extra=[
        f"run.name={name}", "run.max_updates=450", "server.actors=2",
        "server.snapshot_every_s=1", "metrics.enabled=false"]))


@pytest.fixture(scope="module")
def calm(ray_session, tmp_path_factory):
    """The undisturbed run the chaos runs are compared with (same seed and settings)."""
    summary, _ = run_with_kills(chaos_config(tmp_path_factory.mktemp("calm"), "calm"))
    return summary


def test_sigkill_chaos_run_finishes_like_an_undisturbed_run(calm, tmp_path):
    """Processes of every role die by SIGKILL; the run still finishes its updates, keeps
    valid checkpoints, never falls back further than its newest snapshot, and scores like
    the same seed undisturbed."""
    cfg = chaos_config(tmp_path, "chaos")
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


def test_a_chaos_run_survives_a_killed_coordinator_and_paused_actors(calm, tmp_path):
    """The coordinator dies by SIGKILL (taking every actor with it: the run resumes from its
    newest checkpoint), and a worker and a server actor are stopped with SIGSTOP for longer
    than the coordinator's call time-out, then continued: the run finishes its updates with
    valid checkpoints, paused actors are not taken for dead, and it scores like the same seed
    undisturbed."""
    from ps_trainer.run.coordinator import _CALL_TIMEOUT_S

    cfg = chaos_config(tmp_path, "chaos")
    faults = ("pause:server", "kill:coordinator", "pause:worker")
    stormy, done = run_with_kills(cfg, every_updates(80), faults=faults,
                                  pause_s=_CALL_TIMEOUT_S * 1.5)

    assert [f"{k.action}:{k.role}" for k in done][:3] == list(faults)
    assert stormy.updates >= 450 and stormy.final is not None
    # Over the whole run (every coordinator's): a pause restored nothing, replaced nothing.
    assert not stormy.runtime.restores and stormy.runtime.restarts["server"] == 0
    assert stormy.runtime.restarts["worker"] == 0
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


def test_restores_that_keep_failing_back_off_and_end_the_run_failed(ray_session, tmp_path, tiny):
    """Server actors that die while they load the restored state (here: their constructor
    raises on any state) are rebuilt a bounded number of times, further apart each time, and
    then the run ends as failed with the cause in one line: not rebuilt every half second
    until run.max_minutes and reported as a success."""
    import dataclasses
    import os
    import signal

    from ps_trainer.run.coordinator import _RESTORE_FAILURES, Coordinator
    from ps_trainer.run.launch import _runtime_spec
    from ps_trainer.run.run_folder import RunFolder, with_run_id
    from ps_trainer.transport.server import ParameterServer

    class RefusesEveryState(ParameterServer):
        def __init__(self, cfg, index, initial, task_keys, state, *args):
            if state is not None:
                raise RuntimeError("this state cannot be loaded (injected)")
            super().__init__(cfg, index, initial, task_keys, state, *args)

    cfg = with_run_id(load_run_config(None, tiny(tmp_path, TASKS, extra=[
        "run.max_updates=100000", "run.max_minutes=10", "metrics.enabled=false",
        "server.snapshot_every_s=0.5", "eval.every_s=1e9"])))
    run = RunFolder(cfg.run.out_dir).create(cfg, False, resuming=False)
    spec = dataclasses.replace(_runtime_spec(cfg, None),
                               server_cls=ray.remote(RefusesEveryState))
    coordinator = ray.remote(Coordinator).options(num_cpus=0, max_concurrency=8).remote(
        cfg, str(run.root), spec, None)
    try:
        ray.get(coordinator.start.remote(), timeout=120)
        done = coordinator.run.remote()
        wait_for(lambda: (status(coordinator).snapshot_version or 0) >= 10, 120,
                 what="a snapshot to restore from")
        pid = ray.get(handles(coordinator)["servers"][0].process.remote())["pid"]
        os.kill(pid, signal.SIGKILL)
        summary = ray.get(done, timeout=300)
    finally:
        ray.kill(coordinator)
    assert summary.stopped_by == "failed" and "\n" not in summary.error
    assert summary.error.startswith("the server actors could not be restored")
    assert "this state cannot be loaded (injected)" in summary.error
    # the first restore and one per failure; the last failure gives up instead of restoring
    assert summary.runtime.restarts["server"] == _RESTORE_FAILURES
    restores = summary.runtime.restores
    assert len(restores) == _RESTORE_FAILURES and {r["source"] for r in restores} == {"snapshot"}
    # backed off: each failed restore waits twice as long as the one before (1 s, 2 s, ...)
    gaps = [b["at_s"] - a["at_s"] for a, b in zip(restores, restores[1:])]
    assert all(gap >= 0.9 * 2 ** i for i, gap in enumerate(gaps)), gaps
    # the run ended at once, not at run.max_minutes
    assert summary.elapsed_s < restores[-1]["at_s"] + 120


@pytest.mark.parametrize("snapshot_every_s", [0.0, 1.0])
def test_a_sigkilled_coordinator_is_replaced_and_the_run_resumes_where_it_was(
        ray_session, tmp_path, tiny, caplog, snapshot_every_s):
    """The coordinator takes the run's actors with it when it dies; `train` (run_distributed)
    starts a new one that resumes the run, the same run, and finishes it: from the driver's
    own snapshot of the servers (a second or so back), or without snapshots from the newest
    checkpoint. Evaluations after the kill go on from the version resumed, never from 0."""
    import json
    import logging
    import os
    import re
    import signal
    import threading

    from ps_trainer.core.checkpoint import CheckpointManager, saved_version
    from ps_trainer.run.launch import COORDINATOR_PREFIX, run_distributed
    from ps_trainer.run.run_folder import RunFolder

    cfg = load_run_config(None, tiny(tmp_path, TASKS, extra=[
        "run.name=headless", "run.max_updates=400", "run.max_minutes=10",
        "metrics.enabled=false", "eval.every_updates=150", "eval.every_s=1e9",
        f"server.snapshot_every_s={snapshot_every_s}"]))
    result = {}
    driver = threading.Thread(target=lambda: result.update(summary=run_distributed(cfg)),
                              daemon=True)
    with caplog.at_level(logging.WARNING, logger="ps_trainer.run.launch"):
        driver.start()
        manager = CheckpointManager(RunFolder(cfg.run.out_dir).checkpoints, cfg.eval.keep_last)
        wait_for(lambda: manager.latest() is not None and saved_version(manager.latest()[1]) >= 150,
                 240, what="a checkpoint at version 150 or later")
        run_id = manager.latest()[1]["config"]["run"]["id"]
        # (no handle kept here: Ray frees a dead actor's name once no handle to it is left)
        name = COORDINATOR_PREFIX + cfg.run.name
        coordinator = lambda: ray.get_actor(name, namespace=cfg.ray.namespace)  # noqa: E731
        checkpointed = saved_version(manager.latest()[1])
        if snapshot_every_s:   # well past the checkpoint (far from the next, 150 further on),
            # so that the driver's snapshot, a second or two behind, is the newer state
            wait_for(lambda: ray.get(coordinator().status.remote()).version >= checkpointed + 60,
                     120, what="60 updates past the checkpoint")
        os.kill(ray.get(coordinator().process.remote(), timeout=30)["pid"], signal.SIGKILL)
        driver.join(timeout=400)
    assert not driver.is_alive(), "the run did not finish"
    summary = result["summary"]
    assert summary.stopped_by == "max_updates" and summary.updates >= 400 and summary.error is None
    assert "the coordinator died" in caplog.text
    if snapshot_every_s:
        found = re.search(r"resuming the run from the driver's snapshot at version (\d+)",
                          caplog.text)
        assert found, caplog.text
        assert int(found.group(1)) > checkpointed    # newer than the checkpoint: less lost
    else:
        assert "resuming the run from checkpoint" in caplog.text
    steps = [json.loads(line)["step"]
             for line in RunFolder(cfg.run.out_dir).metrics.read_text().splitlines()]
    reached = next(i for i, step in enumerate(steps) if step >= checkpointed)
    # a run started again from version 0 would evaluate at 150 again
    assert min(steps[reached:]) >= checkpointed and steps[-1] >= 400, steps
    assert manager.latest()[1]["config"]["run"]["id"] == run_id               # the same run


def test_a_sigkilled_driver_run_again_with_resume_if_present_continues_the_run(
        ray_session, tmp_path, tiny):
    """The driver (`ps-trainer train`) owns the coordinator: when it dies the job's actors go
    with it. Run again as a retried job runs it (`--resume-if-present`, the RayJob's
    entrypoint), it continues the same run from its newest checkpoint instead of refusing the
    folder or starting over."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from ps_trainer.core.checkpoint import CheckpointManager, saved_version
    from ps_trainer.run.run_folder import RunFolder

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    overrides = tiny(tmp_path, TASKS, extra=[
        "run.name=driverless", "run.max_updates=300", "run.max_minutes=10",
        "metrics.enabled=false", "eval.every_updates=60", "eval.every_s=1e9"])
    command = [sys.executable, "-m", "ps_trainer.tools.cli", "train", "--address",
               ray.get_runtime_context().gcs_address, "--config", str(empty),
               "--resume-if-present", *[w for o in overrides for w in ("--set", o)]]
    out_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run.out_dir="))
    manager = CheckpointManager(RunFolder(out_dir).checkpoints, 3)
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: manager.latest() is not None and saved_version(manager.latest()[1]) >= 120,
                 240, what="a checkpoint at version 120 or later")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    killed_after = saved_version(manager.latest()[1])
    run_id = manager.latest()[1]["config"]["run"]["id"]

    again = subprocess.run(command, capture_output=True, text=True, timeout=400,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "final mIoU:" in again.stdout
    steps = [json.loads(line)["step"] for line in RunFolder(out_dir).metrics.read_text().splitlines()]
    reached = next(i for i, step in enumerate(steps) if step >= killed_after)
    assert min(steps[reached:]) >= killed_after and steps[-1] >= 300, steps
    assert manager.latest()[1]["config"]["run"]["id"] == run_id           # the same run
