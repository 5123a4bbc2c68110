"""FID features for digit images without a download: a small CNN classifier's penultimate layer.

``python -m study.compare`` trains ``DigitFeatures`` once on the training digits and hands the saved
weights to every run it starts as ``--fid.feature '{"class_path":
"gan_modules.digit_features.DigitFeatures", "init_args": {"weights": "PATH"}}'``. It lives in the
library, not beside the study, so that the training runs load it without importing a script. Its FID
is only comparable with itself, never with published Inception FIDs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DigitFeatures(nn.Module):
    """A small CNN digit classifier whose 64-dimensional penultimate layer stands in for Inception: float
    images (N, 3, H, W) in [0, 1] (FIDCallback's input for custom extractors) to features (N, 64).
    ``classify`` adds a linear head to 10 classes, used only to train it
    (``study.digit_classifier.train_digit_features``).

    Args:
        weights: state dict saved by ``study.digit_classifier.train_digit_features``, loaded with
            ``weights_only=True``; ``None`` keeps the random init.
    """

    num_features = 64

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, 2, 1), nn.LeakyReLU(0.2),    # (N, 32, 14, 14)
            nn.Conv2d(32, 64, 3, 2, 1), nn.LeakyReLU(0.2),   # (N, 64, 7, 7)
            nn.Conv2d(64, 128, 3, 2, 1), nn.LeakyReLU(0.2),  # (N, 128, 4, 4)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),           # (N, 128)
            nn.Linear(128, self.num_features),
        )
        self.head = nn.Linear(self.num_features, 10)
        if weights is not None:
            self.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        gray = images.float().mean(1, keepdim=True)  # (N, 1, H, W)
        if gray.shape[-2:] != (28, 28):
            gray = F.interpolate(gray, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        return self.body(gray * 2 - 1)

    def classify(self, images: Tensor) -> Tensor:
        """Class logits (N, 10) of float images (N, 3, H, W) in [0, 1]."""
        return self.head(F.relu(self(images)))
