"""Train DCGAN, WGAN-GP, WGAN and a spectral-norm critic on the same data with the same budget, each
with several seeds, and write a report: per model, FID as mean ± standard deviation over seeds, its
stability and divergences, speed, and how well each loss tracks FID, with plots.

Run from the repository root:

    python benchmarks/digits_to_idx.py --out data/digits        # offline real images (sklearn digits)
    python -m study.compare --data_dir data/digits --out runs/compare --budget_seconds 220 --seeds 3
    python -m study.compare --dataset celeba --data_dir data --out runs/compare_celeba --seeds 3 \\
        --generator_steps 20000 --fid inception --fid_weights PTH -- --config configs/trainer/gpu.yaml

Each model is its preset for ``--dataset`` (``configs/<model>_mnist.yaml`` or ``_celeba.yaml``: the
paper's optimiser, batch size and n_critic) run as ``python train.py fit`` in a subprocess with the
same ``--data.data_dir`` and budget, once per seed: ``--seeds N`` runs seeds ``--seed`` .. ``--seed``
+ N - 1 (``--seed_everything``), and every model gets the same seeds. WGAN has no CelebA preset: on
CelebA it is its MNIST preset's model and batch size (the paper's) with the data settings of
``configs/wgan_gp_celeba.yaml`` (64 px, center crop), the same images the other models see. The
budget is either the same wall-clock time (``--budget_seconds``, Lightning's ``--trainer.max_time``,
which counts validation and FID too) or the same number of generator updates
(``--generator_steps``, ``--model.max_generator_steps``); ``--max_epochs`` caps both. FID runs after
every epoch. Arguments after ``--`` go to every ``train.py`` call (e.g. ``--data.image_size 32``).
Runs go one at a time (``--jobs 1``), so that the timings and images/s are each run's own.

FID features: ``inception`` (pool3, the standard FID; ``--fid_weights`` to torch-fidelity's weights
file on a machine without network) or ``digits`` (the default on MNIST-format data without
``--fid_weights``): the 64-dimensional penultimate layer of a small CNN digit classifier,
``gan_modules.digit_features.DigitFeatures``, trained here once on the training split
(``study.digit_classifier``). Its FID is only comparable with itself, never with published Inception
FIDs.

Results are read back from each run's TensorBoard events (``OUT/runs/<model>/seed_<S>``, checkpoints
in its ``checkpoints/``; ``study.report``) into ``OUT/comparison.md``, ``OUT/fid_vs_time.png`` and
``OUT/losses.png``. The report gives, per model over its seeds (sample standard deviation, n - 1):

- final and best FID;
- stability: the standard deviation of each run's FID over the last third of its evaluations, and
  the runs that diverged: failed (a non-zero exit, as a non-finite loss causes), logged no FID, or
  ended with a final FID that is not finite or above 2 x the run's best (``study.stats.diverged``); a failed run does not stop the study
  unless every run fails;
- generator and critic steps, seconds per epoch, images/s;
- final KID (± its spread over subsets), precision, recall, density and coverage, from the same
  features as FID: which model loses sharpness (precision) and which loses modes (recall);
- Spearman's rank correlation with FID, over each run's evaluations, of the Wasserstein estimate
  (``val/wasserstein``, ``train/wasserstein``) and of the losses (``val/critic_loss``,
  ``train/critic_loss``, ``train/generator_loss``): does the signal track sample quality? And of the
  Wasserstein estimate with KID.

``fid_vs_time.png`` shows each model's mean FID with a min-max band over seeds, the runs' curves
interpolated onto common evaluation times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from study.digit_classifier import real_fid_floor, train_digit_features
from study.report import plot_fid, plot_losses, read_run, write_report

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python -m study.compare"
DATASETS = ("mnist", "celeba")

# name -> (preset family: configs/<family>_<dataset>.yaml, extra train.py arguments, description)
MODELS: dict[str, tuple[str, list[str], str]] = {
    "dcgan": ("dcgan", [], "DCGAN, batch-norm discriminator (Radford et al. 2016)"),
    "wgan_gp": ("wgan_gp", [], "WGAN-GP, layer-norm critic, lambda 10 (Gulrajani et al. 2017)"),
    "wgan": ("wgan", [], "WGAN, weight clipping 0.01 (Arjovsky et al. 2017)"),
    "dcgan_sn": ("dcgan", ["--model.spectral_norm", "true", "--model.critic_norm", "none"],
                 "DCGAN losses with a spectral-norm discriminator, no batch norm (SN-GAN, Miyato et al. 2018)"),
    "wgan_gp_sn": ("wgan_gp", ["--model.spectral_norm", "true"],
                   "WGAN-GP with spectral norm on the layer-norm critic"),
    "dcgan_aug": ("dcgan", ["--model.augment", "color,translation,cutout"],
                  "DCGAN with DiffAugment color,translation,cutout (Zhao et al. 2020)"),
    "wgan_gp_aug": ("wgan_gp", ["--model.augment", "color,translation,cutout"],
                    "WGAN-GP with DiffAugment color,translation,cutout (Zhao et al. 2020)"),
}
DEFAULT_MODELS = ["dcgan", "wgan_gp", "wgan", "dcgan_sn"]
# A family without a preset for a dataset trains its MNIST preset's model on this preset's data block.
DATA_PRESETS = {"celeba": REPO / "configs" / "wgan_gp_celeba.yaml"}
DIGIT_FEATURES = "gan_modules.digit_features.DigitFeatures"


def max_time(seconds: int) -> str:
    """Seconds as Lightning's ``DD:HH:MM:SS``."""
    days, rest = divmod(int(seconds), 86400)
    return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def digit_feature(weights: Path) -> str:
    """The ``--fid.feature`` value of ``DigitFeatures`` with the trained ``weights``: a class path into the
    library, so the ``train.py`` runs build it without importing this script."""
    return json.dumps({"class_path": DIGIT_FEATURES, "init_args": {"weights": str(weights)}})


