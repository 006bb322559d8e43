"""Batched image views for consistency training: a weak view (flip, zoom) and strong
photometric perturbations (color jitter, grayscale, Gaussian blur), CutMix boxes, class-mix
masks (the pixels of some of an image's labelled classes) and masked-out blocks.

Every random choice is drawn from the caller's numpy generator, so a view depends only on
it (not on torch's global seed). Images are float32 (B, 3, H, W) RGB in [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601 weights, as torchvision's rgb_to_grayscale


def _per_image(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values.astype(np.float32)).to(like.device).view(-1, 1, 1, 1)


def gray(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    weights = torch.tensor(_LUMA, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def flip_and_zoom(images: torch.Tensor, rng: np.random.Generator, flip_probability: float,
                  scale_range: tuple[float, float]) -> torch.Tensor:
    """The weak view: a random horizontal flip and a zoom-in by a factor from `scale_range`
    around a random centre that keeps the image covered (no padding, so every pixel can
    carry a pseudo-label)."""
    b = images.shape[0]
    flip = torch.from_numpy(rng.random(b) < flip_probability).to(images.device)
    images = torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images)
    if tuple(scale_range) == (1.0, 1.0):
        return images.contiguous()
    grid = zoom_grid(images.shape, scale_range, rng, images.device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False).clamp(0.0, 1.0)


def zoom_grid(shape, scale_range: tuple[float, float], rng: np.random.Generator,
              device: torch.device) -> torch.Tensor:
    """A sampling grid (B, H, W, 2) that zooms each image by a factor from `scale_range`
    around a random centre; zooming in by z shows 1/z of the image, so the centre may move by
    the slack 1 - 1/z (none when zooming out: the border is padded instead)."""
    b = shape[0]
    zoom = rng.uniform(*scale_range, size=b)
    slack = np.clip(1.0 - 1.0 / zoom, 0.0, None)
    shift = rng.uniform(-1.0, 1.0, size=(b, 2)) * slack[:, None]
    theta = np.zeros((b, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
    theta[:, :, 2] = shift
    return F.affine_grid(torch.from_numpy(theta).float().to(device), list(shape),
                         align_corners=False)


def color_jitter(images: torch.Tensor, rng: np.random.Generator, probability: float,
                  strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s], for a
    `probability` share of the images (the others pass unchanged)."""
    b = images.shape[0]
    on = rng.random(b) < probability
    factors = rng.uniform(1 - strength, 1 + strength, size=(b, 3))
    out = images * _per_image(factors[:, 0], images)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * _per_image(factors[:, 1], images) + mean
    luma = gray(out)
    out = (out - luma) * _per_image(factors[:, 2], images) + luma
    keep = torch.from_numpy(~on).to(images.device).view(-1, 1, 1, 1)
    return torch.where(keep, images, out.clamp(0.0, 1.0))


def random_grayscale(images: torch.Tensor, rng: np.random.Generator,
                     probability: float) -> torch.Tensor:
    on = torch.from_numpy(rng.random(images.shape[0]) < probability).to(images.device)
    return torch.where(on.view(-1, 1, 1, 1), gray(images).expand_as(images), images)


