"""Coordinator: the named actor that owns the run's actors, scales them and replaces the dead.

It starts the parameter-server shard(s), the evaluator and N workers per task; ``scale(task, n)``
adds or stops workers while training runs; :meth:`run` supervises until a stop condition:

- a dead worker is replaced (same task and replica id, a new `restart` number, so that it
  draws new batches: ``data/streams.py``); its task loses its in-flight pushes;
- every ``server.snapshot_every_s`` it takes a consistent snapshot of every server actor's
  state (``transport/snapshots.py``): one object per actor in the object store, owned by the
  coordinator, so it outlives the servers;
- when any server actor dies, *every* server actor is replaced from one point in time: the
  newest snapshot, else the newest valid checkpoint, else the initial weights (so a split model
  never mixes two points); every worker and the evaluator are pointed at the new actors and
  re-pull;
- a dead evaluator is replaced; training is unaffected. One whose loop failed (e.g. an OSError
  while checkpointing) is still alive and holds its CPUs, so it is killed first: otherwise its
  replacement may never be placed.

A worker counts as *running* once its actor has answered a ping, and as *pending* before (Ray
has not placed it yet, or it is still starting); status, scale's answer and the metrics report
the two apart, so that asking for more workers than fit never looks like success.

The decisions (when a server is dead, what follows an actor's end and when to give up, which
state a restore starts from, which replicas a resize adds and retires) are plain classes in
``policies.py``; this actor turns Ray's answers into their events and carries out theirs.

Actor classes and the model factory are injected by ``launch`` (this package never imports
``workers``); every actor is created with ``max_restarts=0`` so that recovery is done here, once.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import ray

from ps_trainer.config import Config
from ps_trainer.core.checkpoint import CheckpointManager, saved_version
from ps_trainer.core.params import Piece, states_misfit
from ps_trainer.core.protocol import CoordinatorStatus, ServerStatus, SetupError
from ps_trainer.core.schedule import FAILED, STOPPED, TARGET_MIOU, RunSummary, StopRule
from ps_trainer.observe.metrics import CoordinatorMetrics, Reporter, worker_source
from ps_trainer.run.policies import (EVALUATOR, Action, Exit, Ping, RecoveryLog, Restore,
                                     RestoreAttempts, RestoreSource, ServerHealth, WorkerRestarts,
                                     choose_restore_point, final_evaluation_timeout, plan_resize,
                                     snapshot_fetch_timeout, worker_key)
from ps_trainer.run.run_folder import RunFolder
from ps_trainer.transport.snapshots import SnapshotIncomplete, SnapshotRound

log = logging.getLogger(__name__)
_SUPERVISE_EVERY_S = 0.5
_STOP_GRACE_S = 10.0
_CALL_TIMEOUT_S = 10.0          # a control call to a live actor
_UNANSWERED_PINGS = 3           # pings in a row a server may leave unanswered (Ray could not
                                # reach it) before it is taken for dead
_FINAL_EVAL_SLACK = 3.0         # the final evaluation may take this many times the last one
_SCALE_WAIT_S = 10.0            # how long scale() waits for new workers to answer
_SERVER_START_S = 120.0         # how long (re)starting the server actors is waited for
_SLOWEST_FETCH_BPS = 50e6       # a snapshot is waited for as if it moved this slowly
# When every worker of one task (or the evaluator) has failed to set itself up this many times
# in a row, and none of them is set up, the run ends with that error: its data, model or run
# folder is broken, and replacements would fail the same way for as long as the run lasts.
_SETUP_ATTEMPTS = 3
_RESTORE_FAILURES = 4           # restores in a row whose actors die before answering: give up


@dataclass
class RuntimeSpec:
    """What the coordinator needs to (re)create actors; built by ``launch``."""
    plan: tuple[Piece, ...]
    task_keys: dict[str, tuple[str, ...]]
    initial_weights: list                      # per server: ObjectRef of {key: array}
    server_cls: Any                            # ray.remote(ParameterServer)
    worker_cls: Any                            # ray.remote(TaskWorker)
    evaluator_cls: Any                         # ray.remote(Evaluator)
    model_factory: Callable                    # () -> MultiTaskModel with the segmentation head
    driver_node_id: str
    resume_states: Optional[list] = None       # per server state, from a checkpoint
    time_offset_s: float = 0.0


class _SetupProbe:
    """Whether an actor has set itself up: asks its ``is_set_up`` (one call at a time, never
    waiting) until it says yes."""

    def __init__(self, handle):
        self._handle = handle
        self._ref = None
        self.done = False

    def poll(self) -> bool:
        if self.done:
            return True
        if self._ref is None:
            self._ref = self._handle.is_set_up.remote()
        elif ray.wait([self._ref], timeout=0)[0]:
            try:
                self.done = bool(ray.get(self._ref))
            except ray.exceptions.RayError:
                pass                 # a dead actor: its run call tells supervision
            self._ref = None
        return self.done


@dataclass
class _WorkerActor:
    handle: Any
    run_ref: Any
    replica: int
    ready_ref: Any               # the first ping: it returns once the actor is placed and built
    running: bool = False
    setup: Optional[_SetupProbe] = None

    def refresh(self) -> bool:
        """Mark the worker running once its first ping has returned (or failed: then its run
        ref fails too and supervision replaces it)."""
        if not self.running and ray.wait([self.ready_ref], timeout=0)[0]:
            self.running = True
        return self.running


class _Snapshots:
    """The newest consistent server snapshot (one ObjectRef per server actor, owned by the
    coordinator: ``transport/snapshots.py``) and the one being taken. A snapshot is kept only
    once its summaries (fetched without the states) fit the plan: every actor's pieces, all at
    one version; the one it replaces is let go then."""

    def __init__(self, every_s: float, plan: tuple[Piece, ...]):
        self.every_s = every_s
        self.plan = plan
        self.ready: Optional[SnapshotRound] = None
        self._taking: Optional[SnapshotRound] = None
        self._asked_at = -float("inf")

    def tick(self, servers: list) -> None:
        if self._taking is not None:
            try:
                if self._taking.poll():
                    misfit = states_misfit(self._taking.summaries, self.plan)
                    if misfit is None:
                        self.ready = self._taking
                    else:
                        log.error("a server snapshot was refused: %s", misfit)
                    self._taking = None
            except (ray.exceptions.RayError, SnapshotIncomplete) as err:
                log.warning("a server snapshot was given up (%s); the previous one is kept",
                            type(err).__name__)
                self._taking = None
        now = time.monotonic()
        if self.every_s and self._taking is None and now - self._asked_at >= self.every_s:
            self._taking = SnapshotRound(servers, "coordinator")
            self._asked_at = now

    def forget_pending(self) -> None:
        self._taking = None


class Coordinator:
    def __init__(self, cfg: Config, run_dir: str, spec: RuntimeSpec, hub=None):
        self._cfg = cfg
        self._run = RunFolder(run_dir)
        self._spec = spec
        self._hub = hub
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._servers: list = []
        self._server_pings: list = []
        self._health = ServerHealth(_UNANSWERED_PINGS)
        self._incarnation = 0          # of the server actors: one more at each restore (fencing)
        self._restore_attempts = RestoreAttempts(_RESTORE_FAILURES)
        self._snapshots = _Snapshots(cfg.server.snapshot_every_s, spec.plan)
        self._workers: dict[str, list[_WorkerActor]] = {t: [] for t in cfg.task_names}
        self._retiring: list[tuple[str, _WorkerActor, float]] = []   # (task, actor, deadline)
        self._restarts = WorkerRestarts(
            _SETUP_ATTEMPTS,
            resumed_from=int(spec.resume_states[0]["version"]) if spec.resume_states else None)
        self._recoveries = RecoveryLog()
        self._evaluator = None
        self._evaluator_ref = None
        self._metrics = CoordinatorMetrics()
        for role in self._restarts.counts:   # series exist (at 0) before the first restart
            self._metrics.restarts.labels(role)
        self._reporter = Reporter.to_hub("coordinator", self._metrics.registry, hub,
                                         cfg.metrics.report_every_s)
        self._start_time = time.monotonic()
        self._done = False
        self._last_version: Optional[int] = None     # the newest version seen (supervision)

    # ------------------------------------------------------------------ starting actors

    def start(self) -> CoordinatorStatus:
        self._start_servers(self._spec.resume_states)
        self._start_evaluator()
        for task, task_cfg in self._cfg.tasks.items():
            self._resize(task, task_cfg.workers)
        return self.status()

    def _start_servers(self, states: Optional[list]) -> None:
        """Every server actor, from one point in time (`states`, or the initial weights)."""
        states = states or [None] * len(self._spec.initial_weights)
        # Actor 0 is made last: it is given the others, to send its decisions to.
        others = [self._new_server(i, states[i]) for i in range(1, len(states))]
        self._servers = [self._new_server(0, states[0], others), *others]
        self._server_pings = [s.ping.remote() for s in self._servers]
        self._health.reset()
        ready, _ = ray.wait(list(self._server_pings), num_returns=len(self._servers),
                            timeout=_SERVER_START_S)
        if len(ready) < len(self._servers):
            log.warning("%d server actor(s) not running after %.0f s (Ray cannot place them "
                        "yet?); workers wait for them", len(self._servers) - len(ready),
                        _SERVER_START_S)
        self._snapshots.forget_pending()

    def _new_server(self, index: int, state: Optional[dict], peers: list = ()):
        cfg = self._cfg
        options = {"num_cpus": cfg.server.num_cpus, "resources": dict(cfg.server.resources),
                   "max_restarts": 0}
        return self._spec.server_cls.options(**options).remote(
            cfg, index, self._spec.initial_weights[index], self._spec.task_keys, state, self._hub,
            list(peers), self._incarnation)

    def _start_evaluator(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cfg = self._cfg
        node = NodeAffinitySchedulingStrategy(self._spec.driver_node_id, soft=False)
        offset = self._spec.time_offset_s + (time.monotonic() - self._start_time)
        self._evaluator = self._spec.evaluator_cls.options(
            num_cpus=cfg.eval.num_cpus, num_gpus=cfg.eval.num_gpus, max_concurrency=2,
            max_restarts=0,
            scheduling_strategy=node).remote(cfg, self._servers, self._spec.plan,
                                             self._spec.model_factory, str(self._run.root),
                                             offset, self._hub)
        self._evaluator_ref = self._evaluator.run.remote()
        self._evaluator_setup = _SetupProbe(self._evaluator)

    def _new_worker(self, task: str, replica: int) -> _WorkerActor:
        t = self._cfg.tasks[task]
        restart = self._restarts.restart_number(task, replica)
        handle = self._spec.worker_cls.options(
            num_cpus=t.num_cpus, num_gpus=t.num_gpus, resources=dict(t.resources),
            max_concurrency=2, max_restarts=0).remote(self._cfg, task, replica, self._servers,
                                                      self._spec.plan, self._hub, restart)
        return _WorkerActor(handle, handle.run.remote(), replica, handle.ping.remote(),
                           setup=_SetupProbe(handle))

    # ------------------------------------------------------------------ control

    def scale(self, task: str, workers: int, wait_s: float = _SCALE_WAIT_S) -> dict:
        """Run `workers` workers of `task` (adds new ones or stops the newest); waits up to
        `wait_s` for new ones to answer. Returns {"running": n, "pending": m}: pending workers
        are asked for but not answering (not placed by Ray, or still starting)."""
        if task not in self._workers:
            raise ValueError(f"unknown task {task!r}; this run trains {', '.join(self._workers)}")
        actors = self._resize(task, workers)
        waiting = [s.ready_ref for s in actors if not s.running]
        if waiting:
            ray.wait(waiting, num_returns=len(waiting), timeout=wait_s)
        with self._lock:
            counts = self._worker_counts()[task]
        if counts["pending"]:
            log.warning("task %s: %d of %d workers are not running yet (Ray has not placed them "
                        "or they are starting)", task, counts["pending"], workers)
        return counts

    def _resize(self, task: str, workers: int) -> list[_WorkerActor]:
        """Add or retire workers of `task` to reach `workers`; returns the actors."""
        with self._lock:
            actors = self._workers[task]
            plan = plan_resize([s.replica for s in actors], workers)
            actors.extend(self._new_worker(task, replica) for replica in plan.add)
            for _ in range(plan.retire):
                retired = actors.pop()
                self._retire(task, retired)
                self._restarts.forget(worker_key(task, retired.replica))
            self._worker_counts()
            log.info("task %s now has %d workers", task, len(actors))
            return list(actors)

    def _retire(self, task: str, actor: _WorkerActor) -> None:
        """Ask a worker to finish its step and drain its pushes; supervision ends it once it has
        (or after _STOP_GRACE_S), so that a resize never waits under the lock. One that never
        started has nothing to drain."""
        if actor.refresh():
            actor.handle.stop.remote()
            self._retiring.append((task, actor, time.monotonic() + _STOP_GRACE_S))
        else:
            self._end_retired(task, actor)

    def _reap_retired(self) -> None:
        """End the retired workers that have stopped, or have had their grace."""
        now, waiting = time.monotonic(), []
        for task, actor, deadline in self._retiring:
            stopped = bool(ray.wait([actor.run_ref], timeout=0)[0])
            if stopped or now >= deadline:
                if not stopped:
                    log.warning("worker %s/%d did not stop within %.0f s; killing it", task,
                                actor.replica, _STOP_GRACE_S)
                self._end_retired(task, actor)
            else:
                waiting.append((task, actor, deadline))
        self._retiring = waiting

    def _end_retired(self, task: str, actor: _WorkerActor) -> None:
        """Kill a retired worker and drop its series from the metrics endpoint."""
        ray.kill(actor.handle)
        if self._hub is not None:
            self._hub.forget.remote(worker_source(task, actor.replica))

    def _worker_counts(self) -> dict[str, dict[str, int]]:
        """{task: {"running": n, "pending": m}}, refreshed now; also sets the gauges."""
        counts = {}
        for task, actors in self._workers.items():
            running = sum(actor.refresh() for actor in actors)
            counts[task] = {"running": running, "pending": len(actors) - running}
            self._metrics.workers.labels(task).set(running)
            self._metrics.workers_pending.labels(task).set(len(actors) - running)
        return counts

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> CoordinatorStatus:
        with self._lock:
            servers = self._server_status()
            latest = None
            if self._evaluator is not None:
                try:
                    latest = ray.get(self._evaluator.latest_record.remote(), timeout=5)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    latest = None
            counts = self._worker_counts()
            # While the server actors are down (being restored) the last version seen stands.
            return CoordinatorStatus(
                version=servers[0].version if servers else self._last_version,
                servers=servers,
                workers={t: c["running"] for t, c in counts.items()},
                pending_workers={t: c["pending"] for t, c in counts.items()},
                miou=latest.get("miou") if latest else None,
                latest_eval=latest,
                restarts=dict(self._restarts.counts),
                recovery_s=list(self._recoveries.recovery_s),
                restores=list(self._recoveries.restores),
                snapshot_version=self._snapshots.ready.version if self._snapshots.ready else None,
                elapsed_s=self._elapsed(),
                done=self._done)

    def _server_status(self) -> list[ServerStatus]:
        try:
            return ray.get([s.status.remote() for s in self._servers], timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return []

    def process(self) -> dict:
        """Where this actor runs: its node and process id (for tools that signal it)."""
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def handles(self) -> dict:
        """The live actor handles (for tests and tools)."""
        with self._lock:
            return {"servers": list(self._servers), "evaluator": self._evaluator,
                    "workers": {t: [s.handle for s in actors] for t, actors in self._workers.items()}}

    # ------------------------------------------------------------------ supervision

    def run(self) -> RunSummary:
        """Supervise until the stop rule (ps_trainer.core.schedule) or stop() ends the run."""
        stop_rule = StopRule.of(self._cfg)
        stopped_by = STOPPED
        while not self._stop.wait(_SUPERVISE_EVERY_S):
            with self._lock:
                self._check_servers()
                self._snapshots.tick(self._servers)
                self._check_workers()
                self._reap_retired()
                self._check_evaluator()
                self._worker_counts()
            if self._restarts.failure is not None:
                stopped_by = FAILED
                break
            version = self._version()
            self._reporter.maybe()
            reason = stop_rule.reason(version, self._elapsed(), self._latest_record())
            if reason is not None:
                stopped_by = reason
                break
        return self._finish(stop_rule, stopped_by)

    def _elapsed(self) -> float:
        """Seconds the run has trained, across resumes."""
        return time.monotonic() - self._start_time + self._spec.time_offset_s

    def _latest_record(self) -> Optional[dict]:
        """The evaluator's newest record, when the stop rule needs it (a target is set)."""
        if self._cfg.run.target_miou is None:
            return None
        try:
            return ray.get(self._evaluator.latest_record.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None

    def _version(self) -> Optional[int]:
        try:
            self._last_version = ray.get(self._servers[0].ping.remote(), timeout=10)
            return self._last_version
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None

    def _check_workers(self) -> None:
        for task, actors in self._workers.items():
            for actor in actors:
                if actor.refresh() and actor.setup.poll():
                    self._restarts.set_up(worker_key(task, actor.replica))
            for i, actor in enumerate(actors):
                ready, _ = ray.wait([actor.run_ref], timeout=0)
                if not ready:
                    continue
                exit, error = _exit_of(actor.run_ref)
                action = self._restarts.ended("worker", worker_key(task, actor.replica), exit,
                                              [worker_key(task, s.replica) for s in actors], error)
                if action is Action.END_RUN:
                    log.error("worker %s/%d failed: %s; ending the run", task, actor.replica, error)
                    return
                log.warning("worker %s/%d %s; starting a replacement", task, actor.replica,
                            _EXIT_WORDS[exit].format(error))
                # Whatever ended the call, the actor goes before its replacement comes: one
                # that only stopped answering would otherwise train on beside it, with the
                # same replica number and stream, holding its CPUs or GPU.
                ray.kill(actor.handle)
                actors[i] = self._new_worker(task, actor.replica)
                self._metrics.restarts.labels("worker").inc()

    def _check_servers(self) -> None:
        """Hand each ended ping to the health policy; restore every server once one is dead."""
        for i, ping in enumerate(self._server_pings):
            ready, _ = ray.wait([ping], timeout=0)
            if not ready:
                continue   # busy, not dead: a dead actor's pending call fails at once
            outcome, error = _ping_of(ping)
            if outcome is Ping.ANSWERED:
                self._restore_attempts.answered()
            if self._health.observe(i, outcome):
                decision = self._restore_attempts.dead(time.monotonic(), error)
                if decision is Restore.NOW:
                    self._restore_servers(i)
                elif decision is Restore.GIVE_UP and self._restarts.failure is None:
                    self._restarts.failure = self._restore_attempts.why()
                    log.error("%s", self._restarts.failure)
                return          # WAIT: the dead ping is seen again at the next check
            if outcome is Ping.UNAVAILABLE:
                log.warning("server %d did not answer a ping (%d in a row)", i,
                            self._health.unanswered[i])
            self._server_pings[i] = self._servers[i].ping.remote()

    def _restore_servers(self, dead: int) -> None:
        """Replace every server actor from one point in time (see the module docstring)."""
        start = time.monotonic()
        before = self._last_version
        for server in self._servers:          # the survivors hold newer, unmatched state
            ray.kill(server)
        states, source, kind = self._restore_point()
        self._incarnation += 1         # pushes computed on the old actors' weights are fenced
        log.warning("server %d died; restoring the %d server actor(s) from %s", dead,
                    len(self._servers), source)
        self._start_servers(states)
        self._restore_attempts.restoring()
        for actors in self._workers.values():
            for actor in actors:
                actor.handle.set_servers.remote(self._servers)
        if self._evaluator is not None:
            self._evaluator.set_servers.remote(self._servers)
        restored = int(states[0]["version"]) if states else 0
        self._restarts.counts["server"] += 1
        self._recoveries.restored(before, restored, kind, time.monotonic() - start,
                                  at_s=self._elapsed())
        self._metrics.restarts.labels("server").inc()

    def _restore_point(self) -> tuple[Optional[list], str, RestoreSource]:
        """(the server states, their description, their kind) as choose_restore_point says; a
        snapshot that cannot be fetched (lost with its node) falls back to the checkpoint."""
        latest = CheckpointManager(self._run.checkpoints,
                                   self._cfg.eval.keep_last).latest(self._cfg.run.id)
        saved = (saved_version(latest[1]), latest[1]["servers"]) if latest else None
        ready = self._snapshots.ready
        source = choose_restore_point(ready.version if ready else None, saved[0] if saved else None)
        if source is RestoreSource.SNAPSHOT:
            try:        # a large snapshot is waited for as long as moving it takes, not dropped
                return (ray.get(ready.state_refs, timeout=snapshot_fetch_timeout(
                            ready.nbytes, _SERVER_START_S, _SLOWEST_FETCH_BPS)),
                        f"the snapshot at version {ready.version}", source)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as err:
                log.warning("the server snapshot is lost (%s); using the checkpoint",
                            type(err).__name__)
                self._snapshots.ready = None
                source = choose_restore_point(None, saved[0] if saved else None)
        if source is RestoreSource.CHECKPOINT:
            misfit = states_misfit(saved[1], self._spec.plan)
            if misfit is not None:
                log.error("checkpoint %s cannot rebuild the servers (%s); using the initial "
                          "weights", latest[0].name, misfit)
                return None, "the initial weights", RestoreSource.INITIAL
            return (saved[1], f"checkpoint {latest[0].name} (version {saved[0]})", source)
        return None, "the initial weights", source

    def _check_evaluator(self) -> None:
        ready, _ = ray.wait([self._evaluator_ref], timeout=0)
        if not ready:
            if self._evaluator_setup.poll():
                self._restarts.set_up(EVALUATOR)
            return
        exit, error = _exit_of(self._evaluator_ref)
        action = self._restarts.ended(EVALUATOR, EVALUATOR, exit, [EVALUATOR], error)
        if action is Action.NOTHING:      # the final evaluation ends its loop: it is not gone
            return
        # A loop that raised leaves the actor alive with its CPUs: end it before replacing it.
        ray.kill(self._evaluator)
        if action is Action.END_RUN:
            log.error("evaluator failed: %s; ending the run", error)
            return
        log.warning("evaluator %s; starting a replacement", _EXIT_WORDS[exit].format(error))
        self._start_evaluator()
        self._metrics.restarts.labels("evaluator").inc()

    def _finish(self, stop_rule: StopRule, stopped_by: str) -> RunSummary:
        """Stop the workers, run the final evaluation and checkpoint (also when a worker task
        could not set itself up: what the others trained is kept), stop the evaluator; every
        wait is bounded, so a broken actor cannot hold the run open."""
        with self._lock:
            self._restarts.finishing = True
            for actors in self._workers.values():
                for actor in actors:
                    actor.handle.stop.remote()
            refs = [s.run_ref for actors in self._workers.values() for s in actors if s.refresh()]
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=_STOP_GRACE_S)
            for task, actor, _ in self._retiring:
                self._end_retired(task, actor)
            self._retiring = []
            evaluator_failed = self._restarts.given_up(EVALUATOR)
            final, retry = (None, False) if evaluator_failed else self._final_evaluation(stopped_by)
            # A server (or the evaluator) died just now: recover and try once more. A final
            # evaluation that is only slow is not retried: its actor is not replaced mid-way,
            # and the final checkpoint it wrote before scoring is on disk.
            if retry and EVALUATOR not in self._restarts.setup_failures:
                ray.wait(self._server_pings, num_returns=len(self._server_pings),
                         timeout=_CALL_TIMEOUT_S)
                self._check_servers()
                self._check_evaluator()
                final, _ = self._final_evaluation(stopped_by)
            self._evaluator.stop.remote()
            self._done = True
            status = self.status()
            self._reporter.now()
            servers = status.servers
            return RunSummary(
                updates=status.version or 0, elapsed_s=status.elapsed_s,
                miou=final.get("miou") if final else None,
                reached_target_s=stop_rule.reached(final), stopped_by=stopped_by,
                applied=dict(servers[0].applied) if servers else {}, final=final,
                runtime=status, error=self._restarts.failure)

    def _final_evaluation(self, stopped_by: str) -> tuple[Optional[dict], bool]:
        """(the evaluation that ends the run, or the one that reached the target; whether a
        failed one is worth retrying). The evaluator checkpoints the final state before it
        scores it, so a final evaluation that does not finish in time loses no training. Its
        time limit follows the last evaluation's time (a large validation set, a CPU
        evaluator): final_evaluation_timeout."""
        timeout = self._cfg.eval.final_timeout_s
        try:
            if stopped_by == TARGET_MIOU:
                return ray.get(self._evaluator.latest_record.remote(),
                               timeout=_CALL_TIMEOUT_S), False
            last_s = ray.get(self._evaluator.last_evaluation_s.remote(), timeout=_CALL_TIMEOUT_S)
            timeout = final_evaluation_timeout(timeout, last_s, _FINAL_EVAL_SLACK)
            record = ray.get(self._evaluator.evaluate_now.remote({"final": True}),
                             timeout=timeout)
            return record, record is None            # None: a server was unreachable
        except ray.exceptions.GetTimeoutError:
            log.error("the final evaluation did not finish within %.0f s; ending without its "
                      "score (the final state is checkpointed: ps-trainer eval scores it)",
                      timeout)
            return None, False
        except ray.exceptions.RayError as err:
            log.error("final evaluation failed: %s", _cause(err))
            return None, True


