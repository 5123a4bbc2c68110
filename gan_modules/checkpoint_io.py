"""Checkpoint files that a kill during a save cannot break."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the target's folder, flushes it to disk, then
    renames it over the target. A rename within one folder is atomic, so ``last.ckpt`` is always
    either the previous complete checkpoint or the new complete one.

    (Lightning's own writer renames from the system temp folder, which is a copy, not an atomic
    rename, when that folder is on another file system.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        if "://" in str(path):  # remote storage: fsspec's transaction is the best available
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
