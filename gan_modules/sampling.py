"""Writing samples from a checkpoint: the work behind ``python train.py sample``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm import tqdm

from gan_modules.base import GANModule
from gan_modules.callbacks import image_grid
from gan_modules.checkpoint_io import read_checkpoint, write_atomically
from gan_modules.run_integrity import refuse_nonfinite_weights, saved_model_class
from gan_modules.flags import SettingError, advice, init_arguments


def load_generator_checkpoint(ckpt_path: str | Path, map_location: str = "cpu") -> GANModule:
    """Load a DCGAN, WGANGP or WGAN checkpoint, reading the file once with ``weights_only=True``. The class
    is the one of ``gan_modules.__all__`` its ``gan_state`` names (nothing it names is imported);
    hyperparameters that are not arguments of that class (LightningCLI's ``_class_path``) are dropped.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file is unreadable, of another model, or holds a non-finite weight.
    """
    import gan_modules

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(advice(f"No checkpoint at {path}: pass `--ckpt_path` a .ckpt file written by "
                                       f"`train.py fit`."))
    checkpoint = read_checkpoint(path, map_location=map_location)
    name = saved_model_class(checkpoint)
    state_dict = checkpoint.get("state_dict")
    if name not in gan_modules.__all__ or not isinstance(state_dict, dict):
        raise SettingError(f"{path} was not written by this project's GAN modules (found model {name!r}): "
                           f"pass `--ckpt_path` a checkpoint written by `train.py fit`.")
    refuse_nonfinite_weights(checkpoint, f" {path}")  # the EMA generator's too
    cls = getattr(gan_modules, name)
    hyperparameters = checkpoint.get("hyper_parameters")
    hyperparameters = hyperparameters if isinstance(hyperparameters, dict) else {}
    arguments = init_arguments(cls)
    try:
        arguments_of_the_run = {key: value for key, value in hyperparameters.items() if key in arguments}
        # Sampling needs neither the training-speed options nor a compilation of tens of seconds.
        arguments_of_the_run.update({key: False for key in ("compile", "channels_last") if key in arguments})
        model = cls(**arguments_of_the_run)
        model.on_load_checkpoint(checkpoint)  # restores the step counters and the training RNG
        model.load_state_dict(state_dict)
    except (TypeError, ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())  # load_state_dict's report spans several lines
        raise ValueError(f"{path} does not load into {name}: {reason}") from error
    return model.to(map_location)


def output_problem(output: str | Path, suffixes: tuple[str, ...] = (".pt", ".pth"),
                   beside: str | None = ".png") -> str | None:
    """Why ``--output`` (a file ending in one of ``suffixes``) or the file ``beside`` it (its stem with that suffix)
    cannot be written, checked before any work; ``None`` when both can be."""
    output = Path(output)
    if output.suffix not in suffixes:  # a .png output would be overwritten by its own grid
        why = f" (a tensor file; the {beside[1:].upper()} grid goes beside it)" if beside else ""
        return (f"--output {output} must end in {suffixes[0]}{why}: pass e.g. "
                f"`--output {output.with_suffix(suffixes[0])}`.")
    for target in (output, *([output.with_suffix(beside)] if beside else [])):
        if target.is_dir():
            return (f"--output: {target} is a folder, not a file: pass a file path such as "
                    f"`--output {output / f'out{suffixes[0]}'}`.")
    existing = next(folder for folder in output.parents if folder.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        return (f"--output {output} lies under {existing}, which is a file, not a folder: "
                f"pass `--output` a path in a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--output {output}: {existing} is not writable: pass `--output` a path in a folder you can write."
    return None


def parse_device(text: str) -> torch.device:
    """``--device`` as a device of this machine.

    Raises:
        ValueError: not a device, or a CUDA device this machine does not have; the message names the choices.
    """
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a device: pass `--device cpu` or `--device cuda`.") from None
    found = torch.cuda.device_count()  # 0 without CUDA
    if device.type != "cpu" and (device.type != "cuda" or (device.index or 0) >= found):
        choices = "`--device cpu`" + (f" or `--device cuda:N` with N from 0 to {found - 1}" if found else "")
        raise ValueError(f"--device {text} is not a CUDA device of this machine ({found} found): pass {choices}.")
    return device


def write_samples(model: GANModule, num_samples: int, output: str | Path, seed: int = 0, nrow: int = 8,
                  batch_size: int = 256) -> Path:
    """Write ``num_samples`` images as a uint8 (N, C, H, W) tensor file and a PNG grid of the first
    ``nrow * nrow`` beside it, and return the grid's path. Both are renamed into place only when both are
    complete. The generator runs ``batch_size`` images at a time, so its memory does not grow with
    ``num_samples``.

    Raises:
        CheckpointWriteError: (an OSError) a file could not be written; the message names it and the fix.
    """
    output = Path(output)
    grid_path = output.with_suffix(".png")
    noise = model.noise(num_samples, torch.Generator().manual_seed(seed)).cpu()
    starts = range(0, num_samples, batch_size)
    chunks = []
    for start in tqdm(starts, desc="Sampling", unit="batch", disable=len(starts) < 10):
        images = model.sample(len(noise[start:start + batch_size]), noise=noise[start:start + batch_size])
        chunks.append(((images.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))  # from [-1, 1]
    as_uint8 = torch.cat(chunks)
    tensor_bytes, grid_bytes = io.BytesIO(), io.BytesIO()
    torch.save(as_uint8, tensor_bytes)
    shown = as_uint8[: nrow * nrow].float() / 127.5 - 1  # the saved values
    save_image(image_grid(shown, nrow), grid_bytes, format="png")

    write_atomically({output: tensor_bytes.getbuffer(), grid_path: grid_bytes.getbuffer()}, "samples",
                     "pass `--output` a path elsewhere")
    return grid_path