def _unavailable(err: Exception) -> bool:
    """Ray could not reach the actor, which may be alive (not a death)."""
    return isinstance(err, ray.exceptions.ActorUnavailableError)


def _ping_of(ref) -> tuple[Ping, str]:
    """How an ended ping went, and its error's one line."""
    try:
        ray.get(ref)
        return Ping.ANSWERED, ""
    except ray.exceptions.RayActorError as err:
        return (Ping.UNAVAILABLE if _unavailable(err) else Ping.DIED), _cause(err)


_EXIT_WORDS = {Exit.RETURNED: "returned unexpectedly", Exit.UNAVAILABLE: "did not answer",
               Exit.DIED: "died", Exit.SETUP_FAILED: "failed: {}", Exit.FAILED: "failed: {}"}


def _exit_of(ref) -> tuple[Exit, str]:
    """How an actor's ended long-running call went, and its error's one line."""
    try:
        ray.get(ref)
        return Exit.RETURNED, ""
    except ray.exceptions.RayActorError as err:
        return (Exit.UNAVAILABLE if _unavailable(err) else Exit.DIED), type(err).__name__
    except Exception as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, SetupError):     # its message names the actor and the error
            return Exit.SETUP_FAILED, str(cause).strip().splitlines()[0]
        return Exit.FAILED, _cause(err)


def _cause(err: Exception) -> str:
    """One line for an actor's error: the exception raised inside it, not Ray's traceback."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    if getattr(err, "actor_init_failed", False) and text:
        # Ray's message is the creation task's traceback: its last line is the exception
        return f"its constructor raised {text[-1].strip()}"
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
