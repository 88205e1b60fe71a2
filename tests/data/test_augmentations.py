"""smallct.data.augmentations, the RSNA projects' training ingredients: each changes the batch as it says, and off
means untouched."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from smallct.data.augmentations import (PER_IMAGE, augment_batch, cutmix, gaussian_noise, mix_batch, mixup,
                                       random_brightness, random_contrast, random_erase, random_vflip,
                                       salt_and_pepper)


def _batch(b: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8).float()


def _grey(b: int = 16, size: int = 32, value: float = 128.0) -> torch.Tensor:
    return torch.full((b, 3, size, size), value)


def test_all_off_returns_the_batch_itself_and_draws_nothing():
    x = _batch()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    assert augment_batch(x, g) is x
    assert augment_batch(x, g, **{k: 0.0 for k in PER_IMAGE}) is x
    out, mix = mix_batch(x, 0.0, 0.0, g)
    assert out is x and mix is None
    assert random_vflip(x, 0.0, g) is x
    assert torch.equal(g.get_state(), state)


def test_vflip_with_p_one_is_flip_minus_two_and_p_half_flips_what_it_draws():
    x = _batch(64)
    assert torch.equal(random_vflip(x, 1.0, torch.Generator().manual_seed(0)), x.flip(-2))
    out = random_vflip(x, 0.5, torch.Generator().manual_seed(3))
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5  # the same draw
    assert 10 < flipped.sum() < 54
    for i in range(64):
        assert torch.equal(out[i], x[i].flip(-2) if flipped[i] else x[i])


def test_brightness_shifts_each_image_by_at_most_the_limit_and_stays_in_range():
    x = _grey(64)
    out = random_brightness(x, 0.2, torch.Generator().manual_seed(0))
    shift = out.mean(dim=(1, 2, 3)) - 128
    assert (shift.abs() <= 0.2 * 255 + 1e-4).all() and shift.std() > 10  # a shift of its own per image
    assert torch.allclose(out, 128 + shift.view(-1, 1, 1, 1))  # every pixel moved alike
    bright = random_brightness(_batch(64), 1.0, torch.Generator().manual_seed(1))
    assert bright.min() >= 0 and bright.max() <= 255 and (bright == 255).any() and (bright == 0).any()


def test_contrast_scales_the_spread_about_the_mean_and_stays_in_range():
    x = torch.cat([_grey(32, value=100.0), _grey(32, value=140.0)], dim=3)  # two halves: mean 120, std 20
    out = random_contrast(x, 0.5, torch.Generator().manual_seed(0))
    std = out.std(dim=(1, 2, 3), unbiased=False) / x.std(dim=(1, 2, 3), unbiased=False)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.full((32,), 120.0), atol=1e-3)  # the mean stays
    assert ((std >= 0.5 - 1e-4) & (std <= 1.5 + 1e-4)).all() and std.min() < 0.8 and std.max() > 1.2
    strong = random_contrast(_batch(32), 1.0, torch.Generator().manual_seed(1))
    assert strong.min() >= 0 and strong.max() <= 255


def test_gaussian_noise_has_the_asked_std_in_grey_levels():
    out = gaussian_noise(_grey(16, 64), 8.0, torch.Generator().manual_seed(0))
    noise = out - 128
    assert noise.std().item() == pytest.approx(8.0, rel=0.02) and abs(noise.mean().item()) < 0.1
    loud = gaussian_noise(_batch(), 200.0, torch.Generator().manual_seed(1))
    assert loud.min() == 0 and loud.max() == 255  # clamped to 0..255


def test_salt_and_pepper_sets_the_asked_share_of_pixels_to_black_or_white():
    x = _grey(16, 64)
    out = salt_and_pepper(x, 0.1, torch.Generator().manual_seed(0))
    changed = (out != 128).any(dim=1)  # per pixel
    assert changed.float().mean().item() == pytest.approx(0.1, abs=0.005)
    values = out.permute(1, 0, 2, 3)[:, changed]
    assert set(values.unique().tolist()) == {0.0, 255.0}
    assert (values == values[:1]).all()  # all 3 channels of a pixel alike
    assert (out == 0).float().mean().item() == pytest.approx(0.05, abs=0.004)  # half salt, half pepper


def test_erase_with_p_one_zeroes_one_rectangle_per_image():
    x = _grey(32, 48, value=200.0)
    out = random_erase(x, 1.0, torch.Generator().manual_seed(0))
    for image in out:
        zero = (image == 0).all(dim=0)
        assert ((image == 0) | (image == 200)).all() and (zero == (image == 0).any(dim=0)).all()
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols)
        box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and zero.sum() == box.numel()  # one solid rectangle
        assert 0.02 * 48 * 48 * 0.8 <= zero.sum() <= 48 * 48 / 3 * 1.2
    assert torch.equal(random_erase(x, 1e-9, torch.Generator().manual_seed(0)), x)


def test_mixup_mixes_the_targets_with_exactly_the_image_weights():
    x = _batch(8)
    targets = torch.nn.functional.one_hot(torch.arange(8) % 2, 2).float()
    out, mix = mixup(x, 0.4, torch.Generator().manual_seed(2))
    other = x[mix.perm]
    moved = (x - other).abs() > 20  # pixels where the two images differ enough to read the weight
    assert moved.sum() > 1000 and 0.05 < mix.lam < 0.95
    lam = ((out - other)[moved] / (x - other)[moved])
    assert torch.allclose(lam, torch.full_like(lam, mix.lam), atol=1e-4)  # one weight, from the images alone
    mixed = mix.targets(targets)
    assert torch.allclose(mixed, lam.mean() * targets + (1 - lam.mean()) * targets[mix.perm], atol=1e-4)
    assert torch.allclose(mixed.sum(1), torch.ones(8))


def test_mixup_weights_follow_beta_alpha_alpha():
    g = torch.Generator().manual_seed(0)
    lams = [mixup(_batch(2, 4), 0.4, g)[1].lam for _ in range(400)]
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 0.01


def test_cutmix_target_weight_is_the_share_not_pasted():
    x = torch.arange(8).float().view(8, 1, 1, 1).expand(8, 3, 40, 40).clone()  # image i holds the value i
    for seed in range(5):
        out, mix = cutmix(x, 1.0, torch.Generator().manual_seed(seed))
        own = (out == x).all(dim=1).float().mean(dim=(1, 2))
        pasted = (out == x[mix.perm]).all(dim=1).float().mean(dim=(1, 2))
        fixed = mix.perm == torch.arange(8)  # an image pasted onto itself keeps all of its own content
        assert (~fixed).sum() >= 4 and 0 < mix.lam < 1
        assert torch.allclose(own[~fixed], torch.full_like(own[~fixed], mix.lam))
        assert torch.allclose(pasted[~fixed], torch.full_like(pasted[~fixed], 1 - mix.lam))
        targets = torch.eye(8)
        assert torch.allclose(mix.targets(targets).diagonal()[~fixed], own[~fixed])


def test_with_both_mixup_and_cutmix_each_batch_gets_one_of_them():
    x = torch.arange(8).float().view(8, 1, 1, 1).expand(8, 3, 16, 16).clone() * 10  # image i holds 10 i
    g = torch.Generator().manual_seed(0)
    blended = 0
    for _ in range(40):
        out, _ = mix_batch(x, 0.4, 1.0, g)
        blended += not torch.equal(out % 10, torch.zeros_like(out))  # cutmix pastes whole values, mixup blends
    assert 8 < blended < 32
