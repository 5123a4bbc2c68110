"""The study's statistics, as small pure functions of plain numbers: mean and spread over seeds, the
stability and divergence rules, Spearman's rank correlation, and a band over seeds on a common grid.

Each rule is stated once, here, and the report quotes these docstrings' rules.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# A run diverged if its final FID is more than this many times its best FID (see `diverged`).
DIVERGENCE_FACTOR = 2.0
# Spearman's rho over fewer pairs is +-1 or undefined whatever the signal: not reported.
MIN_CORRELATION_PAIRS = 3


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator) of ``values``.

    NaN entries (a figure a run does not define, e.g. a correlation over too few evaluations) are left
    out. Returns NaN for the mean with no values left, and NaN for the deviation with fewer than two.
    """
    kept = [float(value) for value in values if not math.isnan(value)]
    if not kept:
        return math.nan, math.nan
    mean = sum(kept) / len(kept)
    if len(kept) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((value - mean) ** 2 for value in kept) / (len(kept) - 1))


def last_third(values: Sequence[float]) -> list[float]:
    """The last third of a run's evaluations, ``ceil(n / 3)`` of them but at least two (a spread needs
    two values): for 9 evaluations the last 3, for 4 the last 2, for 2 both."""
    return list(values[-max(2, math.ceil(len(values) / 3)):])


def late_spread(fids: Sequence[float]) -> float:
    """Stability of one run: the sample standard deviation of its FID over the last third of its
    evaluations (:func:`last_third`); NaN with fewer than two evaluations."""
    return mean_std(last_third(fids))[1]


def diverged(fids: Sequence[float], failed: bool, factor: float = DIVERGENCE_FACTOR) -> bool:
    """Whether a run diverged: it failed (a non-zero exit, as when the finiteness guard stops a
    non-finite loss), or it has no FID, or its final FID is not finite or exceeds ``factor`` times its
    best FID (it got somewhere and lost it)."""
    if failed or not fids:
        return True
    final, finite = fids[-1], [fid for fid in fids if math.isfinite(fid)]
    return not math.isfinite(final) or final > factor * min(finite)


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the average of the ranks they span
    ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="stable")
    result = np.empty(len(array))
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and array[order[end + 1]] == array[order[start]]:
            end += 1
        result[order[start:end + 1]] = (start + end) / 2 + 1  # mean of ranks start+1 .. end+1
        start = end + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the two samples' :func:`ranks`.

    Pairs with a non-finite member are left out; NaN with fewer than ``MIN_CORRELATION_PAIRS`` pairs
    left or when either sample is constant (its ranks have no variance).
    """
    if len(x) != len(y):
        raise ValueError(f"spearman needs samples of one length, got {len(x)} and {len(y)}.")
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < MIN_CORRELATION_PAIRS:
        return math.nan
    rx, ry = (ranks(sample) for sample in zip(*pairs))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return math.nan if norm == 0 else float(rx @ ry) / norm


def values_at(events: Sequence[tuple[int, float]], steps: Sequence[int], exact: bool) -> list[float]:
    """A logged signal sampled at ``steps`` (those of the FID evaluations).

    Args:
        events: the signal's (step, value) pairs in logging order.
        steps: the steps to sample at.
        exact: take only a value logged at exactly that step (``val/*`` tags, logged at the same
            validation as ``val/fid``); else the last value logged at or before it (``train/*``
            tags, logged every ``log_every_n_steps``).

    Returns:
        One value per step, NaN where there is none.
    """
    result = []
    for step in steps:
        found = [value for at, value in events if (at == step if exact else at <= step)]
        result.append(found[-1] if found else math.nan)
    return result


def band_on_grid(curves: Sequence[tuple[Sequence[float], Sequence[float]]]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mean and the min-max band over seeds of curves sampled at different x (e.g. FID against
    each run's own evaluation times).

    The grid is every curve's x within the span all curves cover (from the latest first x to the
    earliest last x); each curve is interpolated linearly onto it. With one curve that is the curve
    itself.

    Args:
        curves: (x, y) per run, x increasing; runs without a point are skipped.

    Returns:
        (grid, mean, low, high), each of the grid's length (empty if the curves share no span).
    """
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        return tuple(np.empty(0) for _ in range(4))  # type: ignore[return-value]
    start, stop = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
    grid = np.unique(np.concatenate([x[(x >= start) & (x <= stop)] for x, _ in curves]))
    on_grid = np.stack([np.interp(grid, x, y) for x, y in curves])  # (runs, grid)
    return grid, on_grid.mean(0), on_grid.min(0), on_grid.max(0)
