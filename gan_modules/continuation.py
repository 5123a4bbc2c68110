"""Continuing a run past a planned stop (``--model.max_generator_steps``, ``--trainer.max_steps``,
``--trainer.max_time``) as if it had never stopped: Lightning counts an epoch cut short as finished, so
the loop state is corrected to the epoch the datamodule's checkpoint entry says its batches came from.
Keys pinned by tests/test_lightning_internals.py."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer


def align_epoch_with_data(checkpoint: dict[str, Any], trainer: Trainer) -> None:
    """Make the epoch counters in ``checkpoint``'s loop state agree with the epoch ``X`` its datamodule was
    drawing from. Lightning counts ``ready``/``started`` X + 1 once epoch X began, ``processed``/``completed``
    X until it ends, but also counts a cut epoch (``is_last_batch`` false) ``processed`` and ``completed``:
    it goes back to X, as if saved after a batch, and resumes inside the epoch (the datamodule skips the
    batches trained). A finished epoch continued under ``max_steps`` (which Lightning would restart) becomes
    the state after its last batch. Resumed from that, Lightning starts the next epoch without counting it
    ``ready``/``started`` (nor does any later checkpoint): it is counted.

    Args:
        checkpoint: a Lightning checkpoint being loaded; its ``loops`` entry is changed in place.
        trainer: the trainer that is about to restore it.
    """
    datamodule = trainer.datamodule
    data_state = checkpoint.get(type(datamodule).__qualname__) if datamodule is not None else None
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    batches, epochs = fit_loop.get("epoch_loop.batch_progress"), fit_loop.get("epoch_progress")
    if (not isinstance(data_state, dict) or "epoch" not in data_state or batches is None or epochs is None
            or batches["current"]["processed"] == 0):  # the last: no batch of the epoch trained, nothing to continue
        return
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
