#!/usr/bin/env bash
# GPU checks, run from the repository root on a machine with a CUDA device (about 8 minutes
# on one current GPU). Writes its figures to ${OUT:-gpu-check}/ and prints them.
#
#   bash deploy/gpu-check.sh
#
# 1. the CUDA test module (tests/test_cuda.py): optimizer, staged pulls, one-copy pushes,
#    mixed precision, channels-last, a local and a distributed run with CUDA workers;
# 2. the quickstart on a GPU (its final mIoU and the time it took);
# 3. a ResNet-50 / output stride 8 / DeepLabV3+ run of a few hundred updates at 512x512 with
#    segmentation and self-training workers sharing the GPU (updates/s, staleness, step time);
# 4. the server bench at ResNet-50 and ResNet-101 sizes with AdamW.
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

echo "== 1. CUDA tests"
python -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/cuda-tests.txt" | tail -5

echo "== 2. quickstart on the GPU"
gpus=(--set tasks.rotation.num_gpus=0.2 --set tasks.colorization.num_gpus=0.2
      --set tasks.self_training.num_gpus=0.2 --set tasks.segmentation.num_gpus=0.2
      --set eval.num_gpus=0.2 --set run.compute_slots_per_node=0)
/usr/bin/time -f "%e s" ps-trainer train --config configs/quickstart.yaml --set run.out_dir="$out/quickstart" \
    --set metrics.port=0 "${gpus[@]}" 2>&1 | tee "$out/quickstart.txt" | tail -3

echo "== 3. ResNet-50 / OS 8 / DeepLabV3+ at 512x512"
ps-trainer train --config configs/quickstart.yaml --set run.out_dir="$out/r50" --set metrics.port=0 \
    --set model.backbone=resnet50 --set model.output_stride=8 --set model.norm=group \
    --set tasks.segmentation.options.head=deeplabv3plus --set data.image_size=512 \
    --set data.val=32 --set data.unlabelled=512 --set run.precision=bf16 \
    --set run.max_updates=400 --set run.max_minutes=4 --set eval.every_s=120 --set eval.batch_size=8 \
    --set tasks.rotation.workers=0 --set tasks.colorization.workers=0 \
    --set tasks.segmentation.workers=2 --set tasks.self_training.workers=2 \
    --set tasks.segmentation.batch_size=8 --set tasks.self_training.batch_size=8 \
    --set tasks.segmentation.num_gpus=0.2 --set tasks.self_training.num_gpus=0.2 \
    --set tasks.segmentation.prefetch=true --set tasks.self_training.prefetch=true \
    --set run.compute_slots_per_node=0 --set server.num_cpus=2 \
    --set eval.num_gpus=0.2 --set optimizer.lr=0.0005 2>&1 | tee "$out/r50.txt" | grep -E "updates [0-9]+ \||final|done" | tail -6

echo "== 4. server bench at ResNet sizes"
ps-trainer bench --sections real_sizes --out "$out/bench.json" 2>&1 | tee "$out/bench.txt" | tail -20
echo "figures in $out/"
