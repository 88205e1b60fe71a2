"""A synthetic head-CT phantom: the embedded default data set of smallct (no download needed).

An axial slice in Hounsfield units: air, a skull ring (bone), brain parenchyma, two lateral
ventricles (CSF) and, for the positive class, a hyperdense lesion (acute blood, 60-80 HU).
Deterministic under a seed. :func:`write_phantom_png_set` writes it in the mixed formats of the
Kaggle Head CT set (RGB, RGBA, 8- and 16-bit grey PNG) with a ``labels.csv`` in that set's format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from smallct.io.files import cache_dir
from smallct.io.windows import window

PHANTOM_VERSION = 2  # 2: slices vary by level and outline (version 1's all looked alike to near-duplicate grouping)

# Typical attenuation, HU
AIR, CSF, BRAIN, BLOOD, BONE = -1000.0, 5.0, 35.0, 70.0, 1000.0


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    y, x = yy - cy, xx - cx
    u, v = x * c + y * s, -x * s + y * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def head_phantom_hu(size: int = 256, lesion: bool = False, rng: np.random.Generator | None = None,
                    lesion_scale: float = 1.0, return_mask: bool = False):
    """One axial head slice in HU, float32 (size, size).

    Head size, outline, position and rotation, the slice's level (skull base with sinus air and
    cisterns, ventricles, or sulci near the vertex) and noise vary with ``rng``, so that two slices
    correlate about as much as two real ones (median 0.62 as 64 px thumbnails; the Kaggle set: 0.66); with
    ``lesion`` a hyperdense ellipse (55-85 HU) of radius about 5-11% of the head sits in the brain.
    With ``return_mask`` it returns ``(hu, mask)``, ``mask`` bool (size, size) True on the lesion
    (all False without one); the slice itself is the same either way.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = size / 2 + rng.uniform(-0.05, 0.05) * size
    cx = size / 2 + rng.uniform(-0.05, 0.05) * size
    ry = size * rng.uniform(0.36, 0.44)
    rx = ry * rng.uniform(0.75, 0.88)
    angle = rng.uniform(-0.25, 0.25)
    skull = rng.uniform(0.06, 0.09)
    # the slice's level in the head: the outline, the skull and what lies inside vary with it, so that two
    # phantom slices look no more alike than two real ones (near-duplicate grouping finds no false links)
    level = rng.uniform(0, 1)
    theta = np.arctan2(yy - cy, xx - cx)
    bulge = 1 + sum(rng.uniform(-0.05, 0.05) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))

    def inside(scale_y, scale_x, at_y=cy, at_x=cx):
        return _ellipse(yy, xx, at_y, at_x, scale_y * bulge, scale_x * bulge, angle)

    hu = np.full((size, size), AIR, np.float32)
    hu[inside(ry, rx)] = BONE + rng.uniform(-200, 200)
    brain = inside(ry * (1 - skull), rx * (1 - skull))
    hu[brain] = BRAIN
    # grey/white matter contrast: a smooth low-frequency field of a few HU
    field = np.sin(xx / size * rng.uniform(4, 9) + rng.uniform(0, 6)) * np.cos(yy / size * rng.uniform(4, 9))
    hu[brain] += 4.0 * field[brain]
    c, s = np.cos(angle), np.sin(angle)
    if level < 0.35:  # skull base: air in the sinuses, CSF cisterns
        for _ in range(int(rng.integers(2, 5))):
            by, bx = cy + rng.uniform(-0.6, 0.6) * ry, cx + rng.uniform(-0.6, 0.6) * rx
            blob = _ellipse(yy, xx, by, bx, ry * rng.uniform(0.06, 0.15), rx * rng.uniform(0.06, 0.2),
                            rng.uniform(0, np.pi))
            hu[blob & brain] = AIR if rng.uniform() < 0.5 else CSF  # never hyperdense: only a lesion is
    elif level < 0.8:  # lateral ventricles: two small rotated ellipses either side of the midline
        vy, vx = ry * rng.uniform(0.15, 0.32), rx * rng.uniform(0.05, 0.12)
        offset = rx * rng.uniform(0.1, 0.2)
        for side in (-1, 1):
            hu[_ellipse(yy, xx, cy + side * offset * s, cx + side * offset * c, vy, vx, angle + side * 0.3)] = CSF
    else:  # near the vertex: sulci, thin CSF lines under the skull
        sulci = np.abs(np.sin(theta * rng.integers(6, 14) + rng.uniform(0, 6))) > 0.93
        hu[brain & ~inside(ry * (1 - skull) * 0.85, rx * (1 - skull) * 0.85) & sulci] = CSF
    if lesion:
        for _ in range(20):  # place the lesion inside the brain, clear of the ventricles
            r = ry * rng.uniform(0.05, 0.11) * lesion_scale
            ly = cy + rng.uniform(-0.55, 0.55) * ry
            lx = cx + rng.uniform(-0.55, 0.55) * rx
            blob = _ellipse(yy, xx, ly, lx, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
            if (brain & blob).sum() == blob.sum():
                break
        hu[blob] = rng.uniform(55, 85)
    hu += rng.normal(0, 3.0, hu.shape).astype(np.float32)
    if return_mask:
        return hu, (blob if lesion else np.zeros((size, size), bool))
    return hu


# The file formats of the phantom set, in turn: like the Kaggle set, mostly RGB, some RGBA, and
# also 8-bit and 16-bit grey so that the ingest path meets every one of them.
PNG_FORMATS = ("RGB", "RGB", "RGBA", "L", "I;16")


def _save(grey: np.ndarray, fmt: str, path: Path) -> None:
    if fmt == "RGB":
        Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(path)
    elif fmt == "RGBA":
        rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
        Image.fromarray(rgba).save(path)
    elif fmt == "L":
        Image.fromarray(grey).save(path)
    elif fmt == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # full 16-bit range, same picture
    else:
        raise ValueError(f"unknown phantom PNG format {fmt!r}")


def write_phantom_png_set(out: str | Path, n: int = 200, seed: int = 0, size_range=(160, 320),
                          lesion_scale: float = 1.0) -> Path:
    """Write ``n`` phantom slices as PNG (half with a lesion) and ``labels.csv`` (``id, hemorrhage``).

    Image sizes vary in ``size_range`` independently of the label (unlike the real set, where size
    predicts the label), and formats cycle through :data:`PNG_FORMATS`. Returns ``out``.
    Deterministic: the same ``n`` and ``seed`` give identical files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.array([1] * (n // 2) + [0] * (n - n // 2))
    rows = []
    for i, label in enumerate(labels):
        size = int(rng.integers(size_range[0], size_range[1] + 1))
        hu = head_phantom_hu(size, lesion=bool(label), rng=rng, lesion_scale=lesion_scale)
        _save(window(hu, 40, 80), PNG_FORMATS[i % len(PNG_FORMATS)], out / f"{i:03d}.png")
        rows.append(f"{i},{label}")
    (out / "labels.csv").write_text("id, hemorrhage\n" + "\n".join(rows) + "\n")
    return out


def phantom_folder(n: int = 200, seed: int = 0) -> Path:
    """The phantom set of ``n`` images under ``seed`` in the cache folder (written the first time)."""
    folder = cache_dir() / f"phantom-v{PHANTOM_VERSION}-n{n}-s{seed}"  # a new generator, a new folder
    if not (folder / "labels.csv").is_file():
        write_phantom_png_set(folder, n=n, seed=seed)
    return folder
