"""DiffAugment (gan_modules.augment): each policy's maths, its randomness, its gradient, and where the
modules apply it."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from gan_modules import DCGAN, WGAN, WGANGP
from gan_modules.augment import color, cutout, diff_augment, parse_policies, translation

from test_modules import TINY

ALL = ("color", "translation", "cutout")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_translation_moves_each_image_by_whole_pixels_within_an_eighth_filling_with_zero() -> None:
    images = torch.rand(64, 2, 16, 16) + 1  # no zero anywhere: a zero can only be the fill
    out = translation(images, seeded())
    shifts = set()
    for image, moved in zip(images, out):
        # out[i, j] = image[i + dy, j + dx], 0 outside: exactly one shift in [-2, 2]^2 (16 / 8) gives `moved`.
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = torch.zeros_like(image)
                rows, cols = slice(max(0, -dy), min(16, 16 - dy)), slice(max(0, -dx), min(16, 16 - dx))
                expected[:, rows, cols] = image[:, max(0, dy):min(16, 16 + dy), max(0, dx):min(16, 16 + dx)]
                if torch.equal(expected, moved):
                    matches.append((dy, dx))
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10  # drawn per image


def test_translation_of_a_hand_computed_4_by_4_image() -> None:
    image = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)  # ratio 1/8 of 4 px rounds to 1: shifts -1, 0, 1
    seen = {tuple(translation(image, seeded(seed)).flatten().tolist()) for seed in range(200)}
    down_right = (6, 7, 8, 0, 10, 11, 12, 0, 14, 15, 16, 0, 0, 0, 0, 0)  # out[i, j] = in[i + 1, j + 1]
    up = (0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)  # out[i, j] = in[i - 1, j]
    assert len(seen) == 9 and down_right in seen and up in seen and tuple(range(1, 17)) in seen


def test_cutout_zeroes_one_square_of_half_the_size_cut_at_the_borders() -> None:
    images = torch.rand(64, 3, 8, 8) + 1
    out = cutout(images, seeded())
    centres = set()
    for image, cut in zip(images, out):
        zero = (cut == 0).all(0)  # (8, 8): the same pixels in every channel
        assert torch.equal(cut[:, ~zero], image[:, ~zero])  # the rest untouched
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4  # a 4 x 4 square (half of 8), maybe cut
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all() and zero.sum() == len(rows) * len(cols)
        if len(rows) < 4:  # cut: it touches a border
            assert rows.min() == 0 or rows.max() == 7
        centres.add((rows.min().item(), cols.min().item()))
    assert len(centres) > 10


def test_color_on_one_channel_is_a_brightness_shift_and_a_contrast_scale_per_image() -> None:
    # Saturation is the identity on one channel; then out - mean(out) = k (x - mean(x)) with k in [0.5, 1.5)
    # (contrast), and mean(out) - mean(x) = b in [-0.5, 0.5) (brightness).
    images = torch.rand(32, 1, 8, 8, dtype=torch.float64) * 2 - 1
    out = color(images, seeded())
    centred_in = images - images.mean((1, 2, 3), keepdim=True)
    centred_out = out - out.mean((1, 2, 3), keepdim=True)
    k = (centred_out * centred_in).sum((1, 2, 3)) / centred_in.square().sum((1, 2, 3))
    assert torch.allclose(centred_out, k.view(-1, 1, 1, 1) * centred_in, atol=1e-12)
    b = out.mean((1, 2, 3)) - images.mean((1, 2, 3))
    assert ((0.5 <= k) & (k < 1.5)).all() and ((-0.5 <= b) & (b < 0.5)).all() and k.std() > 0.1


def test_color_scales_each_rgb_pixels_colourfulness_by_one_factor_per_image() -> None:
    # Saturation x s in [0, 2) about each pixel's channel mean, then contrast x k: the deviation from the channel
    # mean is scaled by s k in [0, 3), one factor per image (brightness adds the same to every channel).
    images = torch.rand(32, 3, 8, 8, dtype=torch.float64) * 2 - 1
    out = color(images, seeded())
    centred_in, centred_out = images - images.mean(1, keepdim=True), out - out.mean(1, keepdim=True)
    factor = (centred_out * centred_in).sum((1, 2, 3)) / centred_in.square().sum((1, 2, 3))
    assert torch.allclose(centred_out, factor.view(-1, 1, 1, 1) * centred_in, atol=1e-12)
    assert ((0 <= factor) & (factor < 3)).all() and factor.std() > 0.1


@pytest.mark.parametrize("policies", [("color",), ("translation",), ("cutout",), ALL], ids="+".join)
def test_every_policy_keeps_the_shape_is_differentiable_and_deterministic_given_the_seed(policies) -> None:
    images = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_()
    out = diff_augment(images, policies, seeded(3))
    assert out.shape == images.shape
    out.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # a gradient reaches what came in
    assert torch.equal(out, diff_augment(images, policies, seeded(3)))
    assert not torch.equal(out, diff_augment(images, policies, seeded(4)))


def test_translation_and_cutout_keep_the_value_range() -> None:
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    out = diff_augment(images, ("translation", "cutout"), seeded())
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("value", ["colour", "color,color", "color;cutout"])
def test_an_unknown_or_repeated_policy_is_refused_naming_the_flag(value: str) -> None:
    with pytest.raises(ValueError, match="distinct DiffAugment policies .*augment='color,translation,cutout'"):  # the flag's form on the command line
        DCGAN(**TINY, augment=value)


def test_no_policy_is_off() -> None:
    assert parse_policies(None) == parse_policies("") == ()
    assert parse_policies(" cutout, color") == ("cutout", "color")


@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
@pytest.mark.parametrize("augment", [None, "cutout"])
def test_the_critic_sees_augmented_real_and_fake_images_in_both_losses(cls, augment) -> None:
    # What the losses receive, against the all-ones real images and what the generator produced.
    model = cls(**TINY, n_critic=1, augment=augment)
    generated, seen = [], []
    model.generator.register_forward_hook(lambda module, args, out: generated.append(out.detach()))
    critic_loss, generator_loss = model.critic_loss, model.generator_loss

    def recording_critic_loss(real, fake):
        seen.append(("critic real", real.detach(), torch.ones_like(real)))
        seen.append(("critic fake", fake.detach(), generated[-1]))
        return critic_loss(real, fake)

    def recording_generator_loss(fake):
        seen.append(("generator fake", fake.detach(), generated[-1]))
        return generator_loss(fake)

    model.critic_loss, model.generator_loss = recording_critic_loss, recording_generator_loss
    images = torch.ones(12, 1, 16, 16)
    Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(model, DataLoader(TensorDataset(images, torch.zeros(12)), batch_size=4))
    assert sorted({name for name, _, _ in seen}) == ["critic fake", "critic real", "generator fake"]
    for name, received, produced in seen:
        if augment:  # cutout: every image has a hole where it had a value
            assert ((received == 0) & (produced != 0)).flatten(1).any(1).all(), name
        else:
            assert torch.equal(received, produced), name
