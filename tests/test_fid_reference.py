"""The project's metrics against references. FID and KID equal torch-fidelity's (the port of the original TensorFlow
code) on the same uint8 images at 28 px (digits, 1 channel repeated to 3) and 64 px (RGB), the two loading the same
Inception-v3 weights from one file (random, in torch-fidelity's format: nothing is downloaded); precision and recall
equal torch-fidelity's PRC there, and on shared features also a textbook implementation written here, as do density
and coverage; and analytic cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from benchmarks.digits_to_idx import digits_uint8
from benchmarks.fid_benchmark import random_inception_weights
from gan_modules.fid import FIDCallback
from gan_modules.metrics import kid, prdc
from test_fid import Replay, quiet_trainer

LAYER = 64  # Inception's first pooled block: the same resize and arithmetic as pool3, a fraction of the time
KID_SUBSETS, KID_SUBSET_SIZE, BATCH = 50, 24, 16


class Images(Dataset):
    """uint8 images (N, 3, H, W), one a item: torch-fidelity's input."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_inception_weights(tmp_path_factory.mktemp("inception") / "inception-random.pth")


def digits(start: int, n: int) -> Tensor:
    """(n, 3, 28, 28) uint8: scikit-learn's digits, their one channel repeated to three."""
    images = torch.from_numpy(digits_uint8(28)[0][start:start + n])
    return images[:, None].expand(-1, 3, -1, -1).contiguous()


