"""sRGB <-> CIE Lab (D65) on batched torch tensors.

Used by input harmonization (every task sees the L channel) and by the colorization task.
Images are float tensors in [0, 1], shaped (B, 3, H, W) with channels R, G, B; Lab tensors
have L in [0, 100] and a, b roughly in [-110, 110].
"""
from __future__ import annotations

import torch

# sRGB primaries -> XYZ, D65 white (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_DELTA = 6.0 / 29.0


def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (3, 3) x (B, 3, H, W) -> (B, 3, H, W)
    return torch.einsum("ij,bjhw->bihw", matrix.to(x), x)


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA ** 3, t.clamp(min=_DELTA ** 3) ** (1 / 3), t / (3 * _DELTA ** 2) + 4 / 29)


def _f_inv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA, t ** 3, 3 * _DELTA ** 2 * (t - 4 / 29))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> (B, 3, H, W) Lab."""
    xyz = _mix(_RGB_TO_XYZ, _srgb_to_linear(rgb.clamp(0, 1)))
    fx, fy, fz = _f(xyz / _WHITE.to(xyz).view(1, 3, 1, 1)).unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) Lab -> (B, 3, H, W) sRGB in [0, 1] (out-of-gamut colors are clipped)."""
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = _f_inv(f) * _WHITE.to(lab).view(1, 3, 1, 1)
    return _linear_to_srgb(_mix(_XYZ_TO_RGB, xyz).clamp(0, 1)).clamp(0, 1)


def lightness_as_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """The grey sRGB image with the same Lab lightness: what a task sees under harmonization."""
    lab = rgb_to_lab(rgb)
    grey = torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1)
    return lab_to_rgb(grey)