def gaussian_blur(images: torch.Tensor, rng: np.random.Generator, probability: float,
                  sigma_range: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """A Gaussian blur of random sigma for a `probability` share of the images: one separable
    depthwise convolution over the whole batch (sigma ~0 leaves an image as it is)."""
    b, c, h, w = images.shape
    sigma = np.where(rng.random(b) < probability, rng.uniform(*sigma_range, size=b), 1e-3)
    radius = int(np.ceil(2 * sigma_range[1]))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x[None, :] / sigma[:, None]) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)                          # (B, k)
    k = torch.from_numpy(np.repeat(kernel, c, axis=0).astype(np.float32)).to(images.device)
    flat = F.pad(images.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, k.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(flat, k.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


def cutmix_sources(batch: int, size: tuple[int, int], rng: np.random.Generator,
                   probability: float, area_range: tuple[float, float] = (0.02, 0.4)
                   ) -> torch.Tensor:
    """(B, H, W) int64: for each pixel of image i, the batch index it is taken from — i
    outside a random box, another image j inside it (CutMix, Yun et al., ICCV 2019), for a
    `probability` share of the images."""
    h, w = size
    source = np.broadcast_to(np.arange(batch)[:, None, None], (batch, h, w)).copy()
    if batch < 2:
        return torch.from_numpy(source)
    for i in np.flatnonzero(rng.random(batch) < probability):
        other = (i + rng.integers(1, batch)) % batch
        area = rng.uniform(*area_range) * h * w
        ratio = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
        bh = int(min(h, max(1, round(np.sqrt(area * ratio)))))
        bw = int(min(w, max(1, round(np.sqrt(area / ratio)))))
        top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        source[i, top: top + bh, left: left + bw] = other
    return torch.from_numpy(source)


def class_mix_masks(masks: torch.Tensor, rng: np.random.Generator, share: float = 0.5,
                    ignore_index: int = 255) -> torch.Tensor:
    """(B, H, W) bool: for each labelled mask, the pixels of a random `share` of the classes
    it contains (at least one when it has any) — ClassMix (Olsson et al., WACV 2021), across
    domains in DACS (Tranheden et al., WACV 2021)."""
    chosen = torch.zeros_like(masks, dtype=torch.bool)
    for i in range(masks.shape[0]):
        classes = torch.unique(masks[i])
        classes = classes[classes != ignore_index].cpu().numpy()
        if len(classes) == 0:
            continue
        count = max(1, int(round(share * len(classes))))
        picked = torch.from_numpy(rng.choice(classes, size=count, replace=False)).to(masks.device)
        chosen[i] = torch.isin(masks[i], picked)
    return chosen


def block_mask(shape, rng: np.random.Generator, ratio: float, block: int,
               device: torch.device) -> torch.Tensor:
    """(B, 1, H, W) float: 0 on a random `ratio` share of `block`-pixel squares, 1 elsewhere
    (masked image modelling's patch mask, as MIC masks target images: Hoyer et al., CVPR
    2023)."""
    b, _, h, w = shape
    keep = rng.random((b, 1, -(-h // block), -(-w // block))) >= ratio
    grid = torch.from_numpy(keep.astype(np.float32)).to(device)
    return grid.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :h, :w]


def fourier_style(images: torch.Tensor, styles: torch.Tensor, beta: float) -> torch.Tensor:
    """Each image with the low-frequency amplitudes of the matching image of `styles` (its
    phase, and so its content, kept): the window of half-width beta x min(H, W) around the
    zero frequency — global color, brightness and lighting (FDA: Yang & Soatto, CVPR 2020)."""
    h, w = images.shape[-2:]
    r = int(beta * min(h, w))
    if r == 0:
        return images
    spectrum = torch.fft.fft2(images.float())
    amplitude = torch.fft.fft2(styles.float()).abs()
    window = torch.zeros(h, w, dtype=torch.bool, device=images.device)
    for rows in (slice(0, r + 1), slice(h - r, h)):         # the corners of an unshifted
        for cols in (slice(0, r + 1), slice(w - r, w)):     # spectrum are its low frequencies
            window[rows, cols] = True
    mixed = torch.where(window, amplitude, spectrum.abs())
    out = torch.fft.ifft2(torch.polar(mixed, spectrum.angle())).real
    return out.clamp(0.0, 1.0).to(images.dtype)


def gather_pixels(values: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """values[source[b, y, x], ..., y, x] for (B, ..., H, W) values and a (B, H, W) index map."""
    source = source.to(values.device)      # a CPU-drawn map for a batch already on the GPU
    b, h, w = source.shape
    rows = torch.arange(h, device=values.device).view(1, h, 1)
    cols = torch.arange(w, device=values.device).view(1, 1, w)
    picked = values.movedim((-2, -1), (1, 2))[source, rows, cols]       # (B, H, W, ...)
    return picked.movedim((1, 2), (-2, -1))
