"""Batched augmentation and normalisation: exact normalisation, seeded flips and affines, zero padding."""

from __future__ import annotations

import pytest
import torch

from smallct.data.transforms import augment, normalize, random_affine, random_flip

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _batch(b: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)


def test_normalize_is_x_over_255_minus_mean_over_std_per_channel():
    x = _batch(2, 4)
    out = normalize(x, MEAN, STD)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for c in range(3):
        expected = (x[:, c].double() / 255 - MEAN[c]) / STD[c]
        torch.testing.assert_close(out[:, c].double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(normalize(x.float(), MEAN, STD), out)  # uint8 or float 0..255 alike


def test_none_is_the_identity_and_an_unknown_kind_is_refused():
    x = _batch().float()
    assert augment(x, "none", torch.Generator()) is x
    with pytest.raises(ValueError, match="augmentation 'mixup': expected none, flip or affine"):
        augment(x, "mixup", torch.Generator())


def test_flip_mirrors_exactly_the_images_its_generator_draws():
    x = _batch(64).float()
    out = augment(x, "flip", torch.Generator().manual_seed(3))
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5  # the same draw
    assert 10 < flipped.sum() < 54  # both cases occur
    for i in range(64):
        assert torch.equal(out[i], x[i].flip(-1) if flipped[i] else x[i])
    assert torch.equal(random_flip(x, torch.Generator().manual_seed(3)), out)


@pytest.mark.parametrize("kind", ["flip", "affine"])
def test_augment_is_deterministic_under_a_seed_and_keeps_shape_dtype_and_range(kind):
    x = _batch(16).float()
    a = augment(x, kind, torch.Generator().manual_seed(1))
    b = augment(x, kind, torch.Generator().manual_seed(1))
    c = augment(x, kind, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float32
    # bilinear sampling with zero padding is a convex mix of 0..255 values
    assert a.min() >= 0 and a.max() <= 255 + 1e-3
    assert not torch.equal(a, x)


def test_affine_with_no_rotation_scale_or_shift_is_the_identity():
    x = _batch(4).float()
    out = random_affine(x, torch.Generator().manual_seed(0), degrees=0.0, scale=(1.0, 1.0), translate=0.0)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-3)


def test_affine_pads_with_black_outside_the_image():
    x = torch.full((2, 3, 32, 32), 255.0)
    # scale 0.5 shrinks the image to the central half; the rest comes from outside the image
    out = random_affine(x, torch.Generator().manual_seed(0), degrees=0.0, scale=(0.5, 0.5), translate=0.0)
    assert (out[:, :, 12:20, 12:20] == 255).all()
    assert (out[:, :, :4, :] == 0).all() and (out[:, :, :, -4:] == 0).all()
    lit = (out[0, 0] > 127).float().mean().item()
    assert lit == pytest.approx(0.25, abs=0.05)  # half the side in each direction
