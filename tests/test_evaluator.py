"""EvaluationLoop and RunRecorder without Ray: mIoU, checkpoint, metrics.jsonl, pictures."""
from __future__ import annotations

import functools
import json

import numpy as np
import torch

from ps_trainer.checkpoint import load_checkpoint
from ps_trainer.evaluator import make_evaluation_loop
from ps_trainer.recorder import RunRecorder
from ps_trainer.launch import build_eval_model, initial_model
from ps_trainer.params import plan_pieces
from ps_trainer.run_folder import RunFolder
from ps_trainer.segmetrics import confusion_matrix, mean_iou


def test_evaluation_matches_an_independent_computation(tiny_config):
    cfg = tiny_config()
    loop = make_evaluation_loop(cfg, functools.partial(build_eval_model, cfg), torch.device("cpu"))
    result = loop.evaluate()
    preds, truths = [], []
    for images, masks in loop.batches:
        with torch.no_grad():
            logits = loop.model("segmentation", images)
        logits = torch.nn.functional.interpolate(logits, size=masks.shape[-2:], mode="bilinear")
        preds.append(logits.argmax(1))
        truths.append(masks)
    expected, _ = mean_iou(confusion_matrix(torch.cat(preds), torch.cat(truths), loop.num_classes))
    assert result.miou == expected
    assert sum(len(m) for _, m in loop.batches) == cfg.data.val


def test_loading_server_pieces_sets_the_weights(tiny_config):
    cfg = tiny_config(extra=["server.actors=2"])
    _, flat = initial_model(cfg)
    plan = plan_pieces(flat.layout, 2)
    params = flat.param_arrays()
    states = [{"weights": {p.key: params[p.shard][p.start:p.stop] * 0 + 0.01 for p in plan
                           if p.server == i}} for i in range(2)]
    loop = make_evaluation_loop(cfg, functools.partial(build_eval_model, cfg), torch.device("cpu"))
    loop.load_pieces(states, plan)
    assert torch.allclose(loop.flat.params["trunk"], torch.full_like(loop.flat.params["trunk"], 0.01))
    assert torch.allclose(loop.flat.params["head/segmentation"],
                          torch.full_like(loop.flat.params["head/segmentation"], 0.01))


def test_recorder_writes_checkpoint_line_and_pictures(tiny_config):
    cfg = tiny_config()
    run = RunFolder(cfg.run.out_dir).create(cfg)
    loop = make_evaluation_loop(cfg, functools.partial(build_eval_model, cfg), torch.device("cpu"))
    result = loop.evaluate()
    recorder = RunRecorder(cfg, run)
    payload = {"servers": [{"version": 7, "weights": {"trunk": np.zeros(3, np.float32)}}], "plan": []}
    record = recorder.record(7, 1.5, payload, result, loop, {"losses": {"rotation": 1.2}})
    line = json.loads(run.metrics.read_text().splitlines()[-1])
    assert line["step"] == 7 and line["miou"] == result.miou and line["time_s"] == 1.5
    assert len(line["per_class_iou"]) == loop.num_classes
    assert load_checkpoint(record["checkpoint"])["config"]["run"]["seed"] == cfg.run.seed
    assert (run.previews / "step-000000007.png").stat().st_size > 0
    assert run.curves.stat().st_size > 0
    for step in range(8, 8 + cfg.eval.keep_last + 2):
        recorder.record(step, 2.0, payload, result, loop, {})
    kept = sorted(p.name for p in run.previews.glob("step-*.png"))
    assert kept == [f"step-{s:09d}.png" for s in range(10, 10 + cfg.eval.keep_last)]
