"""Fréchet Inception Distance (Heusel et al., 2017, arXiv:1706.08500), KID, precision/recall and density/coverage
measured during validation, all from one forward per image of torchmetrics' Inception: the real images' features once
per dataset (cached on disk), and a fixed set of generated samples that does not depend on the number of devices.
The metrics are functions of the two feature sets (gan_modules/metrics.py; FID is torchmetrics' own)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.image.fid import NoTrainInceptionV3
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from tqdm import tqdm

from gan_modules.checkpoint_io import damage, write_atomically
from gan_modules.flags import SettingError, advice
from gan_modules.metrics import frechet_distance, kid, prdc

INCEPTION_FEATURES = (64, 192, 768, 2048)
WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]
# Images per side where `num_samples`/`num_real` are unset: the standard protocol on an accelerator; on a
# CPU (Inception: ~0.15 s an image on two cores) a preset's first run stays under half an hour (docs/evaluation.md).
STANDARD_IMAGES, CPU_IMAGES = 10_000, 2_500
KNN_CHUNK = 4096  # rows and columns per block of distances: 64 MB of float32 whatever the image counts


class InceptionWeightsError(RuntimeError):
    """The Inception-v3 weights can be neither downloaded nor read from the given file."""


def metric_input(images: Tensor, as_float: bool) -> Tensor:
    """[-1, 1] images (N, C, H, W) -> (N, 3, H, W) as the feature extractor takes them, quantised as saved to
    PNG: uint8 for Inception, floats in [0, 1] (``as_float``) for a custom feature extractor."""
    if images.shape[1] not in (1, 3):
        raise ValueError(f"FID needs 1- or 3-channel images, got {images.shape[1]} channels.")
    as_uint8 = ((images.float() + 1) * 127.5).round_().clamp_(0, 255)
    as_uint8 = as_uint8.expand(-1, 3, -1, -1)  # grayscale -> RGB; RGB unchanged
    return as_uint8 / 255 if as_float else as_uint8.to(torch.uint8)


def build_extractor(feature: int | nn.Module = 2048, weights_path: str | None = None) -> nn.Module:
    """The network whose features the metrics compare: ``feature`` itself if it is a module, else torchmetrics'
    Inception-v3 layer ``feature`` (torch-fidelity's weights), built as its ``FrechetInceptionDistance`` builds it:
    it takes uint8 images and resizes them as the original TensorFlow code does (``antialias=False``), so scores
    compare with published ones.

    Raises:
        InceptionWeightsError: the Inception weights can be neither downloaded nor read from
            ``weights_path``.
    """
    if isinstance(feature, nn.Module):
        return feature
    # torch-fidelity unpickles the file with weights_only=False: refuse anything but tensors first.
    problem = None if weights_path is None else damage(Path(weights_path))
    if problem == "does not exist":
        raise InceptionWeightsError(
            advice(f"No Inception weights file at {weights_path}: set `--fid.weights_path` to the downloaded "
            f"{WEIGHTS_FILE} ({URL_INCEPTION_V3}), or turn FID off with `--fid.enabled false`."))
    if problem is not None:
        raise InceptionWeightsError(advice(f"{weights_path} {problem}: `--fid.weights_path` needs torch-fidelity's "
                                           f"{WEIGHTS_FILE}."))
    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)],
                                  feature_extractor_weights_path=weights_path, antialias=False)
    except OSError as error:  # URLError, timeouts, DNS failures: no network
        if weights_path is not None:
            raise
        reason = getattr(error, "reason", None) or error
        raise InceptionWeightsError(
            advice(f"FID needs the Inception-v3 weights, and they could not be downloaded ({reason}). Either turn FID "
            f"off with `--fid.enabled false`, or give a local copy of {WEIGHTS_FILE} "
            f"({URL_INCEPTION_V3}) with `--fid.weights_path PATH` or put it in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}.")) from None
    except RuntimeError as error:  # load_state_dict: keys or shapes that are not torch-fidelity's
        raise InceptionWeightsError(
            advice(f"{weights_path} does not hold torch-fidelity's Inception-v3 weights "
            f"({' '.join(str(error).split())[:200]}): `--fid.weights_path` needs the file {WEIGHTS_FILE}.")) from None


class FIDCallback(Callback):
    """Logs ``val/fid``, ``val/kid`` (``val/kid_std``), ``val/precision``, ``val/recall``, ``val/density`` and
    ``val/coverage`` every ``every_n_epochs`` epochs and once for the state each fit ends in.

    On CPU, one GPU or under DDP (docs/evaluation.md: when, on which images, at what cost); rank 0 decides
    for every rank, as the computation is collective. The callback reads the real images itself, each once
    across the ranks (Lightning's ``DistributedSampler`` would repeat some, ``limit_val_batches`` cut them
    short); chunk ``k`` of the seeded latent vectors runs on rank ``k mod W``, with rank 0's buffers. Rank 0
    gathers the features in the one-process order, computes every metric from them and sends the scores to all.

    Args:
        feature: Inception-v3 layer, 64, 192, 768 or 2048 (pool3, the standard FID), or an ``nn.Module``
            with an int ``num_features`` that maps float images (N, 3, H, W) in [0, 1] to (N, num_features).
        weights_path: local file of torch-fidelity's Inception-v3 weights
            (``weights-inception-2015-12-05-6726825d.pth``); ``None`` downloads them to torch.hub's cache.
        num_samples: generated images per evaluation. 10,000 or more for a stable score (papers report
            50,000); ``None``: 10,000 on an accelerator, 2,500 on a CPU.
        num_real: real validation images, taken at an even stride through the split; ``None``: the whole
            split on an accelerator, at most 2,500 on a CPU.
        every_n_epochs: score at the validation of every this many epochs (and at the end).
        batch_size: generated images per generator forward. Also the chunk of latent vectors a rank takes.
        seed: seed of the latent vectors.
        cache_dir: folder of the cached real statistics. ``None`` turns the disk cache off.
        enabled: ``False`` turns all the metrics off. The callback then does nothing at all (no weights
            loaded, no pass over the real images, no ``val/fid``).
        kid_subsets: random subsets KID is averaged over. Its standard deviation is over them too.
        kid_subset_size: images per KID subset, capped at the image counts. torch-fidelity's default.
        prdc_k: the k of the k-NN balls in precision, recall, density, coverage. 3 in both papers.
    """

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        weights_path: str | None = None,
        num_samples: int | None = None,
        num_real: int | None = None,
        every_n_epochs: int = 1,
        batch_size: int = 250,
        seed: int = 0,
        cache_dir: str | None = ".fid_cache",
        enabled: bool = True,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        prdc_k: int = 3,
    ) -> None:
        for name, value, least in (("num_samples", num_samples, 2), ("num_real", num_real, 2),
                                   ("every_n_epochs", every_n_epochs, 1), ("batch_size", batch_size, 1),
                                   ("kid_subsets", kid_subsets, 1), ("kid_subset_size", kid_subset_size, 2),
                                   ("prdc_k", prdc_k, 1)):
            if value is not None and value < least:  # FID needs two samples for a covariance
                raise SettingError(f"{name} must be at least {least}, got {value}: set `--fid.{name}`.")
        custom = isinstance(feature, nn.Module)
        self.num_features = getattr(feature, "num_features", None) if custom else feature
        if custom and not isinstance(self.num_features, int):
            raise ValueError(f"A custom FID feature extractor needs an int attribute `num_features` "
                             f"(its output width); {_qualname(feature)} has {self.num_features!r}.")
        if not custom and feature not in INCEPTION_FEATURES:
            raise SettingError(f"feature must be one of the Inception layers {INCEPTION_FEATURES} or an "
                               f"nn.Module, got {feature!r}: set `--fid.feature`.")
        self.feature = feature
        self.weights_path = weights_path
        self.num_samples = num_samples
        self.num_real = num_real
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.cache_dir = cache_dir
        self.enabled = enabled
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.prdc_k = prdc_k
        self.extractor: nn.Module | None = None
        self.real_features: Tensor | None = None  # (num_real, num_features) on rank 0, in the one-process order
        self.real_images_processed = 0  # real images this process fed the extractor (a cache hit adds none)
        self._extractor_id: str | None = None
        self._content: str | None = None  # digest of every real image used, computed once per fit
        self._real_key: str | None = None  # key of the real features held now
        self._scored_step: int | None = None  # trainer.global_step of this fit's last FID
        if enabled and num_samples is not None:  # no score, nothing to be unreliable
            _warn_if_few("num_samples", num_samples, self.num_features)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.enabled or stage not in (TrainerFn.FITTING, TrainerFn.VALIDATING):
            return  # no extractor: every hook below returns for want of one
        on_cpu = trainer.strategy.root_device.type == "cpu"
        cpu_sized = on_cpu and self.num_samples is None  # both sizes left to the device
        if self.num_samples is None:
            self.num_samples = CPU_IMAGES if on_cpu else STANDARD_IMAGES
            _warn_if_few("num_samples", self.num_samples, self.num_features)
        if cpu_sized and self.num_real is None:
            self.num_real = CPU_IMAGES
        chunks = -(-self.num_samples // self.batch_size)
        if chunks < trainer.world_size:  # a rank without samples could not compute (and would hang the rest)
            raise SettingError(f"FID splits {self.num_samples} samples into {chunks} chunks of {self.batch_size}, "
                               f"fewer than the {trainer.world_size} processes: lower `--fid.batch_size` or raise "
                               f"`--fid.num_samples`.")
        self.load_extractor()
        self.extractor.to(trainer.strategy.root_device)
        self._content = None  # the real images are read again (hashed) once in every fit: edits are seen
        real = "all the" if self.num_real is None else f"at most {self.num_real:,}"
        rank_zero_info(f"FID: {self.num_samples:,} generated images against {real} real validation images, "
                       f"every {self.every_n_epochs} epoch(s) and at the end"
                       + (" (the CPU-sized default: `--fid.num_samples 10000` for the standard protocol)"
                          if cpu_sized else ""))

    def load_extractor(self) -> None:
        """Build the feature extractor and load its weights, once; the CLI calls it first, so missing weights stop a
        run at once.

        Raises:
            InceptionWeightsError: see :func:`build_extractor`.
        """
        if self.extractor is None:
            self.extractor = build_extractor(self.feature, self.weights_path).eval()  # a custom one's dropout too
            # Of its settings (repr: a custom module names them in `extra_repr`), the versions of the preprocessing
            # code and every weight: other settings, code or weights, other features, another cache key.
            code = "/".join(package_version(name) for name in ("torchmetrics", "torch-fidelity"))
            weights = hashlib.sha256(f"{self.extractor!r}/{code}".encode())
            for tensor in self.extractor.state_dict().values():
                tensor = tensor.detach().cpu().contiguous().reshape(-1)
                weights.update(str(tensor.dtype).encode())
                weights.update(tensor.view(torch.uint8).numpy().tobytes())
            self._extractor_id = f"{_qualname(self.extractor)}:{self.num_features}:{weights.hexdigest()[:20]}"

    def _features(self, images: Tensor) -> Tensor:
        """(N, num_features) features of [-1, 1] images (N, C, H, W)."""
        return self.extractor(metric_input(images, isinstance(self.feature, nn.Module))).reshape(len(images), -1)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.extractor is None:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            # Also where the fit loop stops after this batch, so that FID scores the final state. should_stop:
            # max_generator_steps, max_time (Timer broadcasts it), early stopping.
            stops = trainer.should_stop or (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps)
            last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
            # A validation inside the last epoch (val_check_interval) is not at its end.
            stops = stops or (last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
            due = (trainer.current_epoch + 1) % self.every_n_epochs == 0 or stops
            if not trainer.strategy.broadcast(due, src=0):  # rank 0's: all ranks compute or none does
                return
            self._scored_step = trainer.global_step
        scores = self.compute(trainer, pl_module)
        # Every rank holds the same values; sync_dist only averages identical numbers.
        pl_module.log_dict(scores, on_epoch=True, sync_dist=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed fit that trains nothing ends in its checkpoint's state, scored by the run that wrote it.
        self._scored_step = trainer.global_step if trainer.ckpt_path else None
        if self.extractor is not None:  # before training, not at the first score
            _check_real_count(_first_val_loader(trainer))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The run ended in a state no validation scored: score it here (self.log is closed by now).
        unscored = self._scored_step != trainer.global_step
        if self.extractor is None or not trainer.strategy.broadcast(unscored, src=0):
            return
        if _first_val_loader(trainer) is None:  # the same on every rank: no rank computes
            rank_zero_warn("FID was not computed at the end of training: there is no validation data to take the real "
                           "images from. Give the datamodule (or model) a `val_dataloader`.")
            return
        scores = self.compute(trainer, pl_module)
        trainer.callback_metrics.update(scores)  # where RunMonitor's hp/final_fid reads val/fid
        # Lightning's step for an epoch's metrics (its last batch's critic step); loggers write on rank 0 only.
        for logger in trainer.loggers:
            logger.log_metrics({name: float(value) for name, value in scores.items()},
                               step=max(pl_module.critic_steps - 1, 0))

    def compute(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Tensor]:
        """FID, KID, precision/recall and density/coverage between the validation set and ``num_samples``
        generated images (collective under DDP): ``{"val/fid": ..., "val/kid": ..., ...}``, the same on every rank."""
        rank, world_size = trainer.global_rank, trainer.world_size
        n, batch = self.num_samples, self.batch_size
        # Drawn at once, as `sample` draws them: the same images whatever the batch size and the number of ranks.
        noises = pl_module.noise(n, torch.Generator().manual_seed(self.seed)).split(batch)
        with torch.inference_mode():
            self._ensure_real_statistics(trainer)
            # Batch-norm running statistics (the moving average's too) are updated per rank by the last training
            # step and re-broadcast by DDP only at its next forward: sample from rank 0's network, the one checkpointed.
            for buffer in pl_module.sampling_generator.buffers() if world_size > 1 else []:
                dist.broadcast(buffer, src=0)
            fake = []  # this rank's generated features, chunk by chunk
            with _progress(trainer, "FID: generated images", sum(map(len, noises[rank::world_size]))) as bar:
                for noise in noises[rank::world_size]:  # chunk k on rank k mod W
                    fake.append(self._features(pl_module.sample(len(noise), noise=noise)))
                    bar.update(len(noise))
            owners = [chunk % world_size for chunk, noise in enumerate(noises) for _ in range(len(noise))]
            scores = self._feature_scores(trainer, _gather_rows(trainer, torch.cat(fake), owners))
        return {f"val/{name}": torch.tensor(value, device=pl_module.device) for name, value in scores.items()}

    def _feature_scores(self, trainer: Trainer, fake: Tensor | None) -> dict[str, float]:
        """Every metric of the real and generated features, computed on rank 0's device and sent to every rank."""
        scores = None
        if trainer.is_global_zero:
            real = self.real_features.to(fake.device)
            mean, std = kid(real, fake, self.kid_subsets, self.kid_subset_size)
            scores = {"fid": frechet_distance(real, fake), "kid": mean, "kid_std": std}
            if min(len(real), len(fake)) > self.prdc_k:
                scores.update(prdc(real, fake, self.prdc_k, KNN_CHUNK))
            else:
                rank_zero_warn(advice(f"No precision, recall, density or coverage: they need more than k = "
                               f"{self.prdc_k} real and generated images, got {len(real)} and {len(fake)}: lower "
                               f"`--fid.prdc_k` or use more images."))
        return trainer.strategy.broadcast(scores, src=0)

    def _ensure_real_statistics(self, trainer: Trainer) -> None:
        loader = _first_val_loader(trainer)
        _check_real_count(loader)
        if self._content is None:  # collective: every rank hashes its share
            self._content = self._real_content(loader, trainer)
        # Rank 0's key decides for all ranks, so they all take the same branch below (collectives).
        key = self._real_key_of(trainer, loader) if trainer.is_global_zero else None
        key = trainer.strategy.broadcast(key, src=0)
        if key == self._real_key:
            return
        cache = None  # only rank 0 reads and writes it
        if self.cache_dir is not None and trainer.is_global_zero:
            cache = Path(self.cache_dir) / f"fid_real_{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
        loaded = cache is not None and cache.is_file() and self._load_cache(cache, key, trainer.strategy.root_device)
        if not trainer.strategy.broadcast(loaded, src=0):
            indices = self._real_indices(loader)
            features = self._real_features(loader, trainer, indices)
            self.real_features = _gather_rows(trainer, features, [i % trainer.world_size for i in range(len(indices))])
            if cache is not None:
                self._save_cache(cache, key)
        self._real_key = key
        if trainer.is_global_zero:  # only rank 0 holds them
            _warn_if_few("the number of real validation images", len(self.real_features), self.num_features)

    def _real_indices(self, loader: DataLoader) -> list[int]:
        """The real images used: all the dataset's, or ``num_real`` at an even stride; rank r takes items r, r+W, ..."""
        count = len(loader.dataset)
        subset = count if self.num_real is None else min(self.num_real, count)
        return [i * count // subset for i in range(subset)]

    def _real_batches(self, loader: DataLoader, trainer: Trainer, indices: list[int],
                      description: str) -> Iterable[Tensor]:
        """This rank's share of the real images at ``indices``, batch by batch, on the trainer's device."""
        mine = indices[trainer.global_rank::trainer.world_size]
        shard = DataLoader(Subset(loader.dataset, mine), batch_size=loader.batch_size or self.batch_size,
                           num_workers=loader.num_workers, collate_fn=loader.collate_fn)
        with _progress(trainer, description, len(mine)) as bar:
            for batch in shard:
                images = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(trainer.strategy.root_device)
                yield images
                bar.update(images.shape[0])

    def _real_content(self, loader: DataLoader, trainer: Trainer) -> str:
        """SHA-256 of every real image used, as the extractor sees it (uint8), in order, on every rank. Each rank
        hashes its share image by image, so any number of ranks gives the same digest."""
        indices = self._real_indices(loader)
        batches = self._real_batches(loader, trainer, indices, "FID: hashing the real images")
        digests = bytearray().join(hashlib.sha256(image.numpy().tobytes()).digest()
                                   for images in batches for image in metric_input(images, as_float=False).cpu())
        digests = torch.frombuffer(digests, dtype=torch.uint8) if digests else torch.zeros(0, dtype=torch.uint8)
        owners = [i % trainer.world_size for i in range(len(indices))]
        everything = _gather_rows(trainer, digests.reshape(-1, 32), owners)  # (len(indices), 32) on rank 0
        digest = hashlib.sha256(everything.cpu().numpy().tobytes()).hexdigest()[:20] if trainer.is_global_zero else None
        return trainer.strategy.broadcast(digest, src=0)

    def _real_features(self, loader: DataLoader, trainer: Trainer, indices: list[int]) -> Tensor:
        """The features of this rank's share of the real images at ``indices``, in order."""
        features = []
        for images in self._real_batches(loader, trainer, indices, "FID: real statistics (once, then cached)"):
            features.append(self._features(images))
            self.real_images_processed += images.shape[0]
        return torch.cat(features) if features else torch.zeros(0, self.num_features, device=trainer.strategy.root_device)

    def _real_key_of(self, trainer: Trainer, loader: DataLoader) -> str:
        return json.dumps({
            "datamodule": _qualname(trainer.datamodule) if trainer.datamodule is not None else "none",
            "split": "val",
            "dataset": _qualname(loader.dataset),
            "num_real": len(loader.dataset),
            "real_subset": self.num_real,
            "content": self._content,  # every image used, so an image edited in place is seen
            "feature_extractor": self._extractor_id,
        }, sort_keys=True)

    def _load_cache(self, path: Path, key: str, device: torch.device) -> bool:
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["key"] != key:
                return False
            self.real_features = cached["real_features"].to(device)  # once, not at every evaluation
            return True
        except Exception as error:  # a truncated or foreign file: recompute and overwrite it
            rank_zero_warn(f"Ignoring the unreadable FID cache {path} ({error}); recomputing it.")
            return False

    def _save_cache(self, path: Path, key: str) -> None:
        buffer = io.BytesIO()
        torch.save({"key": key, "real_features": self.real_features.cpu()}, buffer)
        try:  # atomic: a crash never leaves a half-written cache
            write_atomically({path: buffer.getbuffer()}, "the FID cache", "set `--fid.cache_dir` to another folder")
        except OSError as error:  # the cache only saves time: training goes on without it
            rank_zero_warn(f"{error.strerror}, to reuse the real statistics in later runs.")


def _warn_if_few(what: str, count: int, num_features: int) -> None:
    if count < num_features:
        rank_zero_warn(f"FID from {count} images ({what}) with {num_features}-dimensional features is unreliable: "
                       f"the covariance estimate is rank-deficient and the score biased. Use at least {num_features} "
                       f"(10,000 or more for a stable score), or a smaller `--fid.feature`.")


def _check_real_count(loader: DataLoader | None) -> None:
    if loader is not None and len(loader.dataset) < 2:  # the same on every rank: all raise, none waits in a collective
        raise SettingError(f"FID, KID and precision/recall need at least 2 real images, and the validation "
                           f"split holds {len(loader.dataset)}: give it more images, or turn the metrics off "
                           f"with `--fid.enabled false`.")


def _first_val_loader(trainer: Trainer) -> DataLoader | None:
    """The run's validation DataLoader, else (no validation yet in this fit) the datamodule's or model's."""
    loaders = trainer.val_dataloaders
    for source in (trainer.datamodule, trainer.lightning_module):
        if loaders is None and source is not None and is_overridden("val_dataloader", source):
            loaders = source.val_dataloader()
    if loaders is not None and not isinstance(loaders, DataLoader):
        raise TypeError(f"FIDCallback reads the real images from the first validation DataLoader; got {loaders!r}.")
    return loaders


def _gather_rows(trainer: Trainer, mine: Tensor, owners: list[int]) -> Tensor | None:
    """Rows held across the ranks, (len(owners), ...) in their global order on rank 0 (``None`` elsewhere):
    ``owners[p]`` is the rank holding row p, and each rank holds its rows in increasing p."""
    world_size = trainer.world_size
    if world_size == 1:
        return mine
    counts = [owners.count(rank) for rank in range(world_size)]
    padded = mine.new_zeros(max(counts), *mine.shape[1:]).to(trainer.strategy.root_device)
    padded[: len(mine)] = mine
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)  # equal shapes on every rank: padded to the largest share
    if not trainer.is_global_zero:
        return None
    rows = padded.new_empty(len(owners), *mine.shape[1:])
    owner_of = torch.tensor(owners, device=rows.device)
    for rank in range(world_size):
        rows[owner_of == rank] = gathered[rank][: counts[rank]]
    return rows


def _progress(trainer: Trainer, description: str, total: int) -> tqdm:
    """A console bar of an evaluation's images, shown on rank 0 while the trainer shows progress."""
    shown = trainer.is_global_zero and trainer.progress_bar_callback is not None
    return tqdm(total=total, desc=description, unit="img", file=sys.stdout, dynamic_ncols=True, disable=not shown)


def package_version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``not installed``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
