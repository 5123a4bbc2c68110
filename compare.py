"""Train DCGAN, WGAN-GP, WGAN and a spectral-norm critic on the same data with the same budget, and
write a report: a markdown table and PNG plots of FID against wall-clock time and of the losses.

    python benchmarks/digits_to_idx.py --out data/digits        # offline real images (sklearn digits)
    python compare.py --data_dir data/digits --out runs/compare --budget_seconds 180
    python compare.py --data_dir data --generator_steps 2000 --fid inception --fid_weights PTH -- --data.batch_size 64

Each model is its MNIST preset (``configs/*_mnist.yaml``: the paper's optimiser, batch size and
n_critic) run as ``python train.py fit`` in a subprocess with the same ``--data.data_dir``, seed and
budget: either the same wall-clock time (``--budget_seconds``, Lightning's ``--trainer.max_time``,
which counts validation and FID too) or the same number of generator updates
(``--generator_steps``, ``--model.max_generator_steps``); ``--max_epochs`` caps both. FID runs after
every epoch. Arguments after ``--`` go to every ``train.py`` call (e.g. ``--data.image_size 32``).

FID features: ``inception`` (pool3, the standard FID; needs ``--fid_weights`` offline) or ``digits``
(the default without ``--fid_weights``): the 64-dimensional penultimate layer of a small CNN digit
classifier, ``DigitFeatures``, trained here once on the training split. Its FID is only comparable
with itself, never with published Inception FIDs.

Results are read back from each run's TensorBoard events (``OUT/runs/<model>/version_0``):
``OUT/comparison.md``, ``OUT/fid_vs_time.png`` and ``OUT/losses.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent

# name -> (preset, extra train.py arguments, description for the report)
MODELS: dict[str, tuple[str, list[str], str]] = {
    "dcgan": ("configs/dcgan_mnist.yaml", [], "DCGAN, batch-norm discriminator (Radford et al. 2016)"),
    "wgan_gp": ("configs/wgan_gp_mnist.yaml", [], "WGAN-GP, layer-norm critic, lambda 10 (Gulrajani et al. 2017)"),
    "wgan": ("configs/wgan_mnist.yaml", [], "WGAN, weight clipping 0.01 (Arjovsky et al. 2017)"),
    "dcgan_sn": ("configs/dcgan_mnist.yaml", ["--model.spectral_norm", "true", "--model.critic_norm", "none"],
                 "DCGAN losses with a spectral-norm discriminator, no batch norm (SN-GAN, Miyato et al. 2018)"),
    "wgan_gp_sn": ("configs/wgan_gp_mnist.yaml", ["--model.spectral_norm", "true"],
                   "WGAN-GP with spectral norm on the layer-norm critic"),
}
DEFAULT_MODELS = ["dcgan", "wgan_gp", "wgan", "dcgan_sn"]
LOSS_TAGS = ("train/d_loss", "train/g_loss", "train/wasserstein")


# --- FID features without a download -------------------------------------------------------------


class DigitFeatures(nn.Module):
    """A small CNN digit classifier whose 64-dimensional penultimate layer stands in for Inception.

    Maps float images (N, 3, H, W) in [0, 1] (FIDCallback's input for custom extractors) to
    features (N, 64): channel mean -> resize to 28 px -> [-1, 1] -> three stride-2 convolutions ->
    global average pool -> linear 128 -> 64. ``classify`` adds a linear head to 10 classes, used
    only to train it.

    Args:
        weights: state dict saved by ``train_digit_features``; ``None`` keeps the random init.
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
        return self.head(F.relu(self(images)))


def train_digit_features(data_dir: str, path: Path, epochs: int = 20, seed: int = 0) -> float:
    """Train ``DigitFeatures`` on the train split of ``data_dir``'s MNIST files, save it to ``path``,
    and return its accuracy on the validation split."""
    from datamodules import MNISTDataModule

    torch.manual_seed(seed)
    data = MNISTDataModule(data_dir, batch_size=64, download=False)
    data.setup()
    model = DigitFeatures().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(data.train_set, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        for images, labels in loader:
            loss = F.cross_entropy(model.classify(_as_metric_input(images)), labels.long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(data.val_set, batch_size=256):
            correct += (model.classify(_as_metric_input(images)).argmax(1) == labels).sum().item()
            total += len(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return correct / max(total, 1)


def real_fid_floor(data_dir: str, weights: Path, num_samples: int, seed: int = 0) -> tuple[float, int]:
    """FID of ``num_samples`` real training digits (drawn without replacement) against the whole
    validation split, with ``DigitFeatures``: what a perfect generator would score with this many
    samples, the floor against which the models' FIDs read. Returns (FID, training digits used)."""
    from datamodules import MNISTDataModule
    from torchmetrics.image.fid import FrechetInceptionDistance

    data = MNISTDataModule(data_dir, batch_size=256, download=False)
    data.setup()
    metric = FrechetInceptionDistance(feature=DigitFeatures(str(weights)), normalize=True)
    index = torch.randperm(len(data.train_set), generator=torch.Generator().manual_seed(seed))[:num_samples]
    with torch.inference_mode():
        for subset, real in ((torch.utils.data.Subset(data.train_set, index.tolist()), False), (data.val_set, True)):
            for images, _ in torch.utils.data.DataLoader(subset, batch_size=256):
                metric.update(_as_metric_input(images), real=real)
        return float(metric.compute()), len(index)


def _as_metric_input(images: Tensor) -> Tensor:
    """[-1, 1] images (N, C, H, W) -> (N, 3, H, W) in [0, 1], quantised like FIDCallback's input."""
    as_uint8 = ((images.float() + 1) * 127.5).round().clamp(0, 255)
    return as_uint8.expand(-1, 3, -1, -1) / 255


# --- running the models --------------------------------------------------------------------------


def max_time(seconds: int) -> str:
    """Seconds as Lightning's ``DD:HH:MM:SS``."""
    days, rest = divmod(int(seconds), 86400)
    return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def train_command(model: str, args: argparse.Namespace, feature: str, extra: list[str]) -> list[str]:
    preset, model_args, _ = MODELS[model]
    out = Path(args.out).resolve()
    command = [
        sys.executable, str(REPO / "train.py"), "fit", "--config", str(REPO / preset), *model_args,
        "--seed_everything", str(args.seed),
        "--data.data_dir", str(Path(args.data_dir).resolve()),
        "--trainer.max_epochs", str(args.max_epochs),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(out / "runs"),
        "--trainer.logger.init_args.name", model,
        "--trainer.callbacks.every_n_epochs", "1",
        "--trainer.callbacks.num_samples", str(args.fid_samples),
        "--trainer.callbacks.cache_dir", str(out / "fid_cache"),
        "--trainer.callbacks.feature", feature,
    ]
    if args.fid == "inception":
        command += ["--trainer.callbacks.weights_path", str(Path(args.fid_weights).resolve())]
    if args.generator_steps is not None:
        command += ["--model.max_generator_steps", str(args.generator_steps)]
    else:
        command += ["--trainer.max_time", max_time(args.budget_seconds)]
    return command + extra


def run_model(model: str, command: list[str], out: Path) -> dict:
    """Run one ``train.py fit``; its output goes to ``OUT/<model>.log``; returns start/end times."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = out / f"{model}.log"
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    end = time.time()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"train.py for {model} failed (exit {code}); the end of {log}:\n{tail}")
    return {"start": start, "end": end, "command": command}


# --- reading the runs back -----------------------------------------------------------------------


@dataclass
class RunResult:
    model: str
    start: float  # wall-clock time the subprocess started
    end: float
    batch_size: int
    scalars: dict[str, list[tuple[float, int, float]]] = field(default_factory=dict)  # tag -> (wall, step, value)

    def values(self, tag: str) -> list[float]:
        return [value for _, _, value in self.scalars.get(tag, [])]

    def final(self, tag: str) -> float:
        values = self.values(tag)
        return values[-1] if values else float("nan")

    @property
    def fid(self) -> list[float]:
        return self.values("val/fid")

    def images_per_second(self) -> float:
        """Training images per second between the first and last logged training step: the change of
        ``train/critic_steps`` times the batch size over the change of event wall time (this span
        includes the validation and FID that fall inside it)."""
        events = self.scalars.get("train/critic_steps", [])
        if len(events) < 2 or events[-1][0] <= events[0][0]:
            return float("nan")
        return (events[-1][2] - events[0][2]) * self.batch_size / (events[-1][0] - events[0][0])

    def seconds_per_epoch(self) -> float:
        """Median wall time between consecutive end-of-epoch validations (training + validation + FID);
        with one validation only, the time from the process start to it."""
        walls = [wall for wall, _, _ in self.scalars.get("val/fid", [])]
        if len(walls) >= 2:
            return statistics.median(b - a for a, b in zip(walls, walls[1:]))
        return walls[0] - self.start if walls else float("nan")


def read_run(model: str, out: Path, timing: dict) -> RunResult:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import yaml

    versions = sorted((out / "runs" / model).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise RuntimeError(f"No TensorBoard run under {out / 'runs' / model}.")
    log_dir = versions[-1]
    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    batch_size = int(config["data"]["init_args"]["batch_size"])
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    scalars = {tag: [(e.wall_time, e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return RunResult(model, timing["start"], timing["end"], batch_size, scalars)


# --- the report ----------------------------------------------------------------------------------


def _number(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"  # NaN != NaN


def table(results: list[RunResult]) -> str:
    rows = ["| model | final FID | best FID | FID evaluations | seconds per epoch | images/s | batch "
            "| generator steps | critic steps | run seconds |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = min(r.fid) if r.fid else float("nan")
        rows.append(
            f"| {r.model} | {_number(r.final('val/fid'))} | {_number(best)} | {len(r.fid)} "
            f"| {_number(r.seconds_per_epoch(), 1)} | {_number(r.images_per_second(), 0)} | {r.batch_size} "
            f"| {int(r.final('train/generator_steps')) if r.values('train/generator_steps') else 'n/a'} "
            f"| {int(r.final('train/critic_steps')) if r.values('train/critic_steps') else 'n/a'} "
            f"| {r.end - r.start:.0f} |"
        )
    return "\n".join(rows)


def plot_fid(results: list[RunResult], path: Path, fid_name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for r in results:
        events = r.scalars.get("val/fid", [])
        axes.plot([wall - r.start for wall, _, _ in events], [value for _, _, value in events], marker="o",
                  markersize=3, label=r.model)
    axes.set_xlabel("wall-clock seconds since the run started")
    axes.set_ylabel("FID")
    axes.set_title(f"FID ({fid_name}) against wall-clock time")
    axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_losses(results: list[RunResult], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 1, figsize=(7, 2.6 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        for tag in LOSS_TAGS:
            events = r.scalars.get(tag, [])
            if events:
                ax.plot([step for _, step, _ in events], [value for _, _, value in events], label=tag, lw=1)
        ax.set_title(r.model)
        ax.set_xlabel("critic step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(results: list[RunResult], out: Path, args: argparse.Namespace, fid_name: str,
                 command: str) -> Path:
    budget = (f"{args.generator_steps} generator updates each (`--model.max_generator_steps`)"
              if args.generator_steps is not None else
              f"{args.budget_seconds} s of wall-clock time each (`--trainer.max_time {max_time(args.budget_seconds)}`,"
              f" which counts validation and FID)")
    if args.max_epochs != -1:
        budget += f", at most {args.max_epochs} epochs"
    lines = [
        "# GAN comparison", "",
        f"Command: `{command}`", "",
        f"- Data: `{args.data_dir}` (MNIST IDX files), seed {args.seed}.",
        f"- Budget: {budget}.",
        f"- FID: {fid_name}, {args.fid_samples} generated samples against the whole validation split, "
        f"after every epoch.",
        "- Models: " + "; ".join(f"`{m}`: {MODELS[m][2]}" for m in args.models) + ".", "",
        table(results), "",
        "Seconds per epoch: median wall time between consecutive end-of-epoch FID evaluations (training, "
        "validation and FID). Images/s: training images seen (critic steps x batch size; the last partial "
        "batch is dropped) per second of wall time between the first and last logged training step. "
        "Run seconds: the whole `train.py` process, start-up included.", "",
        "![FID against wall-clock time](fid_vs_time.png)", "",
        "![Loss curves](losses.png)", "",
    ]
    path = out / "comparison.md"
    path.write_text("\n".join(lines))
    return path


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="folder holding MNIST/raw/ (see benchmarks/digits_to_idx.py)")
    parser.add_argument("--out", default="runs/compare", help="folder for the runs, the table and the plots")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget_seconds", type=int, default=180, help="wall-clock budget per model (default)")
    budget.add_argument("--generator_steps", type=int, default=None, help="generator updates per model instead")
    parser.add_argument("--max_epochs", type=int, default=-1, help="epoch cap on top of the budget (-1: none)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fid", choices=["digits", "inception"], default=None,
                        help="FID features; default inception with --fid_weights, else digits")
    parser.add_argument("--fid_weights", default=None, help="torch-fidelity's Inception-v3 weights file")
    parser.add_argument("--fid_samples", type=int, default=1000, help="generated images per FID evaluation")
    parser.add_argument("--jobs", type=int, default=1,
                        help="models trained at once; >1 only for quick checks, since they share the CPU")
    parser.add_argument("--classifier_epochs", type=int, default=20, help="training epochs of the digit classifier")
    args = parser.parse_args(argv)
    args.fid = args.fid or ("inception" if args.fid_weights else "digits")
    if args.fid == "inception" and not args.fid_weights:
        parser.error("--fid inception needs --fid_weights on a machine without network.")
    return args, extra


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.fid == "digits":
        weights = out.resolve() / "digit_features.pt"
        accuracy = train_digit_features(args.data_dir, weights, args.classifier_epochs, args.seed)
        feature = json.dumps({"class_path": "compare.DigitFeatures", "init_args": {"weights": str(weights)}})
        floor, num_real = real_fid_floor(args.data_dir, weights, args.fid_samples, args.seed)
        fid_name = (f"digit-classifier features, not Inception (`compare.DigitFeatures`, 64-d, "
                    f"{accuracy:.1%} validation accuracy; {num_real} real training digits "
                    f"score {floor:.2f} against the validation split, the floor for this metric)")
    else:
        feature, fid_name = "2048", "Inception-v3 pool3 (the standard FID)"
    commands = {model: train_command(model, args, feature, extra) for model in args.models}
    print(f"[compare] training {', '.join(args.models)} ({args.jobs} at a time) ...", flush=True)
    # One at a time by default: models running side by side share the CPU and slow each other.
    with ThreadPoolExecutor(args.jobs) as pool:
        timings = dict(zip(args.models, pool.map(lambda m: run_model(m, commands[m], out), args.models)))
    results = [read_run(model, out, timings[model]) for model in args.models]
    plot_fid(results, out / "fid_vs_time.png", "digit features" if args.fid == "digits" else "Inception")
    plot_losses(results, out / "losses.png")
    report = write_report(results, out, args, fid_name, "python compare.py " + " ".join(argv))
    print(report.read_text())
    return report


if __name__ == "__main__":
    main()
