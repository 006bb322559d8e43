"""Coordinator under faults, on the session's local Ray (2 CPUs): workers that Ray cannot place
are reported as pending, not running; an evaluator whose loop fails is stopped and replaced."""
from __future__ import annotations

import contextlib
import os
import functools
import json
import logging
import re
import subprocess
import sys
import time
import urllib.request

import pytest
import ray

from ps_trainer.core.checkpoint import CheckpointManager
from ps_trainer.run.evaluator import Evaluator
from ps_trainer.run.launch import _log_progress, build_eval_model, start_coordinator, start_metrics
from ps_trainer.observe.progress import Progress
from ps_trainer.core.protocol import CoordinatorStatus, ServerStatus, SetupError
from ps_trainer.run.run_folder import RunFolder
from support import stop_run, wait_for

pytestmark = [pytest.mark.ray]


@pytest.fixture
def started(ray_session):
    """start(cfg) -> (coordinator, done ref, metrics port); everything is stopped at the end."""
    runs = []

    def start(cfg):
        hub, port = start_metrics(cfg)
        coordinator = start_coordinator(cfg, None, hub)
        done = coordinator.run.remote()
        runs.append((coordinator, done, hub))
        return coordinator, done, port

    yield start
    for coordinator, done, hub in runs:
        stop_run(coordinator, done, hub)


def status(coordinator) -> CoordinatorStatus:
    return ray.get(coordinator.status.remote(), timeout=30)


def test_workers_that_do_not_fit_are_pending_not_running(started, tiny_config, caplog):
    # server 0.25 + evaluator 0.25 + one 1-CPU worker fit in 2 CPUs; a second worker does not.
    cfg = tiny_config(tasks=("rotation",), extra=[
        "run.name=pending", "run.max_updates=100000", "eval.every_s=600",
        "tasks.rotation.num_cpus=1.0"])
    coordinator, _, port = started(cfg)
    wait_for(lambda: status(coordinator).workers["rotation"] == 1, what="the first worker")

    assert ray.get(coordinator.scale.remote("rotation", 2, 1.0)) == {"running": 1, "pending": 1}
    s = status(coordinator)
    assert s.workers["rotation"] == 1 and s.pending_workers["rotation"] == 1
    # the reply is typed all the way down, and its plain form is what `ps-trainer status` prints
    assert isinstance(s, CoordinatorStatus) and isinstance(s.servers[0], ServerStatus)
    plain = json.loads(json.dumps(s.to_dict(), default=str))
    assert plain["servers"][0]["version"] == s.servers[0].version >= 0
    assert plain["pending_workers"] == {"rotation": 1} and "snapshot_version" in plain

    def scraped():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        # every series also carries the run's name: match the task label among the others
        return all(re.search(name + r'\{[^}]*task="rotation"[^}]*\} 1\.0', text)
                   for name in ("ps_workers", "ps_workers_pending"))
    wait_for(scraped, what="the running and pending gauges")

    with caplog.at_level(logging.INFO, logger="ps_trainer.observe.progress"):
        _log_progress(Progress(cfg.task_names), s, cfg)
    assert "workers rotationx1(+1 pending)" in caplog.text

    address = ray.get_runtime_context().gcs_address
    answer = subprocess.run([sys.executable, "-m", "ps_trainer.tools.cli", "scale", "--address", address,
                             "--run", "pending", "--task", "rotation", "--workers", "2",
                             "--wait-s", "1"],
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("rotation: 1 worker running, 1 pending")

    start = time.monotonic()                 # a pending worker has nothing to drain
    assert ray.get(coordinator.scale.remote("rotation", 1)) == {"running": 1, "pending": 0}
    assert time.monotonic() - start < 5
    assert status(coordinator).pending_workers["rotation"] == 0


def test_a_failed_evaluator_is_stopped_and_its_replacement_checkpoints(started, tiny_config):
    # The evaluator takes 1 of the 2 CPUs: its replacement fits only once the failed one is gone.
    cfg = tiny_config(tasks=("rotation",), extra=[
        "run.name=evalfail", "run.max_updates=100000", "eval.every_s=1", "eval.num_cpus=1.0"])
    coordinator, done, _ = started(cfg)
    folder = RunFolder(cfg.run.out_dir)
    manager = CheckpointManager(folder.checkpoints, cfg.eval.keep_last)
    wait_for(manager.latest, what="a first checkpoint")
    # A tool holding the evaluator's handle (as handles() allows) keeps a failed actor alive:
    # the coordinator must stop it, not count on its handle going out of scope.
    failed = ray.get(coordinator.handles.remote())["evaluator"]

    with checkpoints_broken(folder):        # the next checkpoint raises NotADirectoryError
        wait_for(lambda: status(coordinator).restarts["evaluator"] >= 1, what="a restart")
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(failed.ping.remote(), timeout=60)
    broken_at = manager.latest()[1]["step"]
    wait_for(lambda: (manager.latest() or (None, {"step": -1}))[1]["step"] > broken_at,
             what="a checkpoint by the replacement evaluator")

    with checkpoints_broken(folder):        # the final evaluation fails: the run still ends
        coordinator.stop.remote()
        summary = ray.get(done, timeout=120)
    assert summary.runtime.done and summary.final is None and summary.miou is None
    assert summary.stopped_by == "stopped"


def test_an_evaluator_that_cannot_write_its_run_folder_fails_its_calls_not_its_process(
        ray_session, tiny_config, tmp_path):
    # Raised in the constructor of an actor with max_concurrency > 1, Ray aborts the process
    # (SIGABRT, a C++ stack trace) and the coordinator sees only ActorDiedError; raised by a
    # call, the coordinator logs the cause in one line and stops the actor itself.
    cfg = tiny_config(tasks=("rotation",))
    run_dir = tmp_path / "broken-run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoints folder belongs")
    evaluator = ray.remote(Evaluator).options(num_cpus=0, max_concurrency=2, max_restarts=0) \
        .remote(cfg, [], (), functools.partial(build_eval_model, cfg), str(run_dir))
    try:
        assert ray.get(evaluator.ping.remote(), timeout=60)
        with pytest.raises(ray.exceptions.RayTaskError) as raised:
            ray.get(evaluator.run.remote(), timeout=120)
        assert isinstance(raised.value.cause, SetupError)
        assert "FileExistsError" in str(raised.value.cause)
        with pytest.raises(ray.exceptions.RayTaskError):
            ray.get(evaluator.evaluate_now.remote({"final": True}), timeout=120)
        assert ray.get(evaluator.ping.remote(), timeout=60)      # alive until told to stop
    finally:
        ray.kill(evaluator)


