"""Training the digit classifier whose features the study's FID uses, and the FID floor of real digits.

The network itself, ``gan_modules.digit_features.DigitFeatures``, lives in the library, so the
``train.py`` runs the study starts load it by class path without importing the study.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules import MNISTDataModule
from gan_modules.digit_features import DigitFeatures
from gan_modules.fid import metric_input
from gan_modules.metrics import frechet_distance


def train_digit_features(data_dir: str, path: Path, epochs: int = 20, seed: int = 0) -> float:
    """Train ``DigitFeatures`` on the train split of ``data_dir``'s MNIST files, save it to ``path``,
    and return its accuracy on the validation split."""
    torch.manual_seed(seed)
    data = MNISTDataModule(data_dir, batch_size=64, download=False)
    data.setup()
    model = DigitFeatures().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(data.train_set, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        for images, labels in loader:
            loss = F.cross_entropy(model.classify(as_metric_input(images)), labels.long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(data.val_set, batch_size=256):
            correct += (model.classify(as_metric_input(images)).argmax(1) == labels).sum().item()
            total += len(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return correct / max(total, 1)


def real_fid_floor(data_dir: str, weights: Path, num_samples: int, seed: int = 0) -> tuple[float, int]:
    """FID of ``num_samples`` real training digits (drawn without replacement) against the whole
    validation split, with ``DigitFeatures``: what a perfect generator would score with this many
    samples, the floor against which the models' FIDs read. Returns (FID, training digits used)."""
    data = MNISTDataModule(data_dir, batch_size=256, download=False)
    data.setup()
    extractor = DigitFeatures(str(weights))  # the runs' FID with these features
    index = torch.randperm(len(data.train_set), generator=torch.Generator().manual_seed(seed))[:num_samples]
    loader = torch.utils.data.DataLoader
    with torch.inference_mode():
        real, fake = (torch.cat([extractor(as_metric_input(images)) for images, _ in loader(subset, batch_size=256)])
                      for subset in (data.val_set, torch.utils.data.Subset(data.train_set, index.tolist())))
        return frechet_distance(real, fake), len(index)


def as_metric_input(images: Tensor) -> Tensor:
    """[-1, 1] images (N, C, H, W) -> (N, 3, H, W) in [0, 1], quantised as FIDCallback's input."""
    return metric_input(images, as_float=True)
