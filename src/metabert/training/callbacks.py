"""Hooks into the training loop (``metabert.training.trainer.Trainer``): the epoch log line, the best
checkpoint and its log, early stopping and the resumable state are callbacks, and a user's own
(``train(..., callbacks=[...])``) run after them."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from metabert.training.state import write_log

if TYPE_CHECKING:
    from metabert.training.trainer import Trainer

log = logging.getLogger(__name__)


class Callback:
    """Hooks the trainer calls; every hook may read (and, as early stopping does, steer) the trainer."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After each training batch (every process)."""

    def on_evaluate(self, trainer: Trainer, record: dict) -> None:
        """After the dev evaluation at the end of an epoch (main process only); ``record`` is the
        log record just appended to ``trainer.state.records``."""

    def on_train_end(self, trainer: Trainer) -> None:
        """When training has finished (main process only)."""


class EpochLog(Callback):
    """The dev scores per exit after every epoch: a log line, and a line under the progress bar."""

    def on_evaluate(self, trainer, record):
        scores = [e["score"] for e in record["dev_per_exit"]]
        log.info("epoch %d: dev score per exit %s", record["epoch"], " ".join(f"{s:.2f}" for s in scores))
        if trainer.progress:
            tqdm.write(f"epoch {record['epoch']}: dev {trainer.spec.metric} per exit: "
                       + " ".join(f"{s:.2f}" for s in scores) + ("  (best so far, saved)" if record["saved"] else ""))


class BestCheckpoint(Callback):
    """Keeps the best epoch's checkpoint (with ``train_config.json``) in the output folder, and the
    log of every evaluation beside it (``log.jsonl``)."""

    def on_evaluate(self, trainer, record):
        if record["saved"]:
            trainer.evaluated.save_pretrained(trainer.output, {
                "train_config.json": json.dumps(trainer.config.to_dict(), indent=2)})
        write_log(trainer.output / "log.jsonl", trainer.state.records)


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs in a row without a better dev score (the score the run
    selects its checkpoint by)."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, trainer, record):
        since = 0
        for r in reversed(trainer.state.records):
            if r["saved"]:
                break
            since += 1
        if since >= self.patience and trainer.state.best_record is not None:
            log.info("no better dev score for %d epochs: stopping early", since)
            trainer.should_stop = True


class ResumableState(Callback):
    """Saves the full training state every ``every`` steps and after each epoch but the last, beside
    the checkpoint (``state_path``; the trainer removes it when training ends)."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, trainer):
        state = trainer.state
        if trainer.world.main and state.step % self.every == 0 and state.batch < trainer.epoch_batches:
            trainer.save()

    def on_evaluate(self, trainer, record):
        if trainer.state.epoch < trainer.config.epochs and not trainer.should_stop:
            trainer.save()


def default_callbacks(config) -> list[Callback]:
    """The epoch log line, the best checkpoint and its log, early stopping and the resumable state,
    as ``config`` asks."""
    out: list[Callback] = [EpochLog(), BestCheckpoint()]
    if config.early_stopping:
        out.append(EarlyStopping(config.early_stopping))
    if config.save_every:
        out.append(ResumableState(config.save_every))
    return out
