"""EvaluationLoop and RunRecorder without Ray: mIoU as published numbers are made (every
validation image, whole, at its own resolution, streamed), checkpoint, metrics.jsonl, pictures."""
from __future__ import annotations

import dataclasses
import functools
import json
import weakref

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ps_trainer.core.checkpoint import load_checkpoint
from ps_trainer.data.base import Sample, SegmentationDataset, UnreadableImage
from ps_trainer.data.sampler import crop_square, resize_short_side, to_tensors
from ps_trainer.data.splits import build_splits
from ps_trainer.run.evaluator import EvaluationLoop, make_evaluation_loop
from ps_trainer.run.recorder import RunRecorder
from ps_trainer.run.launch import build_eval_model, initial_model, load_run_config
from ps_trainer.core.params import plan_pieces
from ps_trainer.run.run_folder import RunFolder
from ps_trainer.core.segmetrics import confusion_matrix, mean_iou

SMALL_MODEL = ("model.widths=[8,16]", "model.blocks=[1,1]")
# Cityscapes labelIds of the 19 evaluated classes, in train-id order (cityscapesScripts).
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def perturb(model: nn.Module) -> None:
    """Fixed random weights, so that predictions vary from pixel to pixel."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def counts(pred: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """Confusion counts with numpy: rows truth, columns prediction, 255 left out."""
    keep = truth != 255
    flat = truth[keep].astype(np.int64) * classes + pred[keep]
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def test_evaluation_matches_an_independent_computation(tiny_config):
    """Whole images, each scored by a plain forward pass and numpy counts."""
    cfg = tiny_config()
    loop = make_evaluation_loop(cfg, functools.partial(build_eval_model, cfg), torch.device("cpu"))
    perturb(loop.model)
    result = loop.evaluate()
    val = build_splits(cfg.data, cfg.run.seed).val
    expected = np.zeros((loop.num_classes,) * 2, np.int64)
    for start in range(0, len(val), cfg.eval.batch_size):           # the loop's batches
        samples = [val[i] for i in range(start, min(start + cfg.eval.batch_size, len(val)))]
        images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2) / 255
        with torch.no_grad():
            logits = loop.model("segmentation", images)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        expected += counts(logits.argmax(1).numpy(), np.stack([s.mask for s in samples]),
                           loop.num_classes)
    np.testing.assert_array_equal(result.confusion, expected)
    assert result.miou == mean_iou(expected)[0] and result.images == cfg.data.val == 16


def test_the_synthetic_default_scores_what_the_centre_crop_scored(tmp_path):
    """The quickstart's data (64 x 64 scenes, the default 256 validation images): whole images
    at their own resolution are the pixels the square centre crop at data.image_size scored
    before, so a fixed model's confusion matrix and mIoU are unchanged."""
    cfg = load_run_config("configs/quickstart.yaml", [f"run.out_dir={tmp_path}",
                                                      "data.val=null", *SMALL_MODEL])
    loop = make_evaluation_loop(cfg, functools.partial(build_eval_model, cfg), torch.device("cpu"))
    perturb(loop.model)
    result = loop.evaluate()
    size, batch = cfg.data.image_size, cfg.eval.batch_size
    val = build_splits(cfg.data, cfg.run.seed).val
    old = np.zeros((loop.num_classes,) * 2, np.int64)
    for start in range(0, len(val), batch):         # the earlier path: resize, crop, batch
        crops = [crop_square(resize_short_side(val[i], size), size)
                 for i in range(start, min(start + batch, len(val)))]
        images, masks = to_tensors(np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops]))
        with torch.no_grad():
            logits = loop.model("segmentation", images)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        old += confusion_matrix(logits.argmax(1), masks, loop.num_classes)
    assert result.images == len(val) == 256
    np.testing.assert_array_equal(result.confusion, old)
    assert result.miou == mean_iou(old)[0] and (old.sum(0) > 0).sum() > 1   # varied predictions