def seeds(args: argparse.Namespace) -> list[int]:
    """The seeds every model runs with: ``--seed`` and the ``--seeds`` - 1 after it."""
    return list(range(args.seed, args.seed + args.seeds))


def run_folder(out: Path, model: str, seed: int) -> Path:
    """Where the run of ``model`` with ``seed`` writes its TensorBoard events and checkpoints."""
    return out.resolve() / "runs" / model / f"seed_{seed}"


def preset_arguments(model: str, dataset: str) -> list[str]:
    """``--config`` and data arguments of ``model`` on ``dataset``: its family's preset for the
    dataset, else (WGAN on CelebA) its MNIST preset with the data block of ``DATA_PRESETS[dataset]``
    at the MNIST preset's batch size."""
    family, model_args, _ = MODELS[model]
    preset = REPO / "configs" / f"{family}_{dataset}.yaml"
    if preset.is_file():
        return ["--config", str(preset), *model_args]
    mnist = REPO / "configs" / f"{family}_mnist.yaml"
    data = yaml.safe_load(DATA_PRESETS[dataset].read_text())["data"]
    data["init_args"]["batch_size"] = yaml.safe_load(mnist.read_text())["data"]["init_args"]["batch_size"]
    return ["--config", str(mnist), *model_args, "--data", json.dumps(data)]


def train_command(model: str, seed: int, args: argparse.Namespace, feature: str, extra: list[str]) -> list[str]:
    """The ``train.py fit`` command line of ``model`` with ``seed``: its preset, the shared budget, the
    FID settings, and its own run folder."""
    out = Path(args.out).resolve()
    folder = run_folder(out, model, seed)
    command = [
        sys.executable, str(REPO / "train.py"), "fit", *preset_arguments(model, args.dataset),
        "--seed_everything", str(seed),
        "--data.data_dir", str(Path(args.data_dir).resolve()),
        "--trainer.max_epochs", str(args.max_epochs),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(out / "runs"),
        "--trainer.logger.init_args.name", model,
        "--trainer.logger.init_args.version", folder.name,
        "--checkpoint.dirpath", str(folder / "checkpoints"),
        "--fid.every_n_epochs", "1",
        "--fid.num_samples", str(args.fid_samples),
        "--fid.cache_dir", str(out / "fid_cache"),
        "--fid.feature", feature,
    ]
    if args.fid_weights:
        command += ["--fid.weights_path", str(Path(args.fid_weights).resolve())]
    if args.generator_steps is not None:
        command += ["--model.max_generator_steps", str(args.generator_steps)]
    else:
        command += ["--trainer.max_time", max_time(args.budget_seconds)]
    return command + extra


def run_model(name: str, command: list[str], out: Path) -> dict:
    """Run one ``train.py fit``, its output to ``OUT/logs/<name>.log``; returns its start and end
    times, exit status and log. A failed run is reported, not raised: it counts as diverged."""
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    print(f"[compare] {name}: {'done' if code == 0 else f'FAILED (exit {code}), see {log}'} "
          f"in {time.time() - start:.0f} s", flush=True)
    return {"start": start, "end": time.time(), "command": command, "returncode": code, "log": log}