def smooth_rgb(n: int, seed: int, tilt: float = 1.0) -> Tensor:
    """(n, 3, 64, 64) uint8: random colour gradients."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    a, b, c = torch.randn(3, n, 3, 1, 1, generator=g) * 2
    return ((torch.tanh(a * x * tilt + b * y + c) + 1) * 127.5).round().to(torch.uint8)


def project_scores(real: Tensor, fake: Tensor, weights: Path) -> dict[str, float]:
    """What FIDCallback logs for these uint8 images (through [-1, 1], as a generator's output, and back)."""
    callback = FIDCallback(feature=LAYER, weights_path=str(weights), num_samples=len(fake), batch_size=BATCH,
                           cache_dir=None, kid_subsets=KID_SUBSETS, kid_subset_size=KID_SUBSET_SIZE)
    as_generated = [images.float() / 127.5 - 1 for images in (real, fake)]
    with pytest.warns(UserWarning, match="unreliable"):  # fewer images than features: fine for a comparison
        results = quiet_trainer(callbacks=[callback]).validate(Replay(*as_generated), verbose=False)[0]
    return {name.removeprefix("val/"): value for name, value in results.items()}


def fidelity_scores(real: Tensor, fake: Tensor, weights: Path) -> dict[str, float]:
    """torch-fidelity's metrics: input1 is the generated set, input2 the real one (its PRC's convention)."""
    layer = str(LAYER)
    return torch_fidelity.calculate_metrics(
        input1=Images(fake), input2=Images(real), cuda=False, fid=True, kid=True, prc=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
        feature_layer_fid=layer, feature_layer_kid=layer, feature_layer_prc=layer, kid_subsets=KID_SUBSETS,
        kid_subset_size=KID_SUBSET_SIZE, batch_size=BATCH, cache=False, save_cpu_ram=True, verbose=False)


@pytest.mark.parametrize("size", [28, 64])
def test_fid_kid_precision_recall_equal_torch_fidelity(size: int, weights: Path) -> None:
    # The generated side: half like the real images, half not (noisy digits, steeper gradients).
    if size == 28:
        other, noise = digits(40, 40), torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        real, fake = digits(0, 40), torch.cat([other[:20], (other[20:] * 0.7 + noise * 76).round().to(torch.uint8)])
    else:
        real, fake = smooth_rgb(40, seed=0), torch.cat([smooth_rgb(20, seed=1), smooth_rgb(20, seed=2, tilt=4.0)])
    ours, reference = project_scores(real, fake, weights), fidelity_scores(real, fake, weights)
    print(f"{size} px: project {ours}\n       torch-fidelity {reference}")
    # docs/evaluation.md gives the agreement measured: FID 3e-7 relative, KID 5e-6 (torch-fidelity sums in float32)
    assert ours["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=1e-5)
    assert ours["kid"] == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-4)
    assert ours["kid_std"] == pytest.approx(reference["kernel_inception_distance_std"], rel=1e-3)
    assert ours["precision"] == reference["precision"] and ours["recall"] == reference["recall"]
    assert ours["fid"] > 0.1 and ours["kid"] > 1e-3 and 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1


# --- on shared features: an independent, plain implementation ------------------------------------


def textbook_prdc(real: Tensor, fake: Tensor, k: int) -> dict[str, float]:
    """The papers' definitions over the full distance matrices, in float64 (precision and recall with the balls' edges, as
    torch-fidelity; density and coverage without, as Naeem et al.)."""
    real, fake = real.double(), fake.double()
    real_radius = torch.cdist(real, real).sort(1).values[:, k]  # column 0: the point itself
    fake_radius = torch.cdist(fake, fake).sort(1).values[:, k]
    d = torch.cdist(real, fake)  # (N real, M fake)
    precision = sum(any(d[i, j] <= real_radius[i] for i in range(len(real))) for j in range(len(fake))) / len(fake)
    recall = sum(any(d[i, j] <= fake_radius[j] for j in range(len(fake))) for i in range(len(real))) / len(real)
    density = sum(int(d[i, j] < real_radius[i]) for i in range(len(real)) for j in range(len(fake))) / (k * len(fake))
    coverage = sum(bool(d[i].min() < real_radius[i]) for i in range(len(real))) / len(real)
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_density_coverage_equal_independent_implementations(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    real = torch.randn(60, 8, generator=g)
    fake = torch.cat([torch.randn(30, 8, generator=g) * 0.5, torch.randn(20, 8, generator=g) + 2])  # 50
    ours = prdc(real, fake, k=k, chunk=7)  # many blocks, uneven at the edges
    assert ours == pytest.approx(textbook_prdc(real, fake, k), abs=1e-12)
    fidelity = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=10_000, save_cpu_ram=False,
                                      verbose=False)
    assert (ours["precision"], ours["recall"]) == pytest.approx((fidelity["precision"], fidelity["recall"]), abs=1e-6)
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1


def test_kid_equals_torch_fidelity_on_shared_features() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(70, 16, generator=g), torch.randn(50, 16, generator=g) * 1.3 + 0.2
    mean, std = kid(real, fake, subsets=40, subset_size=30)
    fidelity = kid_features_to_metric(fake, real, kid_subsets=40, kid_subset_size=30, kid_kernel="poly",
                                      kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
                                      rng_seed=2020, verbose=False)
    assert mean == pytest.approx(fidelity["kernel_inception_distance_mean"], rel=1e-5)
    assert std == pytest.approx(fidelity["kernel_inception_distance_std"], rel=1e-4)


def test_the_metrics_use_full_float32_matmuls_and_leave_the_setting_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr("gan_modules.metrics._mmd2_unbiased",
                        lambda x, y: seen.append(torch.get_float32_matmul_precision()) or torch.tensor(0.0))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on a GPU, as Lightning's tip suggests
    try:
        kid(torch.randn(8, 4), torch.randn(8, 4), subsets=2)
        assert seen == ["highest", "highest"] and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


# --- analytic cases ------------------------------------------------------------------------------


def test_kid_of_two_point_masses_is_the_kernel_distance() -> None:
    # All x the same point and all y another: MMD^2 = k(x, x) + k(y, y) - 2 k(x, y) in every subset, exactly.
    x, y = torch.tensor([[1.0, 0.0]]).expand(20, -1), torch.tensor([[0.0, 1.0]]).expand(30, -1)
    kernel = lambda a, b: (a @ b / 2 + 1) ** 3  # noqa: E731  (x.y / D + 1)^3, D = 2
    expected = kernel(x[0], x[0]) + kernel(y[0], y[0]) - 2 * kernel(x[0], y[0])  # 3.375 + 3.375 - 2 = 4.75
    mean, std = kid(x, y, subsets=10, subset_size=1000)  # subset size capped at 20
    assert mean == pytest.approx(expected.item(), rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    assert kid(x, x.clone(), subsets=3)[0] == pytest.approx(0, abs=1e-12)


def test_identical_sets_have_full_precision_recall_and_coverage() -> None:
    features = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    scores = prdc(features, features.clone(), k=3, chunk=16)
    assert (scores["precision"], scores["recall"], scores["coverage"]) == (1.0, 1.0, 1.0)


def test_a_lost_mode_costs_recall_not_precision() -> None:
    # Two far-apart real modes; the generator reproduces one of them (up to 1e-4) and misses the other.
    g = torch.Generator().manual_seed(0)
    real = torch.cat([torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g) + 100])
    fake = real[:50] + 1e-4 * torch.randn(50, 4, generator=g)
    scores = prdc(real, fake, k=3)
    assert (scores["precision"], scores["recall"], scores["coverage"]) == (1.0, 0.5, 0.5)


def test_coverage_compares_float64_features_in_float64() -> None:
    # Real point 0's ball (radius r, to its nearest other real point) misses the generated point r + 1e-10 away;
    # rounded to float32, that distance fell inside it. Points 2 and 3 are far from everything.
    r = 0.099999997
    real = torch.tensor([[0.0], [-r], [100.0], [200.0]], dtype=torch.float64)
    fake = torch.tensor([[r + 1e-10], [300.0], [400.0]], dtype=torch.float64)
    assert prdc(real, fake, k=1)["coverage"] == 0.25  # only point 1's ball (radius r, to point 0) holds it
