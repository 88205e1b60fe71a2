"""Batched tensor augmentation and normalisation (no per-image Python work, CPU or GPU).

Inputs are uint8 batches (B, 3, H, W) from the cache; outputs are normalised float batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Images in 0..255 (uint8, or float after augmentation), (B, 3, H, W), to standardised float."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - mean) / std


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (brain CT is roughly left-right symmetric)."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 10.0, scale=(0.9, 1.1),
                  translate: float = 0.06) -> torch.Tensor:
    """One random rotation (+-degrees), isotropic scale and shift (fraction of the side) per image.

    Bilinear sampling; pixels from outside the image are 0, the black background of a CT slice
    (so pass 0..255 floats, before normalisation).
    """
    b = x.shape[0]
    dev = generator.device
    angle = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * math.radians(degrees)
    s = scale[0] + torch.rand(b, generator=generator, device=dev) * (scale[1] - scale[0])
    t = (torch.rand(b, 2, generator=generator, device=dev) * 2 - 1) * translate * 2  # grid units span 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch (B, 3, H, W) in 0..255: ``none``, ``flip``, or ``affine`` (flip + affine)."""
    if kind == "none":
        return x
    if kind not in ("flip", "affine"):
        raise ValueError(f"augmentation {kind!r}: expected none, flip or affine")
    x = random_flip(x, generator)
    if kind == "affine":
        x = random_affine(x, generator)
    return x
