"""``python train.py evaluate``: score a checkpoint's generator with every metric of :class:`FIDCallback` (FID, KID,
precision/recall, density/coverage) against the validation images of the data its run trained on, and write the
values with the protocol that produced them (image counts, split, feature extractor and its weights' hash, resize,
seeds, versions) as JSON. Every problem ends the process with one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch import LightningDataModule, Trainer

import datamodules
from gan_modules.checkpoint_io import resolve_checkpoint, write_atomically
from gan_modules.fid import INCEPTION_FEATURES, WEIGHTS_FILE, FIDCallback, package_version
from gan_modules.flags import init_arguments, on_the_command_line
from gan_modules.metrics import KID_SEED
from gan_modules.sampling import load_generator_checkpoint, output_problem, parse_device


EVALUATE_HELP = ("Score a checkpoint with FID, KID, precision/recall and density/coverage against its run's validation "
                 "images, and write them with the protocol as JSON.")


class EvaluationError(Exception):
    """A checkpoint, data split, weights file or option that cannot be used; the message says which and the fix."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py evaluate", description=EVALUATE_HELP)
    p.add_argument("--ckpt_path", default="last", help="a checkpoint, a run folder, a preset's folder, or `last`: the "
                                                       "newest run's under runs/ (default last)")
    p.add_argument("--num_samples", type=int, default=10_000, help="generated images (default 10000)")
    p.add_argument("--num_real", type=int, default=None,
                   help="real validation images, at an even stride through the split (default: all of them)")
    p.add_argument("--weights_path", default=None,
                   help=f"torch-fidelity's Inception-v3 weights, {WEIGHTS_FILE} (default: torch.hub's cached copy, "
                        "downloaded if missing)")
    p.add_argument("--feature", type=int, default=2048, choices=INCEPTION_FEATURES,
                   help="Inception layer (default 2048, pool3: the standard protocol)")
    p.add_argument("--output", default=None, help="the JSON file (default: evaluation.json in the run folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent vectors (default 0)")
    p.add_argument("--batch_size", type=int, default=250, help="images per generator and Inception forward")
    p.add_argument("--config", default=None, help="the run's config.yaml, for its data (default: the run folder's)")
    p.add_argument("--data_dir", default=None, help="where the data are now, if not where the run read them")
    p.add_argument("--cache_dir", default=".fid_cache", help="cache of real features (keyed on their content)")
    return p


