"""TaskLoop (no Ray) and the TaskWorker actor on the session's local Ray."""
from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from ps_trainer.core.params import encode_grad
from ps_trainer.core.protocol import APPLIED
from ps_trainer_workers.worker import make_task_loop


def test_task_loop_step_fills_only_its_own_shards(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"))
    loop = make_task_loop(cfg, "rotation", replica=0)
    stats = loop.step()
    assert np.isfinite(stats.loss) and stats.loss > 0 and stats.shared_grad_norm > 0
    assert stats.samples == cfg.tasks["rotation"].batch_size
    assert loop.shards == ("trunk", "head/rotation")
    assert all(float(loop.flat.grads[s].abs().sum()) > 0 for s in loop.shards)
    # float32 gradients travel as views of the flat buffer: no copy
    wire = encode_grad(loop.flat.grads["trunk"], "float32")
    assert np.shares_memory(wire, loop.flat.grads["trunk"].numpy())


def test_task_loop_is_deterministic_per_seed_task_and_replica(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"))
    a, b, other = (make_task_loop(cfg, "rotation", r) for r in (0, 0, 1))
    losses = [[loop.step().loss for _ in range(2)] for loop in (a, b, other)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_batches_are_deterministic_per_seed_task_replica_and_restart(tiny_config, loader_workers):
    cfg = tiny_config(tasks=("rotation", "segmentation"),
                      extra=[f"data.loader_workers={loader_workers}"])
    loops = [make_task_loop(cfg, "segmentation", 0, restart=r) for r in (0, 0, 1)]
    try:
        batches = [[loop.sampler.sample() for _ in range(3)] for loop in loops]
    finally:
        for loop in loops:
            loop.sampler.close()
    for (a, a_masks), (b, b_masks), (c, _) in zip(*batches):
        assert torch.equal(a, b) and torch.equal(a_masks, b_masks)   # the same restart
        assert not torch.equal(a, c)             # a replacement or resumed run: new batches


def test_loop_with_a_loader_process_steps_on_its_batches(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"), extra=["data.loader_workers=1"])
    loop = make_task_loop(cfg, "segmentation", 0)
    try:
        stats = loop.step()
        assert len(loop.sampler.loader_pids()) == 1
    finally:
        loop.sampler.close()
    assert np.isfinite(stats.loss) and stats.samples == cfg.tasks["segmentation"].batch_size


def test_segmentation_loop_draws_labelled_images(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"))
    loop = make_task_loop(cfg, "segmentation", 0)
    assert loop.sampler.dataset.has_masks and len(loop.sampler.dataset) == cfg.data.labelled
    assert np.isfinite(loop.step().loss)


def test_low_precision_transport_halves_the_bytes(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"))
    loop = make_task_loop(cfg, "rotation", 0)
    loop.step()
    full, half = (encode_grad(loop.flat.grads["trunk"], d) for d in ("float32", "bfloat16"))
    assert half.nbytes * 2 == full.nbytes


@pytest.mark.ray
@pytest.mark.parametrize("transport", ["shared_memory", "object_store"])
def test_worker_actor_pushes_to_a_server_and_stops(ray_session, tiny_config, transport):
    from ps_trainer.run.launch import _runtime_spec
    from ps_trainer.transport.push_buffers import SUPPORTED

    cfg = tiny_config(tasks=("rotation", "segmentation"),
                      extra=[f"server.same_node_pushes={transport}"])
    spec = _runtime_spec(cfg, None)
    server = spec.server_cls.options(num_cpus=0.25).remote(cfg, 0, spec.initial_weights[0],
                                                          spec.task_keys)
    worker = spec.worker_cls.options(num_cpus=0.25, max_concurrency=2).remote(
        cfg, "rotation", 0, [server], spec.plan)
    status = ray.get(worker.run.remote(max_steps=12), timeout=120)
    assert status.steps == 12
    assert status.results.get(APPLIED, 0) == 12             # all pushes applied, none stale
    server_status = ray.get(server.status.remote())
    assert server_status.version == 12 and server_status.applied["rotation"] == 12
    # On one node (and Linux) the server reads the worker's gradients from its memory.
    assert server_status.push_buffers == int(transport == "shared_memory" and SUPPORTED)
    for actor in (worker, server):
        ray.kill(actor)


@pytest.mark.ray
def test_worker_actor_with_a_loader_process_pushes_and_its_loader_dies_with_it(ray_session,
                                                                              tiny_config):
    from ps_trainer.run.launch import _runtime_spec
    from support import process_alive, wait_for

    cfg = tiny_config(tasks=("rotation", "segmentation"), extra=["data.loader_workers=1"])
    spec = _runtime_spec(cfg, None)
    server = spec.server_cls.options(num_cpus=0.25).remote(cfg, 0, spec.initial_weights[0],
                                                          spec.task_keys)
    worker = spec.worker_cls.options(num_cpus=0.25, max_concurrency=2).remote(
        cfg, "rotation", 0, [server], spec.plan, None, 3)
    pids = []
    try:
        status = ray.get(worker.run.remote(max_steps=6), timeout=120)
        assert status.steps == 6 and status.results.get(APPLIED, 0) == 6 and status.restart == 3
        assert ray.get(worker.process.remote())["loader_pids"] == []    # ended with the run
        worker.run.remote()                                # again, until the actor is killed
        pids = wait_for(lambda: ray.get(worker.process.remote())["loader_pids"],
                        what="the worker's loader process")
        assert len(pids) == 1 and process_alive(pids[0])
        wait_for(lambda: ray.get(server.status.remote()).version > 6, what="more pushes")
    finally:
        ray.kill(worker)
        ray.kill(server)
    wait_for(lambda: not any(process_alive(p) for p in pids), 60,
             what="the loader to end with its worker")


@pytest.fixture
def slot_worker(ray_session, tiny_config):
    """(server, rotation worker, slots): one compute slot per node, and the test's own handle on
    it under the name the worker uses (job and run), taken before the worker starts."""
    from ps_trainer.run.launch import _runtime_spec
    from ps_trainer.core.compute_slots import ComputeSlots

    cfg = tiny_config(tasks=("rotation", "segmentation"),
                      extra=["run.compute_slots_per_node=1", "run.name=slot-test"])
    spec = _runtime_spec(cfg, None)
    server = spec.server_cls.options(num_cpus=0.25).remote(cfg, 0, spec.initial_weights[0],
                                                          spec.task_keys)
    worker = spec.worker_cls.options(num_cpus=0.25, max_concurrency=2).remote(
        cfg, "rotation", 0, [server], spec.plan)
    slots = ComputeSlots(1, f"{ray.get_runtime_context().get_job_id()}-slot-test")
    slots.acquire()
    yield server, worker, slots
    slots.close()
    for actor in (worker, server):
        ray.kill(actor)


def test_worker_steps_only_while_it_holds_a_compute_slot(slot_worker):
    import time

    from support import wait_for

    server, worker, slots = slot_worker
    try:
        done = worker.run.remote(max_steps=3)
        wait_for(lambda: ray.get(worker.ping.remote()), what="the worker actor")
        time.sleep(2.0)        # the loop is running, waiting for the slot
        assert ray.get(worker.status.remote()).steps == 0
        assert ray.get(server.status.remote()).version == 0
    finally:
        slots.release()
    assert ray.get(done, timeout=120).steps == 3
    assert ray.get(server.status.remote()).version == 3


def test_worker_told_to_stop_while_waiting_for_a_slot_makes_no_step(slot_worker):
    import time

    from support import wait_for

    server, worker, slots = slot_worker
    try:
        done = worker.run.remote()                 # no step limit: only stop() ends it
        wait_for(lambda: ray.get(worker.ping.remote()), what="the worker actor")
        time.sleep(1.0)          # the loop reaches the slot (stopping earlier also makes none)
        ray.get(worker.stop.remote())
    finally:
        slots.release()
    assert ray.get(done, timeout=120).steps == 0   # it got the turn after stop: no step
    assert ray.get(server.status.remote()).version == 0


class _UnansweringPushes:
    """Mixed into the real server: its 3rd and 4th pushes raise ActorUnavailableError, as a
    server that did not answer in time (it may be alive) shows to its caller."""

    def push(self, *args, **kwargs):
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls in (3, 4):
            raise ray.exceptions.ActorUnavailableError("injected: no answer in time", None)
        return super().push(*args, **kwargs)


@pytest.mark.ray
def test_a_server_that_does_not_answer_is_retried_not_waited_for(ray_session, tiny_config):
    """ActorUnavailableError says "may or may not be dead": the worker retries the same
    servers with backoff instead of waiting for replacements that nobody sends."""
    from ps_trainer.run.launch import _runtime_spec
    from ps_trainer.core.protocol import RETRIED
    from ps_trainer.transport.server import ParameterServer

    cfg = tiny_config(tasks=("rotation", "segmentation"),
                      extra=["server.same_node_pushes=object_store", "tasks.rotation.inflight=1"])
    spec = _runtime_spec(cfg, None)
    flaky = ray.remote(type("FlakyServer", (_UnansweringPushes, ParameterServer), {}))
    server = flaky.options(num_cpus=0.25).remote(cfg, 0, spec.initial_weights[0],
                                                 spec.task_keys)
    worker = spec.worker_cls.options(num_cpus=0.25, max_concurrency=2).remote(
        cfg, "rotation", 0, [server], spec.plan)
    status = ray.get(worker.run.remote(max_steps=12), timeout=120)
    assert status.steps == 12 and status.results.get(RETRIED, 0) >= 1
    assert status.results.get(APPLIED, 0) >= 9              # the unanswered pushes are lost
    assert ray.get(server.status.remote()).version == status.results[APPLIED]
    for actor in (worker, server):
        ray.kill(actor)
