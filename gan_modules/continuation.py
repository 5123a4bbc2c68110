"""Continuing a run past a planned stop as if it had never stopped.

A run stopped by ``--model.max_generator_steps``, ``--trainer.max_steps`` or ``--trainer.max_time``
usually stops inside an epoch, and Lightning then counts that epoch as finished: a run continued
from its checkpoint with a higher limit would start the next epoch and never train on the rest of
the stopped one. :func:`align_epoch_with_data` corrects the count when the checkpoint is loaded.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer


def align_epoch_with_data(checkpoint: dict[str, Any], trainer: Trainer) -> None:
    """Make the epoch counters in ``checkpoint``'s loop state agree with the epoch its datamodule was
    drawing batches from, so that ``trainer`` continues where the data stopped.

    The datamodule's state holds the epoch ``X`` of the batches trained on (its sampler's) and how
    many; Lightning's ``epoch_progress`` counts epochs ``ready``/``started`` (X + 1 once epoch X has
    begun) and ``processed``/``completed`` (X until epoch X ends). Three of Lightning's states are
    continued wrongly, and each is rewritten into one it continues exactly:

    - A stop after a batch inside an epoch (``trainer.should_stop``, which ``max_generator_steps``
      and the ``max_time`` timer set, or ``max_steps`` reached) still ends the epoch: ``processed``
      counts it before ``on_train_epoch_end`` (where ModelCheckpoint saves by default) and
      ``completed`` before ``on_train_end``, and a continued run would start epoch X + 1. The
      batch progress tells a cut epoch from a finished one (``is_last_batch`` is false: the data
      had not run out), and its counters go back to X: the state of a checkpoint written at a
      validation after the epoch's last trained batch, which Lightning resumes inside the epoch
      (the datamodule skips the batches it holds as trained).
    - A finished epoch continued by a trainer that counts steps (``max_steps`` set): Lightning
      restarts every loop then, and from an epoch-end state trains an empty or a double-counted
      epoch. The state becomes that of a checkpoint written after the epoch's last batch.
    - Resumed from such a checkpoint (every N steps, at an epoch's last batch), Lightning starts the
      next epoch without counting it ``ready``/``started``, and every later checkpoint of the run
      says so; a continued run would restart an epoch from its first batch. They are counted.

    Checkpoints that are right already (inside an epoch, at the end of a finished one) are left as
    they are. This runs on load, so it also repairs checkpoints written before it existed (those
    saved in ``on_train_end`` held Lightning's epoch, not the sampler's, and stay as they were).

    Args:
        checkpoint: a Lightning checkpoint being loaded; its ``loops`` entry is changed in place.
        trainer: the trainer that is about to restore it.
    """
    datamodule = trainer.datamodule
    data_state = checkpoint.get(type(datamodule).__qualname__) if datamodule is not None else None
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    batches, epochs = fit_loop.get("epoch_loop.batch_progress"), fit_loop.get("epoch_progress")
    if not isinstance(data_state, dict) or "epoch" not in data_state or batches is None or epochs is None:
        return
    if batches["current"]["processed"] == 0:
        return  # no batch of the epoch trained: nothing to continue
    epoch, finished = data_state["epoch"], batches["is_last_batch"]
    ended = False
    for tracker in (epochs["current"], epochs["total"]):
        if tracker["ready"] == tracker["started"] < epoch + 1:
            tracker["ready"] = tracker["started"] = epoch + 1
        if tracker["processed"] == epoch + 1 and (not finished or trainer.max_steps != -1):
            tracker["processed"] = tracker["completed"] = epoch
            ended = True
    if ended and finished and batches["total"]["completed"] == batches["total"]["processed"]:
        # As saved in on_train_batch_end: the last batch not yet marked completed, nor counted for
        # the loggers' step, both of which Lightning's restart then does.
        for tracker in (batches["current"], batches["total"]):
            tracker["completed"] = tracker["processed"] - 1
        fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