# --------------------------------------------------------------------------- full resolution

class PixelwiseSegmenter(nn.Module):
    """A trunk and segmentation head of 1x1 convolutions (a pixel's class depends on that pixel
    alone) in integer arithmetic: the input is quantised to 0..255 and the weights are small
    integers, so its logits are exact in any evaluation order and overlapping windows average
    to exactly the whole image's logits."""

    def __init__(self, classes: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.trunk = nn.Conv2d(3, 8, 1)
        self.heads = nn.ModuleDict({"segmentation": nn.Conv2d(8, classes, 1)})
        with torch.no_grad():
            for conv in (self.trunk, self.heads["segmentation"]):
                conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape, generator=g))
                conv.bias.copy_(torch.randint(-40, 41, conv.bias.shape, generator=g))

    def forward(self, task: str, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.trunk(torch.round(images * 255)))      # (B, 8, H, W)
        return self.heads[task](hidden)                                 # (B, K, H, W)


def write_cityscapes_frame(root, split, city, stem, size, rng):
    """A blocky RGB frame and labelIds (every id 0..33, evaluated or not) in Cityscapes' layout."""
    h, w = size
    image = cv2.resize(rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8), (w, h),
                       interpolation=cv2.INTER_NEAREST)
    label_ids = cv2.resize(rng.integers(0, 34, (h // 16, w // 16), dtype=np.uint8), (w, h),
                           interpolation=cv2.INTER_NEAREST)
    for folder, suffix, data in (("leftImg8bit", "leftImg8bit", image),
                                 ("gtFine", "gtFine_labelIds", label_ids)):
        path = root / folder / split / city / f"{stem}_{suffix}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), data)


def test_cityscapes_is_scored_at_full_resolution_with_sliding_windows(tmp_path):
    """Every val frame of a Cityscapes-layout fixture at 1024 x 2048, windows of 512 x 1024
    every 341 x 682 pixels (they overlap); the confusion matrix is the one numpy counts from
    the model's argmax over each whole frame against the frames' labelIds mapped to train ids."""
    root, rng = tmp_path / "cityscapes", np.random.default_rng(0)
    frames = [("aachen", "aachen_000000_000019"), ("bonn", "bonn_000000_000019")]
    for city, stem in frames:
        write_cityscapes_frame(root, "val", city, stem, (1024, 2048), rng)
    write_cityscapes_frame(root, "train", "zurich", "zurich_000000_000019", (64, 128), rng)
    cfg = load_run_config(None, [
        f"run.out_dir={tmp_path / 'run'}", "tasks.segmentation.workers=1",
        "data.source=cityscapes", f"data.root={root}", "data.labelled=1",
        "eval.mode=slide", "eval.crop_size=[512,1024]", "eval.stride=[341,682]",
        "eval.batch_size=2", *SMALL_MODEL])
    loop = make_evaluation_loop(cfg, lambda: PixelwiseSegmenter(19), torch.device("cpu"))
    result = loop.evaluate()

    to_train_id = np.full(256, 255, np.int64)
    to_train_id[list(CITYSCAPES_LABEL_IDS)] = np.arange(19)
    expected, labelled = np.zeros((19, 19), np.int64), 0
    for city, stem in frames:
        bgr = cv2.imread(str(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"))
        labels = cv2.imread(str(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"),
                            cv2.IMREAD_UNCHANGED)
        image = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            logits = loop.model("segmentation", image)[0].numpy()          # (19, 1024, 2048)
        expected += counts(logits.argmax(0), to_train_id[labels], 19)
        labelled += int((to_train_id[labels] != 255).sum())
    assert result.images == 2 and result.skipped == 0                 # by default, every one
    np.testing.assert_array_equal(result.confusion, expected)
    assert result.confusion.sum() == labelled > 0.5 * 2 * 1024 * 2048  # every labelled pixel
    assert (expected.sum(0) > 0).sum() >= 5                           # several classes predicted


# --------------------------------------------------------------------------- streaming

class Tracked(SegmentationDataset):
    """n images of `size` with constant value i; counts reads, in order, and how many of the
    images it handed out are alive at once; indices in `broken` are unreadable."""
    num_classes, class_names = 6, tuple("abcdef")

    def __init__(self, n, size=(32, 48), broken=()):
        self.n, self.size, self.broken = n, size, set(broken)
        self.reads: list[int] = []
        self.alive = self.most_alive = 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads.append(i)
        if i in self.broken:
            raise UnreadableImage(f"image {i}: corrupt")
        image = np.full((*self.size, 3), i, np.uint8)
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(image, self._released)
        return Sample(image, np.full(self.size, i % 6, np.uint8))

    def _released(self):
        self.alive -= 1


def tracked_loop(tiny_config, data, **eval_keys):
    cfg = tiny_config()
    return EvaluationLoop(build_eval_model(cfg), data, 6, dataclasses.replace(cfg.eval, **eval_keys))


def test_the_loop_streams_the_split_instead_of_holding_it(tiny_config):
    """Each evaluation reads every image once, in order, and no more than a batch of them (and
    the one being read) is alive at any time: the split is never held."""
    data = Tracked(40)
    loop = tracked_loop(tiny_config, data, batch_size=4, cache_bytes=0)
    data.reads.clear()
    for _ in range(2):
        assert loop.evaluate().images == 40
    assert data.reads == list(range(40)) * 2
    assert data.most_alive <= 4 + 2
    cached = Tracked(10)
    loop = tracked_loop(tiny_config, cached, batch_size=4)       # 10 small images: kept
    loop.evaluate(), loop.evaluate()
    assert cached.reads == list(range(10))


def test_unusable_images_are_skipped_counted_and_read_once(tiny_config):
    data = Tracked(9, broken={0, 4})
    loop = tracked_loop(tiny_config, data, batch_size=4, cache_bytes=0)
    first, second = loop.evaluate(), loop.evaluate()
    assert (first.images, first.skipped) == (second.images, second.skipped) == (7, 2)
    assert data.reads.count(0) == data.reads.count(4) == 1
    with pytest.raises(ValueError, match="no usable images"):
        tracked_loop(tiny_config, Tracked(3, broken={0, 1, 2}))


def test_previews_are_the_first_images_of_the_stream_shrunk_when_large(tiny_config):
    loop = tracked_loop(tiny_config, Tracked(5), batch_size=2, previews=3)
    loop.evaluate()
    images, truths, predictions = loop.previews(3)
    assert [int(i[0, 0, 0]) for i in images] == [0, 1, 2] and [int(t[0, 0]) for t in truths] == [0, 1, 2]
    assert all(p.shape == (32, 48) for p in predictions)
    big = tracked_loop(tiny_config, Tracked(2, size=(600, 1200)), batch_size=1, previews=2)
    big.evaluate()
    assert [i.shape for i in big.previews(2)[0]] == [(256, 512, 3)] * 2       # long side 512


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_loop_counts_on_the_gpu_what_it_counts_on_the_cpu(tiny_config):
    cfg = tiny_config(extra=["eval.mode=slide", "eval.crop_size=[16,16]", "eval.stride=[8,8]"])
    results = []
    for device in ("cpu", "cuda"):
        loop = make_evaluation_loop(cfg, functools.partial(build_eval_model, cfg),
                                    torch.device(device))
        perturb(loop.model)
        results.append(loop.evaluate())
    assert results[1].images == results[0].images == cfg.data.val
    assert results[1].confusion.sum() == results[0].confusion.sum()
    # float sums differ between devices: a pixel near a tie may change class, few do
    assert np.abs(results[1].confusion - results[0].confusion).sum() <= 0.002 * results[0].confusion.sum()


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
