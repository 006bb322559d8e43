"""The compute path on a GPU: the flat model, optimizer, staged pulls, one-copy pushes, mixed
precision and channels-last, and a local and a distributed run with a CUDA worker. Skipped where
no CUDA device is available (deploy/gpu-check.sh runs it on a GPU machine)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ps_trainer.config import OptimizerConfig
from ps_trainer.transport.device_copies import StagedWeights
from ps_trainer.core.optim import FlatOptimizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", ["sgd", "adamw", "rmsprop"])
def test_optimizer_on_cuda_matches_the_cpu(name):
    cfg = OptimizerConfig(name=name, lr=0.01, weight_decay=1e-4)
    torch.manual_seed(0)
    w, grads = torch.randn(10_000), [torch.randn(10_000) for _ in range(3)]
    results = []
    for device in ("cpu", CUDA):
        opt, weights = FlatOptimizer(cfg), w.clone().to(device)
        opt.add_piece("p", weights)
        for g in grads:
            opt.step("p", weights, g.to(device), lr=0.01, scale=0.5)
        results.append(weights.cpu())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_staged_weights_overlap_a_running_step_and_commit_on_the_gpu():
    flat = torch.zeros(1 << 20, device=CUDA)
    bound = {}
    staging = StagedWeights({"trunk": flat}, lambda s, t: bound.__setitem__(s, t))
    busy = torch.randn(4096, 4096, device=CUDA)
    for _ in range(8):                       # a step still computing on the front buffer
        busy = busy @ busy / 64
    new = np.arange(1 << 20, dtype=np.float32)
    staging.stage("trunk", new)              # returns without waiting for the step
    assert float(flat[5]) == 0.0             # the front buffer is untouched
    assert staging.commit()
    np.testing.assert_array_equal(bound["trunk"].cpu().numpy(), new)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_local_run_on_cuda(tiny_config, precision):
    from ps_trainer.run.launch import run_local

    cfg = tiny_config(extra=[f"run.precision={precision}", "run.device=cuda",
                             "run.max_updates=20", "eval.every_s=600"])
    summary = run_local(cfg)
    assert sum(summary.applied.values()) >= 18          # an fp16 overflow may skip a step
    assert summary.miou is not None


def test_a_cuda_push_is_one_copy_into_the_shared_slot(tiny_config):
    from ps_trainer.transport.client import ParameterClient
    from ps_trainer.core.params import Piece
    from ps_trainer_workers.worker import make_task_loop

    cfg = tiny_config()
    loop = make_task_loop(cfg, "rotation", 0, CUDA)
    loop.step()
    pieces = tuple(Piece(s, s, 0, loop.flat.params[s].numel(), 0) for s in loop.shards)
    client = ParameterClient([None], pieces, loop.flat, inflight=2, shared_memory=True)
    arrays = client._host_grads(loop.shards, slot=0)
    for shard in loop.shards:
        assert np.shares_memory(arrays[shard], client._buffers.views[0][shard].numpy())
        np.testing.assert_array_equal(arrays[shard], loop.flat.grads[shard].cpu().numpy())


def test_channels_last_on_cuda_keeps_weights_bound_and_pulls_change_the_output(tiny_config):
    from ps_trainer_workers.worker import make_task_loop

    loop = make_task_loop(tiny_config(extra=["model.norm=batch"]), "segmentation", 0, CUDA)
    model, flat = loop.model.eval(), loop.flat
    assert model.memory_format == torch.channels_last          # auto: on for CUDA
    x = torch.rand(2, 3, 32, 32, device=CUDA)
    with torch.no_grad():
        features = model.trunk(model.prepare(x)).stages[-1]
        assert features.is_contiguous(memory_format=torch.channels_last)
        before = model("segmentation", x)
        flat.load("trunk", flat.params["trunk"].cpu().numpy() * 0.5)
        assert not torch.allclose(model("segmentation", x), before)


@pytest.mark.ray
def test_distributed_run_with_a_gpu_worker(ray_session, tiny_config):
    import ray

    from ps_trainer.run.launch import run_distributed

    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the session's Ray sees no GPU")
    cfg = tiny_config(extra=["tasks.segmentation.num_gpus=0.5", "tasks.rotation.num_gpus=0.5",
                             "run.precision=bf16", "run.max_updates=60", "run.name=gpu"])
    summary = run_distributed(cfg)
    assert summary.updates >= 60 and summary.applied["segmentation"] > 0


def test_loader_batches_for_a_cuda_step_come_pinned_and_are_copied_to_the_device(tiny_config):
    from ps_trainer.config import DataConfig
    from ps_trainer.data import build_splits
    from ps_trainer.data.loader import LoaderSampler
    from ps_trainer_workers.worker import make_task_loop

    data = build_splits(DataConfig(image_size=32, labelled=8, unlabelled=16, val=4), 0).labelled
    on_gpu = LoaderSampler(data, 4, 32, [0, 3, 0, 0], 1, device=CUDA)
    on_cpu = LoaderSampler(data, 4, 32, [0, 3, 0, 0], 1)
    try:
        images, masks = on_gpu.sample()
        raw_images, raw_masks, _, _ = next(on_gpu._batches)      # the next batch, as it came
        want_images, want_masks = on_cpu.sample()
    finally:
        on_gpu.close()
        on_cpu.close()
    assert raw_images.is_pinned() and raw_masks.is_pinned() and raw_images.dtype == torch.uint8
    assert images.device.type == "cuda" and images.dtype == torch.float32
    assert torch.equal(images.cpu(), want_images) and torch.equal(masks.cpu(), want_masks)

    loop = make_task_loop(tiny_config(extra=["data.loader_workers=1"]), "segmentation", 0, CUDA)
    try:
        assert np.isfinite(loop.step().loss)
    finally:
        loop.sampler.close()


@pytest.mark.parametrize("teacher", ["pulled", "ema"])
def test_self_training_step_on_cuda_with_a_loader(tiny_config, teacher):
    """The views and CutMix maps are drawn on the CPU for a batch that is already on the GPU."""
    from ps_trainer_workers.worker import make_task_loop

    cfg = tiny_config(tasks=("segmentation", "self_training"),
                      extra=["data.loader_workers=1",
                             f"tasks.self_training.options.teacher={teacher}",
                             "tasks.self_training.options.cutmix_probability=1.0"])
    loop = make_task_loop(cfg, "self_training", 0, CUDA)
    try:
        assert all(np.isfinite(loop.step().loss) for _ in range(3))
    finally:
        loop.sampler.close()
