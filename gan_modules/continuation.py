"""Continuing a run past a planned stop as if it had never stopped.

A run stopped inside an epoch (``--model.max_generator_steps``, ``--trainer.max_steps``,
``--trainer.max_time``) is counted by Lightning as having finished that epoch, so a continued run would
skip the rest of it. The datamodule's checkpoint entry knows the epoch its batches came from; the loop
state is corrected to agree with it when the checkpoint is loaded. Keys pinned by
tests/test_lightning_internals.py.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer


def align_epoch_with_data(checkpoint: dict[str, Any], trainer: Trainer) -> None:
    """Make the epoch counters in ``checkpoint``'s loop state agree with the epoch ``X`` its datamodule was
    drawing batches from, so that ``trainer`` continues where the data stopped. Lightning counts epochs
    ``ready``/``started`` (X + 1 once epoch X began) and ``processed``/``completed`` (X until it ends).

    - A stop inside an epoch still counts it ``processed`` (before ``on_train_epoch_end``, where the end of
      the run is saved) and ``completed``: the epoch's batch progress tells a cut epoch (``is_last_batch``
      false) from a finished one, and the counters go back to X, the state of a checkpoint written after a
      batch, which Lightning resumes inside the epoch (the datamodule skips the batches already trained).
    - A finished epoch continued under ``max_steps`` would be restarted by Lightning (an empty or a
      double-counted epoch): it becomes the state of a checkpoint written after the epoch's last batch.
    - Resumed from such a checkpoint, Lightning starts the next epoch without counting it
      ``ready``/``started``, and every later checkpoint says so: it is counted.

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
