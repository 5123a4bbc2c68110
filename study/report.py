"""Reading the study's runs back from their TensorBoard events, and writing its tables and plots.

Every figure is per run first (one model, one seed), then summarised per model over its seeds with
the functions of ``study.stats``; the rules are written into the report beside the tables.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from study.stats import (DIVERGENCE_FACTOR, MIN_CORRELATION_PAIRS, band_on_grid, diverged, late_spread, mean_std,
                         spearman, values_at)

# The logged tags the study reads, named once: gan_modules logs every family's losses under these.
FID_TAG, KID_TAG = "val/fid", "val/kid"
# From the same features as FID (gan_modules.metrics): sharpness (precision, density) and modes (recall, coverage).
QUALITY_TAGS = (KID_TAG, "val/precision", "val/recall", "val/density", "val/coverage")
CRITIC_LOSS, GENERATOR_LOSS, WASSERSTEIN = "train/critic_loss", "train/generator_loss", "train/wasserstein"
VAL_CRITIC_LOSS, VAL_WASSERSTEIN = "val/critic_loss", "val/wasserstein"
LOSS_TAGS = (CRITIC_LOSS, GENERATOR_LOSS, WASSERSTEIN)
# Signals whose rank correlation with FID the report gives, where a model logs them: the WGANs'
# Wasserstein estimate (Arjovsky et al. say it tracks sample quality) and every model's losses
# (DCGAN's are said not to). `val/*` tags come from the same validation as `val/fid`.
CORRELATED_TAGS = (VAL_WASSERSTEIN, WASSERSTEIN, VAL_CRITIC_LOSS, CRITIC_LOSS, GENERATOR_LOSS)


@dataclass
class RunResult:
    model: str
    start: float  # wall-clock time the subprocess started
    end: float
    batch_size: int
    scalars: dict[str, list[tuple[float, int, float]]] = field(default_factory=dict)  # tag -> (wall, step, value)
    seed: int = 0
    returncode: int = 0  # the train.py process's exit status
    folder: Path | None = None  # its TensorBoard folder, OUT/runs/<model>/seed_<seed>
    log: Path | None = None  # its stdout and stderr

    @property
    def failed(self) -> bool:
        return self.returncode != 0

    def values(self, tag: str) -> list[float]:
        return [value for _, _, value in self.scalars.get(tag, [])]

    def final(self, tag: str) -> float:
        values = self.values(tag)
        return values[-1] if values else math.nan

    @property
    def fid(self) -> list[float]:
        return self.values(FID_TAG)

    def best_fid(self) -> float:
        return min(self.fid) if self.fid else math.nan

    def diverged(self) -> bool:
        return diverged(self.fid, self.failed)

    def late_spread(self) -> float:
        return late_spread(self.fid)

    def correlation(self, tag: str, against: str = FID_TAG) -> float:
        """Spearman's rho between ``tag`` and ``against`` (FID, or KID) over this run's evaluations of it (NaN
        where the run does not log ``tag``), the signal sampled as :func:`study.stats.values_at` says."""
        if tag not in self.scalars:
            return math.nan
        events = self.scalars.get(against, [])
        signal = values_at([(step, value) for _, step, value in self.scalars[tag]],
                           [step for _, step, _ in events], exact=tag.startswith("val/"))
        return spearman(signal, [value for _, _, value in events])

    def images_per_second(self) -> float:
        """Training images per second between the first and last logged training step: the change of
        ``train/critic_steps`` times the batch size over the change of event wall time (this span
        includes the validation and FID that fall inside it)."""
        events = self.scalars.get("train/critic_steps", [])
        if len(events) < 2 or events[-1][0] <= events[0][0]:
            return math.nan
        return (events[-1][2] - events[0][2]) * self.batch_size / (events[-1][0] - events[0][0])

    def seconds_per_epoch(self) -> float:
        """Median wall time between consecutive end-of-epoch validations (training + validation + FID);
        with one validation only, the time from the process start to it."""
        walls = [wall for wall, _, _ in self.scalars.get(FID_TAG, [])]
        if len(walls) >= 2:
            return statistics.median(b - a for a, b in zip(walls, walls[1:]))
        return walls[0] - self.start if walls else math.nan


def read_run(model: str, seed: int, folder: Path, timing: dict) -> RunResult:
    """The run of ``model`` with ``seed`` from its TensorBoard ``folder``, with its process's start,
    end, exit status and log (``timing``). A run that failed before it logged anything has no
    scalars."""
    result = RunResult(model, timing["start"], timing["end"], 0, seed=seed, returncode=timing.get("returncode", 0),
                       folder=folder, log=timing.get("log"))
    if not (folder / "config.yaml").is_file():
        return result
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text())
    result.batch_size = int(config["data"]["init_args"]["batch_size"])
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    result.scalars = {tag: [(e.wall_time, e.step, e.value) for e in events.Scalars(tag)]
                      for tag in events.Tags()["scalars"]}
    return result


# --- tables --------------------------------------------------------------------------------------

def _number(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def _mean_std(values: list[float], digits: int = 2) -> str:
    """``mean ± std`` over seeds; the value alone for one seed; ``n/a`` for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return _number(mean, digits) if math.isnan(std) else f"{_number(mean, digits)} ± {_number(std, digits)}"