def test_a_run_whose_workers_cannot_read_their_data_ends_failed_with_the_cause(started, tiny_config,
                                                                            tmp_path):
    missing = tmp_path / "no-such-dataset"
    cfg = tiny_config(tasks=("rotation",), extra=[
        "run.name=nodata", "run.max_updates=100000", "data.source=folder",
        f"data.root={missing}", "data.num_classes=3"])
    coordinator, done, _ = started(cfg)
    summary = ray.get(done, timeout=300)
    assert summary.stopped_by == "failed" and summary.updates == 0
    assert "could not start" in summary.error and str(missing) in summary.error
    assert "\n" not in summary.error
    # Each role gives up after its third failed setup; the first to do so ends the run.
    assert summary.runtime.restarts["worker"] <= 2 and summary.runtime.restarts["evaluator"] <= 2


def test_a_task_whose_first_step_fails_ends_the_run_but_what_others_trained_is_kept(
        started, tiny_config, tmp_path):
    # The fixed teacher is loaded on the first step: a missing file is a setup failure of the
    # two self_training workers, while rotation, segmentation and the evaluator are healthy.
    missing = tmp_path / "no-such-teacher.pt"
    cfg = tiny_config(tasks=("rotation", "segmentation", "self_training"), extra=[
        "run.name=noteacher", "run.max_updates=100000", "tasks.self_training.workers=2",
        "tasks.self_training.options.teacher=checkpoint",
        f"tasks.self_training.options.teacher_checkpoint={missing}"])
    coordinator, done, _ = started(cfg)
    summary = ray.get(done, timeout=300)
    assert summary.stopped_by == "failed"
    assert summary.error.startswith("worker self_training/") and str(missing) in summary.error
    assert "times in a row" in summary.error and "\n" not in summary.error
    # Each replica failed three times before the run ended (the last one is not replaced).
    assert summary.runtime.restarts["worker"] >= 5 and summary.runtime.restarts["evaluator"] == 0
    # The final evaluation ran and checkpointed what the healthy tasks trained.
    assert summary.miou is not None and summary.final["final"] is True
    latest = CheckpointManager(RunFolder(cfg.run.out_dir).checkpoints, 3).latest()
    assert latest is not None and str(latest[0]) == summary.final["checkpoint"]