def settings(args: argparse.Namespace, fid_name: str) -> list[str]:
    """The report's lines on the data, the seeds, the budget, the FID and the models."""
    budget = (f"{args.generator_steps} generator updates each (`--model.max_generator_steps`)"
              if args.generator_steps is not None else
              f"{args.budget_seconds} s of wall-clock time each (`--trainer.max_time {max_time(args.budget_seconds)}`,"
              f" which counts validation and FID)")
    if args.max_epochs != -1:
        budget += f", at most {args.max_epochs} epochs"
    budget += (", one run at a time" if args.jobs == 1 else
               f", {args.jobs} runs at once (they share the machine: the timings and images/s are lower than alone)")
    data = "MNIST IDX files" if args.dataset == "mnist" else "CelebA, 64 px"
    lines = [
        f"Data: `{args.data_dir}` ({data}).",
        f"Seeds: {', '.join(map(str, seeds(args)))} (`--seed_everything`), the same for every model.",
        f"Budget: {budget}.",
        f"FID: {fid_name}, {args.fid_samples} generated samples against the whole validation split, after every epoch.",
        "Models: " + "; ".join(f"`{m}`: {MODELS[m][2]}" for m in args.models) + ".",
    ]
    if args.dataset != "mnist" and any(not (REPO / "configs" / f"{MODELS[m][0]}_{args.dataset}.yaml").is_file()
                                       for m in args.models):
        lines.append(f"Models without a {args.dataset} preset (WGAN) train their MNIST preset's model and batch size "
                     f"on the data settings of `{DATA_PRESETS[args.dataset].relative_to(REPO)}`.")
    return lines


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True,
                        help="folder holding MNIST/raw/ (see benchmarks/digits_to_idx.py) or CelebA's celeba/")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist",
                        help="which presets: configs/<model>_<dataset>.yaml (default mnist)")
    parser.add_argument("--out", default="runs/compare", help="folder for the runs, the tables and the plots")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget_seconds", type=int, default=180, help="wall-clock budget per run (default)")
    budget.add_argument("--generator_steps", type=int, default=None, help="generator updates per run instead")
    parser.add_argument("--max_epochs", type=int, default=-1, help="epoch cap on top of the budget (-1: none)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per model, seeds --seed, --seed + 1, ...")
    parser.add_argument("--seed", type=int, default=42, help="the first seed")
    parser.add_argument("--fid", choices=["digits", "inception"], default=None,
                        help="FID features; default inception with --fid_weights or on CelebA, else digits")
    parser.add_argument("--fid_weights", default=None,
                        help="torch-fidelity's Inception-v3 weights file (without it, the runs download them)")
    parser.add_argument("--fid_samples", type=int, default=1000, help="generated images per FID evaluation")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once; >1 only for quick checks, since they share the machine")
    parser.add_argument("--classifier_epochs", type=int, default=20, help="training epochs of the digit classifier")
    args = parser.parse_args(argv)
    args.fid = args.fid or ("inception" if args.fid_weights or args.dataset != "mnist" else "digits")
    if args.fid == "digits" and args.dataset != "mnist":
        parser.error(f"--fid digits needs digits (MNIST-format data), not --dataset {args.dataset}: "
                     "use --fid inception (with --fid_weights PTH on a machine without network).")
    if args.fid == "digits" and args.fid_weights:
        parser.error("--fid_weights is for --fid inception; drop it to use the digit features.")
    for name in ("seeds", "jobs", "fid_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    return args, extra


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parse_args(argv)
    out = Path(args.out)
    runs = [(model, seed) for model in args.models for seed in seeds(args)]
    taken = [str(run_folder(out, m, s)) for m, s in runs if run_folder(out, m, s).exists()]
    if taken:  # a second study's events would be appended to the first's and read back mixed
        raise SystemExit(f"Run folders from an earlier study exist: {', '.join(taken)}. "
                         f"Give another --out, or delete them.")
    out.mkdir(parents=True, exist_ok=True)
    if args.fid == "digits":
        weights = out.resolve() / "digit_features.pt"
        accuracy = train_digit_features(args.data_dir, weights, args.classifier_epochs, args.seed)
        feature = digit_feature(weights)
        floor, num_real = real_fid_floor(args.data_dir, weights, args.fid_samples, args.seed)
        fid_name = (f"digit-classifier features, not Inception (`{DIGIT_FEATURES}`, 64-d, "
                    f"{accuracy:.1%} validation accuracy; {num_real} real training digits "
                    f"score {floor:.2f} against the validation split, the floor for this metric)")
    else:
        feature, fid_name = "2048", "Inception-v3 pool3 (the standard FID)"
    commands = {(m, s): train_command(m, s, args, feature, extra) for m, s in runs}
    print(f"[compare] training {', '.join(args.models)} with seeds {', '.join(map(str, seeds(args)))} "
          f"({args.jobs} at a time) ...", flush=True)
    # One at a time by default: runs side by side share the CPU and slow each other.
    with ThreadPoolExecutor(args.jobs) as pool:
        timings = dict(zip(runs, pool.map(lambda run: run_model(f"{run[0]}_seed_{run[1]}", commands[run], out), runs)))
    if all(timing["returncode"] != 0 for timing in timings.values()):
        log = timings[runs[0]]["log"]
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"Every train.py run failed, so the settings are wrong rather than the models unstable; "
                           f"the end of {log}:\n{tail}")
    results = [read_run(m, s, run_folder(out, m, s), timings[m, s]) for m, s in runs]
    plot_fid(results, out / "fid_vs_time.png", "digit features" if args.fid == "digits" else "Inception")
    plot_losses(results, out / "losses.png")
    report = write_report(results, out / "comparison.md", f"{COMMAND} " + " ".join(argv), settings(args, fid_name))
    print(report.read_text())
    return report


if __name__ == "__main__":
    main()