def main(argv: list[str]) -> None:
    """``train.py evaluate ARGS``."""
    p = parser()
    args = p.parse_args(argv)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # device lines and tips
    try:
        with warnings.catch_warnings(), on_the_command_line():  # both put back when done
            warnings.filterwarnings("ignore", message=r".*LeafSpec")  # a deprecation inside Lightning
            warnings.showwarning = lambda message, category, *_: print(  # one line each, in this command's flags
                f"{category.__name__}: {_own_flags(' '.join(str(message).split()))}", file=sys.stderr)
            report = evaluate(args)
    except EvaluationError as error:
        p.exit(2, f"{p.prog}: error: {error}\n")  # argparse's format and status, without the usage block
    finally:
        lightning_log.setLevel(level)
    print(json.dumps(report["metrics"], indent=1))
    print(f"wrote the scores and their protocol to {report['output']}")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Check every argument, score the checkpoint and write the JSON; returns what it wrote.

    Raises:
        EvaluationError: one line naming what cannot be used and how to fix it.
    """
    started = time.perf_counter()
    try:
        ckpt_path = resolve_checkpoint(args.ckpt_path)
        run_folder = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
        output = Path(args.output) if args.output is not None else run_folder / "evaluation.json"
        if (problem := output_problem(output, (".json",), beside=None)) is not None:
            raise EvaluationError(problem)
        device = parse_device(args.device)
        model = load_generator_checkpoint(ckpt_path, map_location="cpu")
        datamodule, config = _run_datamodule(run_folder, args.config, args.data_dir)
        if tuple(datamodule.image_shape) != tuple(model.hparams.image_shape):
            raise EvaluationError(f"{ckpt_path} generates {tuple(model.hparams.image_shape)} images but the data of "
                                  f"{config} are {tuple(datamodule.image_shape)}: pass the run's own --config")
        datamodule.setup("validate")
        real_count = len(datamodule.val_dataloader().dataset)
        if real_count < 2:
            raise EvaluationError(f"the validation split of {type(datamodule).__name__} (from {config}) holds "
                                  f"{real_count} image(s); the metrics need at least 2: "
                                  "pass `--data_dir` the full data")
        callback = FIDCallback(feature=args.feature, weights_path=args.weights_path,
                               num_samples=args.num_samples, num_real=args.num_real, batch_size=args.batch_size,
                               seed=args.seed, cache_dir=args.cache_dir)
        callback.load_extractor()  # a missing or foreign weights file ends here, named by `--weights_path`
    except (OSError, ValueError, RuntimeError) as error:  # the checkpoint's, datamodules' and weights' own messages
        message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise EvaluationError(_own_flags(" ".join(message.split()))) from None
    weights = Path(args.weights_path or Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE)  # as read above
    real = real_count if args.num_real is None else min(args.num_real, real_count)
    print(f"evaluate: {args.num_samples:,} images of {ckpt_path} against {real:,} validation images of "
          f"{type(datamodule).__name__} on {args.device}", flush=True)
    on_cpu = device.type == "cpu"
    trainer = Trainer(accelerator="cpu" if on_cpu else "gpu", devices=1 if on_cpu else [device.index or 0],
                      logger=False, enable_checkpointing=False, enable_model_summary=False, limit_val_batches=1,
                      callbacks=[callback])
    scores = trainer.validate(model, datamodule, verbose=False)[0]
    # Logged as float32: written with the digits a float32 has (0.725, not 0.7250000238418579).
    metrics = {name: float(str(np.float32(scores[f"val/{name}"]))) for name in
               ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage") if f"val/{name}" in scores}
    height, width = datamodule.image_shape[1:]
    report = {
        "metrics": metrics,
        "protocol": {
            "generated_images": args.num_samples,
            "real_images": len(callback.real_features),
            "real_split": "validation",
            "real_data": {"datamodule": type(datamodule).__name__,
                          "data_dir": str(Path(getattr(datamodule, "data_dir", "")).resolve()),
                          "image_shape": list(datamodule.image_shape), "config": str(config.resolve())},
            "feature_extractor": {"network": "Inception-v3 (torch-fidelity's inception-v3-compat, via torchmetrics)",
                                  "layer": args.feature, "weights_file": str(weights.resolve()),
                                  "weights_sha256": _sha256(weights)},
            "resize": (f"{height}x{width} uint8 (grayscale repeated to RGB) -> 299x299, "
                       "bilinear as TensorFlow 1.x (no antialiasing), as torch-fidelity"),
            "seed": args.seed,
            "kid": {"subsets": callback.kid_subsets, "subset_size": min(callback.kid_subset_size, real,
                                                                         args.num_samples), "seed": KID_SEED},
            "prdc_k": callback.prdc_k,
            "versions": {name: package_version(name)
                         for name in ("lightning-gans", "torch", "torchmetrics", "torch-fidelity")},
            "device": args.device,
        },
        "checkpoint": {"path": str(ckpt_path.resolve()), "model": type(model).__name__,
                       "generator_steps": model.generator_steps, "sha256": _sha256(ckpt_path)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    try:  # whole or not at all
        write_atomically({output: (json.dumps(report, indent=2) + "\n").encode()}, "the scores",
                         "pass `--output` a path elsewhere")
    except OSError as error:
        raise EvaluationError(error.strerror) from None
    return {**report, "output": str(output)}


def _run_datamodule(run_folder: Path, config: str | None, data_dir: str | None) -> tuple[LightningDataModule, Path]:
    """The datamodule the run trained on, from its ``config.yaml`` (LightningCLI writes it into the run folder)."""
    path = Path(config) if config is not None else run_folder / "config.yaml"
    if not path.is_file():
        raise EvaluationError(f"no config.yaml at {path} to tell the run's data: pass `--config` the run's config.yaml "
                              "(or a preset) and `--data_dir` the data")
    try:
        data = (yaml.safe_load(path.read_text()) or {}).get("data")
    except (yaml.YAMLError, OSError, AttributeError) as error:
        raise EvaluationError(f"{path} is not a readable YAML configuration ({' '.join(str(error).split())}): "
                              "pass another `--config`") from None
    name = str((data or {}).get("class_path", "")).rsplit(".", 1)[-1]
    if name not in datamodules.__all__:  # nothing the file names is imported
        raise EvaluationError(f"{path} names no datamodule of this project under data.class_path (found {name!r}; "
                              f"known: {', '.join(datamodules.__all__)}): pass another `--config`")
    cls = getattr(datamodules, name)
    init_args = dict(data.get("init_args") or {})
    if data_dir is not None:
        init_args["data_dir"] = data_dir
    known = init_arguments(cls)
    try:
        return cls(**{key: value for key, value in init_args.items() if key in known}), path
    except TypeError as error:
        raise EvaluationError(f"the data settings in {path} do not fit {name} ({error}): "
                              "pass another `--config`") from None


def _own_flags(message: str) -> str:
    """A message of the training flags (``--fid.weights_path``, ``--data.data_dir``) in this command's."""
    message = message.replace("Either turn FID off with `--fid.enabled false`, or give", "Give")
    message = message.replace(", or turn FID off with `--fid.enabled false`", "")
    message = message.replace("`--fid.", "`--").replace("`--data.data_dir", "`--data_dir")
    return re.sub(r"`--data\.(\w+) ([^`]+)`", r"`\1: \2` (in the data section of --config)", message)  # no flag here


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


if __name__ == "__main__":
    main(sys.argv[1:])