def _by_model(results: list[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for r in results:
        grouped.setdefault(r.model, []).append(r)
    return grouped


def summary_table(results: list[RunResult]) -> str:
    """One row per model: figures of its completed runs as mean ± std over seeds, and how many of all
    its runs diverged."""
    rows = ["| model | seeds | final FID | best FID | late FID spread | diverged | FID evaluations "
            "| seconds per epoch | images/s | batch | generator steps | critic steps | run seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, runs in _by_model(results).items():
        done = [r for r in runs if not r.failed]
        rows.append(
            f"| {model} | {len(runs)} | {_mean_std([r.final(FID_TAG) for r in done])} "
            f"| {_mean_std([r.best_fid() for r in done])} | {_mean_std([r.late_spread() for r in done])} "
            f"| {sum(r.diverged() for r in runs)}/{len(runs)} | {_mean_std([len(r.fid) for r in done], 0)} "
            f"| {_mean_std([r.seconds_per_epoch() for r in done], 1)} "
            f"| {_mean_std([r.images_per_second() for r in done], 0)} "
            f"| {'/'.join(sorted({str(r.batch_size) for r in done})) or 'n/a'} "
            f"| {_mean_std([r.final('train/generator_steps') for r in done], 0)} "
            f"| {_mean_std([r.final('train/critic_steps') for r in done], 0)} "
            f"| {_mean_std([r.end - r.start for r in runs], 0)} |")
    return "\n".join(rows)


def correlation_table(results: list[RunResult], against: str = FID_TAG,
                      tags: tuple[str, ...] = CORRELATED_TAGS) -> str:
    """One row per model: Spearman's rho of each signal with ``against`` (FID or KID), mean ± std over its
    completed runs; a dash where the model does not log the signal."""
    rows = ["| model | " + " | ".join(f"`{tag}`" for tag in tags) + " |", "|---|" + "---|" * len(tags)]
    for model, runs in _by_model(results).items():
        done = [r for r in runs if not r.failed]
        cells = [_mean_std([r.correlation(tag, against) for r in done]) if any(tag in r.scalars for r in done)
                 else "—" for tag in tags]
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def quality_table(results: list[RunResult]) -> str:
    """One row per model: final FID and, from the same features, KID (its mean over subsets; the in-run
    ``val/kid_std`` beside it) and precision, recall, density, coverage, each mean ± std over seeds."""
    rows = ["| model | final FID | final KID | KID subset sd | precision | recall | density | coverage |",
            "|---|---|---|---|---|---|---|---|"]
    for model, runs in _by_model(results).items():
        done = [r for r in runs if not r.failed]
        cells = [_mean_std([r.final(tag) for r in done], 4 if "kid" in tag else 2)
                 for tag in (FID_TAG, KID_TAG, "val/kid_std", *QUALITY_TAGS[1:])]
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def runs_table(results: list[RunResult]) -> str:
    """One row per run, the figures the summary is made of."""
    rows = ["| model | seed | exit | final FID | best FID | late FID spread | diverged | FID evaluations "
            "| generator steps | images/s | run folder |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        steps = r.final("train/generator_steps")
        rows.append(
            f"| {r.model} | {r.seed} | {r.returncode} | {_number(r.final(FID_TAG))} | {_number(r.best_fid())} "
            f"| {_number(r.late_spread())} | {'yes' if r.diverged() else 'no'} | {len(r.fid)} "
            f"| {_number(steps, 0)} | {_number(r.images_per_second(), 0)} | `{r.folder}` |")
    return "\n".join(rows)


RULES = (
    "Mean ± standard deviation over the seeds, the sample standard deviation (n − 1 in the denominator); "
    "a single value where one run counts. Figures come from each model's completed runs (exit status 0); "
    "*diverged* counts all of them.",
    "*final FID*: the run's last `val/fid`; *best FID*: its lowest.",
    "*late FID spread* (stability): the standard deviation of the run's FID over the last third of its "
    "evaluations (the last ceil(n/3), at least 2), then mean ± std over seeds; lower is steadier.",
    f"*diverged*: runs that failed (a non-zero exit, as when a non-finite loss stops training), logged no "
    f"FID, or ended with a final FID that is not finite or above {DIVERGENCE_FACTOR:g} x the run's best FID.",
    "*seconds per epoch*: median wall time between consecutive end-of-epoch FID evaluations (training, "
    "validation and FID). *images/s*: training images seen (critic steps x batch size; the last partial "
    "batch is dropped) per second of wall time between the first and last logged training step. "
    "*run seconds*: the whole `train.py` process, start-up included.",
)

CORRELATION_RULES = (
    "Spearman's rank correlation (ranks with ties averaged, then Pearson) between a logged signal and FID "
    f"over one run's FID evaluations, then mean ± std over seeds; runs with fewer than {MIN_CORRELATION_PAIRS} "
    "evaluations give none. `val/*` signals are measured at the same validation as `val/fid`; `train/*` "
    "signals are the last value logged at or before the FID's step. +1: the signal falls and rises exactly "
    "with FID (a Wasserstein estimate that tracks sample quality, as Arjovsky et al. claim); near 0: it says "
    "nothing about FID's ranking; −1: it moves against FID. For WGAN-GP the critic loss includes the "
    "gradient penalty; for WGAN it is minus the Wasserstein estimate.",
)


QUALITY_RULES = (
    "From the same features and evaluation as the final FID (docs/evaluation.md): KID (Binkowski et al. 2018), "
    "unbiased, mean over random subsets; its *subset sd* is the spread over those subsets within a run, "
    "mean ± std over seeds. *precision* (Kynkäänniemi et al. 2019, k = 3): share of generated images inside "
    "the real images' neighbourhoods, low when samples are off the data (blurry, broken); *recall*: share of "
    "real images inside the generated images' neighbourhoods, low when modes are missing. *density* and "
    "*coverage* (Naeem et al. 2020) are the same two questions, less sensitive to outliers.",
)


def failures(results: list[RunResult]) -> list[str]:
    """One line per failed run: its exit status and the last line of its log."""
    lines = []
    for r in results:
        if r.failed:
            tail = r.log.read_text().strip().splitlines()[-1:] if r.log and r.log.is_file() else []
            lines.append(f"`{r.model}` seed {r.seed} failed (exit {r.returncode}, log `{r.log}`): "
                         f"{tail[0] if tail else 'no output'}")
    return lines


def write_report(results: list[RunResult], path: Path, command: str, settings: list[str]) -> Path:
    """Write the markdown report to ``path``: the command, one bullet per line of ``settings`` (data,
    seeds, budget, FID, models), the per-model and correlation tables with their rules, the per-run
    table, and the two plots (``fid_vs_time.png``, ``losses.png`` beside it)."""
    failed = failures(results)
    lines = [
        "# GAN comparison", "",
        f"Command: `{command}`", "",
        *(f"- {setting}" for setting in settings), "",
        "## Per model, over seeds", "",
        summary_table(results), "",
        *(f"- {rule}" for rule in RULES), "",
        "## Sharpness or modes: KID, precision and recall", "",
        quality_table(results), "",
        *QUALITY_RULES, "",
        "## Do the losses track FID?", "",
        correlation_table(results), "",
        *CORRELATION_RULES, "",
        "## Does the Wasserstein estimate track KID?", "",
        correlation_table(results, KID_TAG, (VAL_WASSERSTEIN, WASSERSTEIN)), "",
        "Spearman's rho as above, against `val/kid` at the same evaluations instead of `val/fid`.", "",
        "## Per run", "",
        runs_table(results), "",
        *([*(f"- {line}" for line in failed), ""] if failed else []),
        "![FID against wall-clock time](fid_vs_time.png)", "",
        "Per model, the mean over seeds of FID against the seconds since the run's process started, with a "
        "band from the lowest to the highest seed (min-max). The runs evaluate FID at different times, so "
        "each run's curve is interpolated linearly onto the union of all the model's evaluation times "
        "within the span every run covers.", "",
        "![Loss curves](losses.png)", "",
    ]
    path.write_text("\n".join(lines))
    return path


# --- plots ---------------------------------------------------------------------------------------

def plot_fid(results: list[RunResult], path: Path, fid_name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for model, runs in _by_model(results).items():
        curves = [([wall - r.start for wall, _, _ in r.scalars.get(FID_TAG, [])], r.fid) for r in runs if not r.failed]
        grid, mean, low, high = band_on_grid(curves)
        if not len(grid):
            continue
        (line,) = axes.plot(grid, mean, marker="o", markersize=2, label=f"{model} ({len(curves)} seeds)")
        if len(curves) > 1:
            axes.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xlabel("wall-clock seconds since the run started")
    axes.set_ylabel("FID")
    axes.set_title(f"FID ({fid_name}): mean over seeds, band min-max")
    axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_losses(results: list[RunResult], path: Path) -> None:
    """Per model, the loss tags of every seed against the critic step (one colour per tag)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = _by_model(results)
    figure, axes = plt.subplots(len(grouped), 1, figsize=(7, 2.6 * len(grouped)), squeeze=False)
    for ax, (model, runs) in zip(axes[:, 0], grouped.items()):
        for colour, tag in zip(("C0", "C1", "C2"), LOSS_TAGS):
            label: str | None = tag  # once per tag, on its first run that logs it
            for r in runs:
                events = r.scalars.get(tag, [])
                if events:
                    ax.plot([step for _, step, _ in events], [value for _, _, value in events], color=colour,
                            lw=0.8, alpha=0.6, label=label)
                    label = None
        ax.set_title(f"{model} ({len(runs)} seeds)")
        ax.set_xlabel("critic step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
