"""FID, KID, precision/recall and density/coverage as pure functions of two feature sets, (N, D) real and
(M, D) generated, on whatever device the features are. Beyond the features, KID's and the neighbour metrics' memory
is bounded by ``subset_size`` and ``chunk``, never by N or M; FID is torchmetrics' own computation, which holds a
float64 copy of both feature sets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

KID_SEED = 2020  # torch-fidelity's `rng_seed`: the same subsets as its KID on the same features


@contextlib.contextmanager
def full_float32_matmuls() -> Iterator[None]:
    """No TF32 inside (``torch.set_float32_matmul_precision("high")`` allows it on GPUs): its 10-bit mantissa would
    cost KID, a difference of large kernel sums, its digits, and move distances at the balls' edges."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class _GivenFeatures(nn.Identity):
    """The "extractor" of features already extracted: torchmetrics' FID then sums exactly what it is given."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID (Heusel et al. 2017, arXiv:1706.08500) of (N, D) real and (M, D) generated features: torchmetrics'
    ``FrechetInceptionDistance`` fed the features themselves, so its own maths (float64 means and covariances, the
    trace of the covariances' product's square root from its eigenvalues) gives the number."""
    metric = FrechetInceptionDistance(feature=_GivenFeatures(real.shape[1]), sync_on_compute=False).to(real.device)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute().item()


@full_float32_matmuls()
def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = KID_SEED) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, arXiv:1801.01401): the unbiased MMD² with the cubic
    polynomial kernel ``k(x, y) = (x·y / D + 1)³``, averaged over random subsets, as torch-fidelity computes it
    (the same subsets for the same seed: each draws ``subset_size`` generated, then real rows without replacement).

    Args:
        real: (N, D) features of real images.
        fake: (M, D) features of generated images.
        subsets: how many subsets the mean and standard deviation are taken over.
        subset_size: rows per subset, capped at min(N, M) (torch-fidelity refuses fewer rows instead).

    Returns:
        The mean and the (population) standard deviation of the subsets' MMD².
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}.")
    rng = np.random.RandomState(seed)
    mmds = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        x = fake[torch.from_numpy(rng.choice(len(fake), size, replace=False)).to(fake.device)]
        y = real[torch.from_numpy(rng.choice(len(real), size, replace=False)).to(real.device)]
        mmds[i] = _mmd2_unbiased(x, y)
    return mmds.mean().item(), mmds.std(unbiased=False).item()


def _mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """MMD² of (m, D) x and y: off-diagonal kernel means within each set minus twice the mean across them."""
    m, gamma = len(x), 1.0 / x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T * gamma + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))  # (m, m) each, float32
    within = (k_xx.sum(dtype=torch.float64) - k_xx.diagonal().sum(dtype=torch.float64)
              + k_yy.sum(dtype=torch.float64) - k_yy.diagonal().sum(dtype=torch.float64))
    return within / (m * (m - 1)) - 2 * k_xy.sum(dtype=torch.float64) / (m * m)


def knn_radii(features: Tensor, k: int, chunk: int = 4096) -> Tensor:
    """(N,) distance from each row of (N, D) ``features`` to its k-th nearest other row, in (chunk, chunk) blocks."""
    if len(features) <= k:
        raise ValueError(f"the k-th nearest neighbour needs more than k = {k} images, got {len(features)}.")
    radii = []
    for rows in features.split(chunk):
        nearest = rows.new_empty(len(rows), 0)  # (c, <= k + 1): the smallest distances so far, the row itself first
        for columns in features.split(chunk):
            nearest = torch.cat([nearest, torch.cdist(rows, columns)], 1).topk(
                min(k + 1, nearest.shape[1] + len(columns)), dim=1, largest=False).values
        radii.append(nearest[:, k])
    return torch.cat(radii)


@full_float32_matmuls()
def prdc(real: Tensor, fake: Tensor, k: int = 3, chunk: int = 4096) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, arXiv:1904.06991) and density and coverage
    (Naeem et al. 2020, arXiv:2002.09797) from the same distances. Each image's ball reaches its k-th nearest
    neighbour in its own set. precision: share of generated images inside some real ball; recall: share of real
    images inside some generated ball (both ``<=``, as torch-fidelity); density: generated images' real-ball
    memberships / (k M); coverage: share of real balls holding a generated image (both ``<``, as Naeem et al.).

    Args:
        real: (N, D) features of real images, N > k.
        fake: (M, D) features of generated images, M > k.
        k: the neighbourhood size (3 in both papers).
        chunk: rows and columns of each block of distances: memory O(chunk²) whatever N and M.
    """
    real_radii, fake_radii = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)  # (N,), (M,)
    in_real_ball = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)  # precision
    real_balls_around = torch.zeros(len(fake), dtype=torch.float64, device=fake.device)  # density
    in_fake_ball = torch.zeros(len(real), dtype=torch.bool, device=real.device)  # recall
    nearest_fake = torch.full((len(real),), float("inf"), dtype=real.dtype, device=real.device)  # coverage
    for i in range(0, len(real), chunk):
        rows, radii = real[i:i + chunk], real_radii[i:i + chunk, None]
        for j in range(0, len(fake), chunk):
            distances = torch.cdist(rows, fake[j:j + chunk])  # (real rows, fake columns)
            in_real_ball[j:j + chunk] |= (distances <= radii).any(0)
            real_balls_around[j:j + chunk] += (distances < radii).sum(0)
            in_fake_ball[i:i + chunk] |= (distances <= fake_radii[None, j:j + chunk]).any(1)
            nearest_fake[i:i + chunk] = torch.minimum(nearest_fake[i:i + chunk], distances.min(1).values)
    return {"precision": in_real_ball.double().mean().item(), "recall": in_fake_ball.double().mean().item(),
            "density": (real_balls_around.sum() / (k * len(fake))).item(),
            "coverage": (nearest_fake < real_radii).double().mean().item()}