@contextlib.contextmanager
def checkpoints_broken(folder: RunFolder):
    """Checkpointing fails while inside: the folder is a file (root ignores permissions)."""
    aside = folder.root / "checkpoints.aside"
    folder.checkpoints.rename(aside)
    folder.checkpoints.write_text("in the way\n")
    try:
        yield
    finally:
        folder.checkpoints.unlink()
        aside.rename(folder.checkpoints)


def test_an_evaluator_asking_for_a_gpu_the_driver_node_lacks_fails_at_start(ray_session,
                                                                             tiny_config,
                                                                             monkeypatch):
    """eval.num_gpus is counted with the workers' GPUs, and the evaluator runs on the driver's
    node: a GPU elsewhere in the cluster does not help, and no scaling adds one here."""
    from ps_trainer.run import launch
    from ps_trainer.config import ConfigError

    cfg = tiny_config(extra=["eval.num_gpus=1"])
    assert launch._driver_node_gpus() == 0                     # the session's Ray has no GPU
    with pytest.raises(ConfigError, match=r"asks for 1 GPUs \(evaluator 1"):
        launch.check_resources(cfg)
    have = ray.cluster_resources()
    monkeypatch.setattr(launch.ray, "cluster_resources", lambda: {**have, "GPU": 1.0})
    for autoscaling in (False, True):
        with pytest.raises(ConfigError, match="eval.num_gpus.*runs on this node.*which has 0"):
            launch.check_resources(cfg, autoscaling=autoscaling)
    launch.check_resources(tiny_config())                      # no GPU asked for: fine


def test_scaling_down_waits_for_no_worker_and_drops_the_retired_workers_series(started, tiny_config):
    """A retired worker that cannot finish its step (paused with SIGSTOP) holds neither the
    scale call nor the coordinator: both answer within half the stop grace; the worker is
    ended after its grace, and its series leave the metrics endpoint."""
    import signal

    from ps_trainer.run.coordinator import _STOP_GRACE_S

    cfg = tiny_config(tasks=("rotation",), extra=[
        "run.name=shrink", "run.max_updates=100000", "eval.every_s=600",
        "tasks.rotation.workers=2", "tasks.rotation.num_cpus=0.25"])
    coordinator, _, port = started(cfg)
    wait_for(lambda: status(coordinator).workers["rotation"] == 2, what="two workers")

    def has_series(replica: int) -> bool:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return re.search(r'ps_worker_steps_total\{[^}]*worker="%d"' % replica, text) is not None
    wait_for(lambda: has_series(1), what="the second worker's series")

    second = ray.get(coordinator.handles.remote())["workers"]["rotation"][1]
    pid = ray.get(second.process.remote(), timeout=30)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        counts = ray.get(coordinator.scale.remote("rotation", 1), timeout=_STOP_GRACE_S / 2)
        assert counts == {"running": 1, "pending": 0}
        assert ray.get(coordinator.status.remote(), timeout=_STOP_GRACE_S / 2).workers == {
            "rotation": 1}
        with pytest.raises(ray.exceptions.RayActorError):     # ended after its grace
            ray.get(second.ping.remote(), timeout=_STOP_GRACE_S * 6)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: not has_series(1), what="the retired worker's series to leave")
    assert has_series(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
