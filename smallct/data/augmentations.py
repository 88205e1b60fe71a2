"""The training ingredients of the public RSNA hemorrhage projects, as batched tensor functions.

Vertical flip, brightness and contrast, Gaussian and salt-and-pepper noise, random erasing (each drawn
per image), and mixup / cutmix (drawn per batch, with the mixing weight the targets need). Every
function takes a float batch (B, 3, H, W) in 0..255 (after :func:`smallct.data.transforms.augment`,
before normalisation) and an explicit ``torch.Generator``; a function whose strength is 0 returns its
input untouched and draws nothing, so a run without these ingredients repeats the runs made before them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.special import betaincinv

# The per-image ingredients, in the order augment_batch applies them: TrainConfig fields of the same names.
PER_IMAGE = ("vflip", "brightness", "contrast", "gauss_noise", "salt_pepper", "erase")
# Random erasing's rectangle, as torchvision's RandomErasing: 2-33% of the image, aspect 0.3..3.3.
ERASE_AREA, ERASE_ASPECT = (0.02, 1 / 3), (0.3, 3.3)


def _uniform(shape, generator: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """U(0, 1) draws of ``shape`` from ``generator``, on the batch's device."""
    return torch.rand(shape, generator=generator, device=generator.device).to(x.device)


def random_vflip(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Flip each image upside down (``flip(-2)``) with probability ``p``."""
    if p <= 0:
        return x
    flip = _uniform(x.shape[0], generator, x) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-2), x)


def random_brightness(x: torch.Tensor, limit: float, generator: torch.Generator) -> torch.Tensor:
    """Add ``b * 255`` to each image, ``b ~ U(-limit, limit)`` per image (albumentations' brightness by max),
    clamped to 0..255."""
    if limit <= 0:
        return x
    shift = (_uniform(x.shape[0], generator, x) * 2 - 1) * limit * 255
    return (x + shift.view(-1, 1, 1, 1)).clamp(0, 255)


def random_contrast(x: torch.Tensor, limit: float, generator: torch.Generator) -> torch.Tensor:
    """Scale each image's deviations from its own mean by ``1 + c``, ``c ~ U(-limit, limit)`` per image
    (the mean stays, the spread scales), clamped to 0..255."""
    if limit <= 0:
        return x
    factor = 1 + (_uniform(x.shape[0], generator, x) * 2 - 1) * limit
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor.view(-1, 1, 1, 1) + mean).clamp(0, 255)


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Add independent N(0, std^2) noise to every value (``std`` in 0..255 units), clamped to 0..255."""
    if std <= 0:
        return x
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    return (x + noise * std).clamp(0, 255)


def salt_and_pepper(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Set a ``share`` of the pixels (all 3 channels of each) to 0 or 255, half each."""
    if share <= 0:
        return x
    b, _, h, w = x.shape
    u = _uniform((b, 1, h, w), generator, x)
    x = torch.where(u < share / 2, torch.zeros((), dtype=x.dtype, device=x.device), x)
    return torch.where((u >= share / 2) & (u < share), torch.full((), 255, dtype=x.dtype, device=x.device), x)


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """With probability ``p`` per image, set one random rectangle (2-33% of the image, aspect 0.3..3.3) to 0,
    the black background of a CT slice (random erasing / cutout)."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    u = _uniform((b, 5), generator, x)
    area = (ERASE_AREA[0] + u[:, 0] * (ERASE_AREA[1] - ERASE_AREA[0])) * h * w
    log_lo, log_hi = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    aspect = torch.exp(log_lo + u[:, 1] * (log_hi - log_lo))
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (u[:, 2] * (h - eh + 1)).floor()
    left = (u[:, 3] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
    erased = inside & (u[:, 4] < p).view(-1, 1, 1)
    return x.masked_fill(erased.unsqueeze(1), 0)


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, vflip: float = 0.0, brightness: float = 0.0,
                  contrast: float = 0.0, gauss_noise: float = 0.0, salt_pepper: float = 0.0,
                  erase: float = 0.0) -> torch.Tensor:
    """The per-image ingredients in the order of :data:`PER_IMAGE`; with all of them 0 this returns ``x``
    itself and draws nothing."""
    x = random_vflip(x, vflip, generator)
    x = random_brightness(x, brightness, generator)
    x = random_contrast(x, contrast, generator)
    x = gaussian_noise(x, gauss_noise, generator)
    x = salt_and_pepper(x, salt_pepper, generator)
    return random_erase(x, erase, generator)


@dataclass(frozen=True)
class Mix:
    """How a batch was mixed: image i is ``lam * image i + (1 - lam) * image perm[i]`` (cutmix: by area)."""

    perm: torch.Tensor  # (B,) int64
    lam: float  # weight of each image's own content, 0..1

    def targets(self, t: torch.Tensor) -> torch.Tensor:
        """The mixed targets of one-hot or 0/1 multi-label targets ``t`` (B, C): the images' own weights."""
        return self.lam * t + (1 - self.lam) * t[self.perm.to(t.device)]


def _draws(generator: torch.Generator, n: int) -> list[float]:
    """``n`` U(0, 1) draws as Python numbers: mixup and cutmix need their weight on the host (one sync a step)."""
    return torch.rand(n, generator=generator, device=generator.device).tolist()


def _beta(alpha: float, u: float) -> float:
    """A Beta(alpha, alpha) draw from a uniform ``u`` (inverse CDF: the draw comes from the run's generator)."""
    return float(betaincinv(alpha, alpha, u))


def _perm(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, Mix]:
    """Mixup (Zhang et al. 2018): every image blended with another of the batch, one ``lam ~ Beta(alpha, alpha)``
    per batch. Returns the mixed batch and the :class:`Mix` that mixes the targets with the same weights."""
    lam = _beta(alpha, _draws(generator, 1)[0])
    perm = _perm(x, generator)
    return lam * x + (1 - lam) * x[perm], Mix(perm, lam)


def cutmix(x: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, Mix]:
    """CutMix (Yun et al. 2019): one rectangle of side share ``sqrt(1 - lam)``, ``lam ~ Beta(alpha, alpha)``,
    pasted from another image of the batch, clipped at the border; the :class:`Mix` weight is the share of
    each image left its own (1 - the pasted area share)."""
    u, cy, cx = _draws(generator, 3)
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - _beta(alpha, u))
    ch, cw = int(h * cut), int(w * cut)
    y0, y1 = max(int(cy * h) - ch // 2, 0), min(int(cy * h) + ch // 2, h)
    x0, x1 = max(int(cx * w) - cw // 2, 0), min(int(cx * w) + cw // 2, w)
    perm = _perm(x, generator)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    return out, Mix(perm, 1 - (y1 - y0) * (x1 - x0) / (h * w))


def mix_batch(x: torch.Tensor, mixup_alpha: float, cutmix_alpha: float,
              generator: torch.Generator) -> tuple[torch.Tensor, Mix | None]:
    """Mixup or cutmix of a batch (Beta alphas; 0 is off). With both on, one of the two per batch, each with
    probability 1/2. With both off: ``(x, None)`` and no draw."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, None
    use_cutmix = cutmix_alpha > 0
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = _draws(generator, 1)[0] < 0.5
    return cutmix(x, cutmix_alpha, generator) if use_cutmix else mixup(x, mixup_alpha, generator)
