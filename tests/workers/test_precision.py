"""A worker step's numerics: bf16 / fp16 autocast, fp16's loss scale and skipped overflows,
channels-last activations over flat weights (all on the CPU here; tests/test_cuda.py repeats
what matters on a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ps_trainer.run.launch import run_local
from ps_trainer.core.runtime import prepare_compute
from ps_trainer_workers.precision import LossScale, StepPrecision
from ps_trainer_workers.worker import make_task_loop


def test_loss_scale_unscales_and_halves_on_overflow_then_grows():
    scale = LossScale(scale=8.0, growth_interval_steps=2)
    grads = [torch.full((3,), 16.0), torch.full((2,), 8.0)]
    assert scale.unscale(grads)
    torch.testing.assert_close(grads[0], torch.full((3,), 2.0))
    torch.testing.assert_close(grads[1], torch.full((2,), 1.0))
    assert scale.unscale([torch.ones(2)]) and scale.scale == 16.0      # two good steps: x2
    assert not scale.unscale([torch.tensor([1.0, float("inf")])])
    assert scale.scale == 8.0 and scale.good_steps == 0 and scale.overflows == 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_step_gives_float32_gradients_close_to_fp32(tiny_config, precision):
    cfg = tiny_config(tasks=("rotation", "segmentation"))
    reference = make_task_loop(cfg, "segmentation", 0)
    reference.step()
    low = make_task_loop(cfg.replace(run=cfg.run.__class__(
        **{**cfg.run.__dict__, "precision": precision})), "segmentation", 0)
    stats = low.step()
    assert stats is not None and np.isfinite(stats.loss)
    for shard in low.shards:
        a, b = reference.flat.grads[shard], low.flat.grads[shard]
        assert b.dtype == torch.float32
        cosine = float(torch.dot(a, b) / (a.norm() * b.norm()))
        assert cosine > 0.97, (shard, cosine)        # the same gradient, rounded
        assert not torch.equal(a, b)                 # ... but computed in lower precision


def test_an_fp16_overflow_skips_the_push_and_lowers_the_scale(tiny_config):
    cfg = tiny_config(tasks=("rotation", "segmentation"))
    loop = make_task_loop(cfg, "rotation", 0)
    loop.precision = StepPrecision("fp16", torch.device("cpu"))
    loop.precision.loss_scale.scale = 1e38                 # the scaled loss overflows
    assert loop.step() is None and loop.precision.loss_scale.scale == 5e37
    loop.precision.loss_scale.scale = 1024.0
    assert loop.step() is not None


def test_local_run_in_bf16_trains(tiny_config):
    cfg = tiny_config(extra=["run.precision=bf16", "run.max_updates=6", "eval.every_s=600"])
    summary = run_local(cfg)
    assert summary.applied == {"rotation": 3, "segmentation": 3} and summary.miou is not None


def test_channels_last_activations_keep_the_flat_weights_bound(tiny_config):
    cfg = tiny_config(extra=["run.channels_last=true"])
    loop = make_task_loop(cfg, "segmentation", 0)
    model, flat = loop.model, loop.flat
    assert model.memory_format == torch.channels_last
    images = torch.rand(2, 3, 32, 32)
    assert model.prepare(images).is_contiguous(memory_format=torch.channels_last)
    conv = model.trunk.stem[0].weight
    start = flat.params["trunk"].data_ptr()
    assert start <= conv.data_ptr() < start + flat.params["trunk"].numel() * 4
    model.eval()
    with torch.no_grad():
        before = model("segmentation", images)
        flat.load("trunk", (flat.params["trunk"].numpy() * 0.5).astype(np.float32))   # a pull
        after = model("segmentation", images)
    assert not torch.allclose(before, after)


def test_channels_last_auto_is_for_cuda_only(tiny_config):
    cfg = tiny_config()
    loop = make_task_loop(cfg, "segmentation", 0)
    assert loop.model.memory_format == torch.contiguous_format
    prepare_compute(cfg.run, loop.model, torch.device("cpu"))
    assert loop.model.memory_format == torch.contiguous_format
