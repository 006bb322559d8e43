"""Build and start a run; the composition root (the one module of ps_trainer that imports workers).

    cfg = load_run_config("configs/quickstart.yaml", ["run.max_updates=500"])
    summary = run_local(cfg)          # single process, synchronous
    summary = run_distributed(cfg)    # parameter server + workers + evaluator on Ray
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
import torch

from ps_trainer.core.checkpoint import CheckpointManager, load_checkpoint, saved_plan, saved_version
from ps_trainer.config import Config, ConfigError, config_to_dict
from ps_trainer.run.coordinator import Coordinator, RuntimeSpec
from ps_trainer.data.splits import check_splits_here
from ps_trainer.data.streams import restart_number
from ps_trainer.run.evaluator import SEGMENTATION, EvalResult, Evaluator, make_evaluation_loop
from ps_trainer.run.local import LocalTrainer
from ps_trainer.observe.metrics import MetricsHub
from ps_trainer.model import MultiTaskModel, shard_of
from ps_trainer.core.params import (FlatModel, Piece, ShardLayout, load_norm_stats, load_pieces,
                                    plan_pieces, states_misfit)
from ps_trainer.observe.progress import Progress
from ps_trainer.core.protocol import CoordinatorStatus, RunGivenUp
from ps_trainer.run.config_gate import load_run_config, saved_run_config
from ps_trainer.run.policies import CoordinatorDeaths
from ps_trainer.run.run_folder import RunFolder, with_run_id
from ps_trainer.run.standby import Standby
from ps_trainer.core.runtime import pick_device, prepare_compute, set_threads, usable_cores
from ps_trainer.core.schedule import RunSummary
from ps_trainer.transport.server import ParameterServer
from ps_trainer_workers.assembly import build_model, build_task, build_tasks, task_shards
from ps_trainer_workers.precision import StepPrecision
from ps_trainer_workers.worker import TaskLoop, TaskWorker, task_inputs

log = logging.getLogger(__name__)
COORDINATOR_PREFIX = "coordinator:"
# A coordinator that dies takes the run's actors with it (they are its own); the driver resumes
# the run this many times in a row without progress before it gives up (CoordinatorDeaths).
_COORDINATOR_RESTARTS = 3
_CALL_TIMEOUT_S = 10.0
_SNAPSHOT_FETCH_S = 120.0   # how long a restart waits for the driver's snapshot before the checkpoint


def build_eval_model(cfg: Config) -> MultiTaskModel:
    """Trunk + segmentation head, the layout the evaluator loads server weights into."""
    return build_model(cfg, {"segmentation": build_task(cfg, "segmentation")}, seed=cfg.run.seed)


def initial_model(cfg: Config) -> tuple[MultiTaskModel, FlatModel]:
    model = build_model(cfg, build_tasks(cfg), seed=cfg.run.seed)
    return model, FlatModel(model, ShardLayout.of(model, shard_of))


# --------------------------------------------------------------------------- local

def run_local(cfg: Config, resume: Optional[dict] = None,
              initial: Optional[dict[str, np.ndarray]] = None, frozen: tuple[str, ...] = (),
              overwrite: bool = False) -> RunSummary:
    """Train every task in this process (round-robin, one optimizer); returns a summary.

    `initial` replaces the starting weights of some shards (e.g. a pretrained trunk);
    `frozen` shards are never updated. A new run refuses a folder holding another run's
    checkpoints unless `overwrite` (see ``run_folder.py``)."""
    cfg = with_run_id(cfg)
    run = RunFolder(cfg.run.out_dir).create(cfg, overwrite, resuming=resume is not None)
    set_threads(cfg.ray.num_cpus or torch.get_num_threads())
    device = pick_device(cfg.run.device)
    model, _ = initial_model(cfg)
    model.to(device)
    prepare_compute(cfg.run, model, device)
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    for shard, array in (initial or {}).items():
        flat.load(shard, np.ascontiguousarray(array, dtype=np.float32))
    if resume is not None and len(resume["servers"]) != 1:
        raise ValueError("this checkpoint comes from a sharded server; resume it distributed")
    # A resumed run draws new batches, not those its first steps drew (data/streams.py).
    restart = restart_number(0, saved_version(resume) if resume else None)
    names = [name for name in cfg.task_names if cfg.tasks[name].workers > 0]
    # The tasks step in turn and share this machine's cores (their loaders, data.loader_workers
    # auto, included).
    cores = usable_cores() / max(len(names), 1)
    loops = {name: _shared_loop(cfg, name, flat, device, restart, cores) for name in names}
    try:
        eval_loop = make_evaluation_loop(cfg, functools.partial(build_eval_model, cfg), device)
        trainer = LocalTrainer(cfg, flat, loops, eval_loop, run, frozen)
        if resume is not None:
            trainer.store.load_state(resume["servers"][0])
        summary = trainer.train()
    finally:
        for loop in loops.values():
            loop.sampler.close()                   # loader processes, if any
    _log_done(summary)
    return summary


def _shared_loop(cfg: Config, name: str, flat: FlatModel, device, restart: int = 0,
                 num_cpus: Optional[float] = None) -> TaskLoop:
    """A task loop that trains the shared model (instead of a private copy)."""
    task, sampler, rng = task_inputs(cfg, name, 0, restart, device, num_cpus)
    return TaskLoop(task, flat, sampler, rng, device, StepPrecision.of(cfg.run, device))


# --------------------------------------------------------------------------- distributed

def connect(cfg: Config, address: Optional[str] = None) -> None:
    """Join `address` (or cfg.ray.address, or the RAY_ADDRESS a Ray job's driver is given), or
    start a local Ray of this process's own; reuse one already initialised here. Without an
    address a new local instance starts even where `ray start` left a cluster behind (whose
    head may be long dead: joining it would hang on "Failed to get cluster ID from GCS")."""
    if ray.is_initialized():
        return
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=cfg.ray.namespace, logging_level=logging.WARNING)
    else:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
                 include_dashboard=cfg.ray.include_dashboard, namespace=cfg.ray.namespace,
                 object_store_memory=cfg.ray.object_store_memory_bytes,
                 logging_level=logging.WARNING)


def check_resources(cfg: Config, autoscaling: bool = False) -> None:
    """Fail at start, not hang, when the actors ask for more CPUs/GPUs than the cluster has.
    On a cluster that may still scale up (`autoscaling`), warn instead: Ray queues the actors
    until nodes join."""
    have = ray.cluster_resources()
    cpus = (cfg.server.num_cpus * cfg.server.actors + cfg.eval.num_cpus
            + sum(t.workers * t.num_cpus for t in cfg.tasks.values()))
    gpus = cfg.eval.num_gpus + sum(t.workers * t.num_gpus for t in cfg.tasks.values())
    problems = []
    if cpus > have.get("CPU", 0) + 1e-9:
        problems.append(f"the run asks for {cpus:g} CPUs (server {cfg.server.num_cpus:g} x "
                        f"{cfg.server.actors}, evaluator {cfg.eval.num_cpus:g}, workers x num_cpus)"
                        f" but the cluster has {have.get('CPU', 0):g}; lower "
                        f"tasks.<name>.num_cpus or workers (fractions allowed)")
    if gpus > have.get("GPU", 0) + 1e-9:
        problems.append(f"the run asks for {gpus:g} GPUs (evaluator {cfg.eval.num_gpus:g}, "
                        f"workers x num_gpus) but the cluster has {have.get('GPU', 0):g}")
    for problem in problems:
        if not autoscaling:
            raise ConfigError("tasks", problem)
        log.warning("%s; waiting for the cluster to scale up", problem)
    # The evaluator is placed on this node (it writes the run folder): no scaling adds GPUs here.
    if cfg.eval.num_gpus > 0 and cfg.eval.num_gpus > _driver_node_gpus() + 1e-9:
        raise ConfigError("eval.num_gpus", f"{cfg.eval.num_gpus:g} GPUs asked for, but the "
                          f"evaluator runs on this node (it writes the run folder), which has "
                          f"{_driver_node_gpus():g}")


def _driver_node_gpus() -> float:
    """GPUs of the node this process runs on, as Ray counts them."""
    here = ray.get_runtime_context().get_node_id()
    return next((n["Resources"].get("GPU", 0.0) for n in ray.nodes()
                 if n["NodeID"] == here and n["Alive"]), 0.0)


def check_resume(cfg: Config, checkpoint: dict, plan: Sequence[Piece]) -> None:
    """Refuse, in one line naming what changed, a checkpoint this run's servers cannot be
    built from: another number of server actors, another model or tasks (another plan of
    pieces), another optimizer (other state per parameter)."""
    saved = checkpoint.get("servers", [])
    if len(saved) != cfg.server.actors:
        raise ValueError(f"the checkpoint holds {len(saved)} server actor state(s) but the run "
                         f"asks for server.actors={cfg.server.actors}: resume with "
                         f"server.actors={len(saved)} (the weights are split per actor)")
    before = {(p["key"], p["shard"], p["stop"] - p["start"], p["server"])
              for p in checkpoint.get("plan", [])}
    now = {(p.key, p.shard, p.stop - p.start, p.server) for p in plan}
    if before != now:
        changed = sorted({k for k, *_ in before ^ now})
        raise ValueError(f"the checkpoint's model does not fit this run's: pieces "
                         f"{', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''} differ "
                         f"(a changed model, task list or head): resume with the checkpoint's "
                         f"model and tasks")
    saved_opt = checkpoint.get("config", {}).get("optimizer", {}).get("name")
    if saved_opt is not None and saved_opt != cfg.optimizer.name:
        raise ValueError(f"the checkpoint was trained with optimizer.name={saved_opt}, the run "
                         f"asks for {cfg.optimizer.name}: its optimizer state would not fit")


def _runtime_spec(cfg: Config, resume: Optional[dict]) -> RuntimeSpec:
    _, flat = initial_model(cfg)
    plan = plan_pieces(flat.layout, cfg.server.actors)
    if resume is not None:
        check_resume(cfg, resume, plan)
    params = flat.param_arrays()
    initial = [ray.put({p.key: np.ascontiguousarray(params[p.shard][p.start: p.stop])
                        for p in plan if p.server == i}) for i in range(cfg.server.actors)]
    task_keys = {t: tuple(p.key for p in plan if p.shard in shards)
                 for t, shards in task_shards(cfg).items()}
    return RuntimeSpec(
        plan=plan, task_keys=task_keys, initial_weights=initial,
        server_cls=ray.remote(ParameterServer), worker_cls=ray.remote(TaskWorker),
        evaluator_cls=ray.remote(Evaluator), model_factory=functools.partial(build_eval_model, cfg),
        driver_node_id=ray.get_runtime_context().get_node_id(),
        resume_states=resume["servers"] if resume else None,
        time_offset_s=float(resume.get("time_s", 0.0)) if resume else 0.0)


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """A Ray scheduling strategy that pins an actor to the node of the caller (the driver):
    the metrics endpoint binds there and the run folder is written there."""
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def start_metrics(cfg: Config):
    """The metrics hub actor, serving on metrics.host:metrics.port from this node; its series
    carry the label run=<run.name>."""
    if not cfg.metrics.enabled:
        return None, None
    hub = ray.remote(MetricsHub).options(num_cpus=0, scheduling_strategy=on_this_node()).remote(
        cfg.run.name)
    try:
        port = ray.get(hub.serve.remote(cfg.metrics.host, cfg.metrics.port))
    except ray.exceptions.RayTaskError as err:
        ray.kill(hub)
        raise ConfigError("metrics.port", f"cannot serve metrics on {cfg.metrics.host}:"
                                          f"{cfg.metrics.port} ({err.cause}); choose another port "
                                          f"(0 picks a free one)") from None
    log.info("Prometheus metrics: http://%s:%d/metrics", cfg.metrics.host, port)
    return hub, port


def start_coordinator(cfg: Config, resume: Optional[dict] = None, hub=None,
                      overwrite: bool = False):
    """Create and start the named coordinator; returns its handle. The run folder is claimed
    as in :func:`run_local`."""
    cfg = with_run_id(cfg)
    run = RunFolder(cfg.run.out_dir).create(cfg, overwrite, resuming=resume is not None)
    spec = _runtime_spec(cfg, resume)
    coordinator = ray.remote(Coordinator).options(
        name=COORDINATOR_PREFIX + cfg.run.name, namespace=cfg.ray.namespace, num_cpus=0,
        max_concurrency=8, scheduling_strategy=on_this_node()).remote(
            cfg, str(run.root), spec, hub)
    ray.get(coordinator.start.remote())
    return coordinator


def run_distributed(cfg: Config, address: Optional[str] = None,
                    resume: Optional[dict] = None, overwrite: bool = False) -> RunSummary:
    """Run the parameter server, workers and evaluator on Ray until a stop condition."""
    cfg = with_run_id(cfg)
    if resume is not None:        # before Ray starts, and before the folder is touched
        _, flat = initial_model(cfg)
        check_resume(cfg, resume, plan_pieces(flat.layout, cfg.server.actors))
    # Claimed before Ray starts: a folder of another run fails in a second, in one line.
    RunFolder(cfg.run.out_dir).create(cfg, overwrite, resuming=resume is not None)
    check_splits_here(cfg.data, cfg.run.seed)
    connect(cfg, address)
    check_resources(cfg, autoscaling=bool(address or cfg.ray.address))
    hub, _ = start_metrics(cfg)
    progress = Progress(cfg.task_names)
    summary, coordinator = follow_run(
        cfg, resume, hub, overwrite, cfg.run.progress_every_s,
        lambda c: _log_progress(progress, ray.get(c.status.remote()), cfg))
    _log_done(summary)
    ray.kill(coordinator)
    if hub is not None:
        ray.get(hub.close.remote())
        ray.kill(hub)
    return summary


def follow_run(cfg: Config, resume: Optional[dict], hub, overwrite: bool, every_s: float,
               watch: Callable[[Any], None]) -> tuple[RunSummary, Any]:
    """Start the coordinator and follow its run to the end, calling ``watch(coordinator)``
    every `every_s`; when the coordinator dies (and every actor it owned with it), the run is
    resumed (given up after ``_COORDINATOR_RESTARTS`` deaths in a row without progress:
    ``CoordinatorDeaths``) from the driver's own snapshot of the
    servers (``standby.py``) or the newest checkpoint, whichever is newer. Returns the summary
    and the coordinator that finished the run. The only handle to a coordinator is held here:
    Ray lets go of a dead actor's name once no handle to it is left, so a caller holding one
    would keep the new coordinator from taking the name."""
    coordinator = start_coordinator(cfg, resume, hub, overwrite)
    done, deaths = coordinator.run.remote(), CoordinatorDeaths(_COORDINATOR_RESTARTS)
    standby = Standby(cfg.server.snapshot_every_s)
    while True:
        try:
            return _supervise(coordinator, done, every_s, watch, standby), coordinator
        except ray.exceptions.RayActorError as err:
            failure = type(err).__name__
        # (past the except block: its traceback, which holds a handle to the coordinator, is gone)
        if not _dead(coordinator):
            continue              # it could not be reached for a moment: follow it again
        resume, source = _resume_point(cfg, standby)
        if not deaths.restart(saved_version(resume) if resume else None):
            raise RunGivenUp(f"the coordinator died {deaths.in_a_row} times in a row without "
                             f"the run getting past version {deaths.resumed_at or 0} "
                             f"({failure}); resume it with --resume {cfg.run.out_dir}")
        log.warning("the coordinator died (%s); resuming the run from %s", failure, source)
        # Ray lets go of a dead actor's name once no handle to it is left.
        coordinator = done = None
        coordinator = _restart_coordinator(cfg, resume, hub)
        done = coordinator.run.remote()


def _resume_point(cfg: Config, standby: Standby) -> tuple[Optional[dict], str]:
    """(the payload a new coordinator resumes from, its description): the driver's snapshot
    where it is newer than the newest checkpoint of this run and fits the plan, else that
    checkpoint, else nothing (the run starts again)."""
    latest = CheckpointManager(RunFolder(cfg.run.out_dir).checkpoints,
                               cfg.eval.keep_last).latest(cfg.run.id)
    saved = saved_version(latest[1]) if latest else None
    if standby.version is not None and (saved is None or standby.version > saved):
        kept = standby.states(timeout_s=_SNAPSHOT_FETCH_S)
        if kept is not None:
            summaries, states, time_s = kept
            _, flat = initial_model(cfg)
            plan = plan_pieces(flat.layout, cfg.server.actors)
            misfit = states_misfit(summaries, plan)
            if misfit is None:
                return ({"servers": states, "plan": [asdict(p) for p in plan],
                         "config": config_to_dict(cfg), "time_s": time_s},
                        f"the driver's snapshot at version {standby.version}")
            log.error("the driver's snapshot cannot rebuild the servers (%s)", misfit)
    unused = (f" (the driver's snapshot, at version {standby.version}, is not newer)"
              if standby.version is not None else " (the driver has no snapshot)")
    if latest is None:
        return None, "its start" + unused
    return latest[1], f"checkpoint {latest[0].name}" + unused


def _supervise(coordinator, done, every_s: float, watch: Callable[[Any], None],
               standby: Standby) -> RunSummary:
    """Follow a coordinator's run (`done`: its run() call) to the end, calling `watch` every
    `every_s` and moving the standby snapshot on; a SIGTERM or Ctrl-C asks it to stop (final
    checkpoint and evaluation first). Raises RayActorError when the coordinator cannot be
    reached or has died."""
    # Ticks at half the snapshot interval: a round is seen complete and the next one asked
    # for within it, so the driver's snapshot lags the servers by about one interval.
    tick_s = min(every_s, standby.every_s / 2) if standby.every_s else every_s
    watch_at = time.monotonic() + every_s
    try:
        with _sigterm_as_interrupt():
            while not ray.wait([done], timeout=tick_s)[0]:
                standby.tick(coordinator)
                if time.monotonic() >= watch_at:
                    watch(coordinator)
                    watch_at = time.monotonic() + every_s
    except KeyboardInterrupt:
        log.warning("interrupted: stopping workers and writing a final checkpoint")
        coordinator.stop.remote()
    return ray.get(done)


def _restart_coordinator(cfg: Config, resume: Optional[dict], hub, wait_s: float = 60.0):
    """start_coordinator, once Ray has let go of the dead coordinator's name (when the last
    handle to it is gone, a tool's included)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return start_coordinator(cfg, resume, hub)
        except ray.exceptions.ActorAlreadyExistsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _dead(actor, wait_s: float = 60.0) -> bool:
    """Whether `actor` has died (Ray says so), rather than being out of reach for a moment;
    one that stays out of reach for `wait_s` is killed and counts as dead."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.process.remote(), timeout=_CALL_TIMEOUT_S)
            return False
        except ray.exceptions.ActorDiedError:
            return True
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            time.sleep(1.0)
    ray.kill(actor)
    return True


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`ray job stop`, `kill`, a pod being deleted) stops the run like Ctrl-C does:
    workers stop and the evaluator writes a final checkpoint. A second SIGTERM is not caught."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    if previous is None:          # set outside Python: restore the default
        previous = signal.SIG_DFL
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log_progress(progress: Progress, status: CoordinatorStatus, cfg: Config) -> None:
    if not status.servers:
        log.info("server unreachable; waiting for recovery")
        return
    s0, pending = status.servers[0], status.pending_workers
    workers = " ".join(f"{t}x{n}" + (f"(+{pending[t]} pending)" if pending.get(t) else "")
                       for t, n in status.workers.items())
    progress.maybe_log(s0.version, s0.losses, s0.weights, status.miou, 0.0,
                       per_task=s0.applied, extra=f"staleness {s0.staleness:.1f} | workers {workers}")


def find_coordinator(namespace: str = "ps_trainer", run_name: Optional[str] = None):
    """The coordinator of `run_name`, or of the only run in the namespace."""
    if run_name:
        return ray.get_actor(COORDINATOR_PREFIX + run_name, namespace=namespace)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(COORDINATOR_PREFIX) and a["namespace"] == namespace]
    if len(names) != 1:
        found = ", ".join(n[len(COORDINATOR_PREFIX):] for n in names) or "none"
        raise LookupError(f"expected one running ps_trainer run in namespace {namespace!r}, "
                          f"found: {found}; pass --run NAME")
    return ray.get_actor(names[0], namespace=namespace)


def resume_from(run_dir: str, overrides=(), missing_ok: bool = False
                ) -> Optional[tuple[Config, dict]]:
    """The config saved in a run folder (plus overrides) and its newest valid checkpoint; with
    `missing_ok`, None where there is no run folder or no checkpoint to resume from."""
    run = RunFolder(run_dir)
    if missing_ok and not (run.config.exists() and run.checkpoints.is_dir()):
        return None
    if not run.config.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = load_run_config(str(run.config), overrides)
    cfg = cfg.replace(run=replace(cfg.run, out_dir=str(run.root.resolve())))
    latest = CheckpointManager(run.checkpoints, cfg.eval.keep_last).latest()
    if latest is None:
        if missing_ok:
            return None
        raise FileNotFoundError(f"no valid checkpoint in {run.checkpoints}")
    log.info("resuming from %s (version %s)", latest[0], saved_version(latest[1]))
    return cfg, latest[1]


def checkpoint_config(payload: Optional[dict], config_path: Optional[str] = None,
                      overrides=()) -> Config:
    """The config of `config_path` if given, else the one the checkpoint was written with;
    checked and with absolute paths, like :func:`load_run_config`."""
    if config_path:
        return load_run_config(config_path, overrides)
    if payload is None:
        raise ValueError("without a checkpoint a config file is needed (the data and model to use)")
    return saved_run_config(payload["config"], overrides)


def checkpoint_model(cfg: Config, payload: dict, heads: Sequence[str],
                     stats_of: str) -> MultiTaskModel:
    """The trunk and the heads of the tasks `heads`, as `cfg` builds them, holding a
    checkpoint's weights and the norm statistics `stats_of`'s workers last pushed (the server
    keeps one set per task). A shard whose size differs from the model's is a ValueError."""
    model = build_model(cfg, {name: build_task(cfg, name) for name in heads}, seed=cfg.run.seed)
    flat = FlatModel(model, ShardLayout.of(model, shard_of))
    load_pieces(flat, payload["servers"], saved_plan(payload))
    load_norm_stats(flat, payload["servers"], stats_of)
    return model


def evaluate_checkpoint(path: str, config_path: Optional[str] = None, overrides=()) -> EvalResult:
    """mIoU of a checkpoint on the validation split of its own config (or of `config_path`),
    scored as the evaluator scores it: with the segmentation task's norm statistics."""
    payload = load_checkpoint(path)
    cfg = checkpoint_config(payload, config_path, overrides)
    model = functools.partial(checkpoint_model, cfg, payload, (SEGMENTATION,), SEGMENTATION)
    loop = make_evaluation_loop(cfg, model, pick_device(cfg.run.device))
    if loop is None:
        raise ValueError("the config has no segmentation task: nothing to score")
    return loop.evaluate()


def _log_done(summary: RunSummary) -> None:
    log.info("done (%s): %d updates in %.0f s; final mIoU %s", summary.stopped_by,
             summary.updates, summary.elapsed_s, _fmt(summary.miou))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
