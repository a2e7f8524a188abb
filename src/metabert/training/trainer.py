"""The training loop as a ``Trainer``: AdamW with linear warm-up and decay, dev evaluation after every
epoch, and callbacks that keep the best checkpoint, write the log, save the resumable state and stop
early. How exit losses are combined is the training method's job (``metabert.training.methods.core``: each
method a small strategy class the trainer asks for the loss of a batch, the parameters that train in
an epoch, and the optimizer steps a batch takes).

Callbacks (``Callback``) see the trainer after each training step, after each evaluation and at the
end; the defaults (``default_callbacks``) are the epoch log line, the best checkpoint and its log,
early stopping and the resumable state. The trainer's position (``TrainState``) is what a resumed
run restores, so a run cut anywhere continues exactly (same batches, RNG states, optimizers).
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from metabert.data import tasks as data_mod
from metabert.data.batching import encode, iterate, train_batches
from metabert.eval.evaluate import all_exit_logits, per_exit_scores
from metabert.model.multi_exit import MultiExitBert
from metabert.training import distributed
from metabert.training.callbacks import Callback, default_callbacks
from metabert.training.config import TrainConfig
from metabert.training.methods import get_method
from metabert.training.methods.peers import load_teacher
from metabert.training.state import load_state, save_state, state_file, state_path

log = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")


@dataclass
class TrainState:
    """Where a run is: epochs and batches done, every evaluation so far, the best one, RNG states and
    the running figures of the epoch in progress. Saved with the resumable state."""

    epoch: int = 0  # epochs done
    batch: int = 0  # batches done in the epoch in progress
    step: int = 0  # training batches done in all
    records: list[dict] = field(default_factory=list)  # one per evaluation
    best: list[float] = field(default_factory=lambda: [-float("inf")] * 2)  # (selection score, tie-break)
    best_record: dict | None = None
    epoch_rng: object = None  # the batch sampler's state at the start of the epoch in progress
    rng: object = None  # its state now
    elapsed: float = 0.0  # seconds of training so far, over every (resumed) part of the run
    epoch_seconds: float = 0.0  # of the epoch in progress, before its last save
    epoch_seen: int = 0  # examples the epoch in progress has trained on
    epoch_running: float | None = None  # running mean of its training loss
    epoch_diagnostics: list[dict] = field(default_factory=list)  # meta-learning's checks in it


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One training run of ``config`` (a ``training.TrainConfig``): data, model, method and
    optimizers are set up on construction; ``fit()`` trains and returns the run's summary."""

    def __init__(self, config, progress: bool = True, callbacks: list[Callback] | None = None):
        self.config = config
        self.world = distributed.init()
        self.progress = progress and self.world.main
        seed_everything(config.seed)
        self.spec = data_mod.task_from_options(config.task, config.train_file, config.text_columns, config.label_column)
        train_set = data_mod.load_split(self.spec, "train", config.data_dir, config.train_file)
        dev_set = data_mod.load_split(self.spec, "dev", config.data_dir, config.dev_file)
        held = data_mod.calibration_count(len(train_set), config.calibration_fraction)
        train_set, calib_set, _ = data_mod.split_off(train_set, held, config.seed)
        self.train_set = data_mod.subsample(train_set, config.max_train_samples, config.seed)
        log.info("train %d examples, dev %d, calibration slice %d", len(self.train_set), len(dev_set), len(calib_set))

        self.model = MultiExitBert.from_backbone(
            config.model, list(self.spec.labels), pooling=config.pooling, dropout=config.dropout,
            task=data_mod.spec_to_dict(self.spec), seed=config.seed, backbone_dropout=config.backbone_dropout,
            head=config.head, head_init=config.head_init,
        )
        rows = len(train_set) + len(calib_set)
        self.model.with_config(calibration={
            "source": self.train_set.source, "fraction": len(calib_set) / rows, "rows": rows,
            "seed": config.seed, "count": len(calib_set),
        })
        self.train_enc = encode(self.train_set, self.model.tokenizer, config.max_seq_length)
        self.dev_enc = encode(dev_set, self.model.tokenizer, config.max_seq_length)
        steps_per_epoch = -(-len(self.train_enc) // config.batch_size)
        self.method = get_method(config.method, config.epochs, config.meta, config=config,
                                 teacher=load_teacher(config.teacher, config.method),
                                 total_steps=steps_per_epoch * config.epochs)
        if config.num_layers:
            self.model.truncate(config.num_layers)
        if (build := getattr(self.method, "build", None)) is not None:  # a student made from --teacher
            self.model = build(self.model)
        self.evaluated = self.model  # the model the last evaluation scored (and BestCheckpoint saves)

        named = list(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW([
            {"params": [p for n, p in named if not n.endswith(NO_DECAY)], "weight_decay": config.weight_decay},
            {"params": [p for n, p in named if n.endswith(NO_DECAY)], "weight_decay": 0.0},
        ], lr=config.learning_rate)
        self.optimizers = {"optimizer": self.optimizer}
        if (meta_opt := self.method.make_optimizer(self.model)) is not None:
            self.optimizers["meta_optimizer"] = meta_opt  # stateful meta-optimiser (Adam): saved and resumed too
        total = steps_per_epoch * sum(self.method.updates_per_batch(e) for e in range(config.epochs))
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(config.warmup * total), total)

        self.output = Path(config.output)
        self.state = TrainState()
        self.rng = random.Random(config.seed)  # the batch sampler's
        self.callbacks = default_callbacks(config) + list(callbacks or ())
        self.should_stop = False
        self.epoch_batches = 0  # batches in the epoch in progress
        self._started = self._epoch_started = 0.0
        self._resumed_at: int | None = None  # the batch the epoch in progress was resumed at

    # -- the loop --------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict:
        """Train from the start, or (``resume``) from the state a run with ``save_every`` saved, and
        return the summary: output folder, best record, log file, training examples, seconds."""
        config, world = self.config, self.world
        if resume:
            self.state = state = TrainState(**load_state(state_path(self.output), config, self.model, self.optimizers,
                                                         self.scheduler))
            log.info("resuming at epoch %d, batch %d (step %d)", state.epoch + 1, state.batch, state.step)
        self._started = time.perf_counter() - self.state.elapsed
        if world.size > 1:  # the same initial weights everywhere (seeded), different dropout masks per process
            torch.manual_seed(config.seed * 1000 + world.rank)
        for epoch in range(self.state.epoch, config.epochs):
            self._train_epoch(epoch, resumed=resume)
            resume = False
            if world.main:
                self._evaluate(epoch)
            if config.early_stopping and world.size > 1:  # every process stops where the main one does
                flag = torch.tensor([float(self.should_stop)])
                self.should_stop = bool(distributed.all_reduce_sum({"stop": flag}, world)["stop"].item())
            if self.should_stop:
                break
        distributed.barrier(world)
        if not world.main:
            return {"output": str(self.output), "best": None, "rank": world.rank}
        shutil.rmtree(state_path(self.output), ignore_errors=True)  # finished: nothing to resume
        for callback in self.callbacks:
            callback.on_train_end(self)
        return {"output": str(self.output), "best": self.state.best_record, "log": str(self.output / "log.jsonl"),
                "train_examples": len(self.train_set), "seconds": time.perf_counter() - self._started}

    def _train_epoch(self, epoch: int, resumed: bool) -> None:
        config, model, method, state = self.config, self.model, self.method, self.state
        model.train()
        for name, param in model.named_parameters():
            param.requires_grad_(method.trainable(name, epoch, model.num_layers))
        if resumed and state.batch > 0:
            self.rng.setstate(state.epoch_rng)  # the same batches as the interrupted epoch
        elif resumed and state.rng is not None:
            self.rng.setstate(state.rng)  # stopped between epochs
        state.epoch_rng = self.rng.getstate()
        batches = train_batches(self.train_enc, config.batch_size, self.rng, pool=config.bucket_pool)
        self.epoch_batches, first = len(batches), state.batch
        if not first:  # a fresh epoch (resumed mid-epoch: its time, examples, loss and diagnostics so far count)
            state.epoch_seconds, state.epoch_seen, state.epoch_running, state.epoch_diagnostics = 0.0, 0, None, []
        self._epoch_started = time.perf_counter() - state.epoch_seconds
        bar = tqdm(iterate(self.train_enc, batches[first:], model.tokenizer.pad_token_id), total=len(batches),
                   initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not self.progress,
                   unit="batch", mininterval=1.0)
        meta_only = getattr(method, "meta_only_epochs", 0)  # warm-start epochs: meta-updates, no Adam
        for batch in bar:
            info = self._before_step(batch, epoch)
            if epoch < meta_only:
                if state.epoch_diagnostics:
                    self._track(state.epoch_diagnostics[-1]["query_loss"])
                    bar.set_postfix(meta_loss=f"{state.epoch_running:.4f}")
            else:
                loss = self._optimizer_steps(batch, epoch, info)
                self._track(loss.item())
                bar.set_postfix(loss=f"{state.epoch_running:.4f}",
                                ex_s=f"{(state.epoch_seen + len(batch['labels'])) / (time.perf_counter() - self._epoch_started):.0f}")
            state.step += 1
            state.batch += 1
            state.epoch_seen += len(batch["labels"])
            for callback in self.callbacks:
                callback.on_step_end(self)
        state.epoch_seconds = time.perf_counter() - self._epoch_started
        state.epoch, state.batch = epoch + 1, 0
        self._resumed_at = first or None

    def _before_step(self, batch: dict, epoch: int) -> dict:
        """The method's work before the optimizer step (meta-learning's update), with its diagnostics."""
        hook = getattr(self.method, "before_step", None)
        if hook is None:
            return {}
        every = self.config.meta.diagnose_every
        info = hook(self.model, batch, epoch, self.state.step, world=self.world,
                    optimizer=self.optimizers.get("meta_optimizer"),
                    diagnose=bool(every) and self.state.step % every == 0)
        if info:
            self.state.epoch_diagnostics.append(info)
        return info or {}

    def _optimizer_steps(self, batch: dict, epoch: int, info: dict) -> torch.Tensor:
        """The Adam steps of one training batch (two for joint-matched); the last step's loss."""
        config, model, world = self.config, self.model, self.world
        for update in self.method.update_batches(batch, epoch):
            if update is None:  # the hook left this step's gradients in .grad (meta, shared gradients)
                loss = torch.tensor(info["batch_loss"])
            else:
                part, weight = distributed.shard(update, world)
                loss = self.method.loss(model, part, epoch, self.state.step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss {loss.item()} at step {self.state.step} (epoch {epoch + 1})")
                self.optimizer.zero_grad(set_to_none=True)
                (loss * weight).backward()
                distributed.all_reduce_gradients(model.parameters(), world)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
        return loss

    def _track(self, value: float) -> None:
        state = self.state
        state.epoch_running = value if state.epoch_running is None else 0.98 * state.epoch_running + 0.02 * value

    def _evaluate(self, epoch: int) -> None:
        config, state = self.config, self.state
        self.evaluated = self.method.final_model(self.model)  # LayerDrop: the pruned model is scored and kept
        logits = all_exit_logits(self.evaluated, self.dev_enc, config.eval_batch_size)
        per_exit = per_exit_scores(logits, self.dev_enc.labels, self.spec.metric)
        scores = [e["score"] for e in per_exit]
        mean = sum(scores) / len(scores)
        # ties (e.g. a last exit frozen in a second stage) go to the better mean over exits
        chosen = [scores[-1], mean] if config.select_by == "last" else [mean, scores[-1]]
        seconds = state.epoch_seconds
        record = {
            "epoch": epoch + 1, "step": state.step, "train_loss": state.epoch_running, "train_seconds": seconds,
            "examples_per_second": state.epoch_seen / seconds if seconds else 0.0,
            "resumed_at_batch": self._resumed_at, "dev_per_exit": per_exit, "dev_last_exit": scores[-1],
            "dev_mean_over_exits": mean, "elapsed_seconds": time.perf_counter() - self._started,
        }
        if state.epoch_diagnostics:  # meta-learning's checks (GAML: its gradients' cosines)
            summarise = getattr(self.method, "summarise", None)
            key, summary = summarise(state.epoch_diagnostics) if summarise else ("meta", summarise_meta(state.epoch_diagnostics))
            record[key] = summary
        # staged methods: only a model whose every exit has trained may be kept
        improved = epoch >= self.method.first_selectable_epoch and chosen > state.best
        record["saved"] = improved
        state.records.append(record)
        if improved:
            state.best, state.best_record = chosen, record
        state.elapsed, state.rng = time.perf_counter() - self._started, self.rng.getstate()
        for callback in self.callbacks:
            callback.on_evaluate(self, record)

    # -- the resumable state ---------------------------------------------------------------------

    def save(self) -> None:
        """Save the resumable state now (``ResumableState`` calls it)."""
        now = time.perf_counter()
        self.state.elapsed, self.state.rng = now - self._started, self.rng.getstate()
        if self.state.batch:  # mid-epoch: the epoch's time so far
            self.state.epoch_seconds = now - self._epoch_started
        save_state(state_path(self.output), self.config, self.model, self.optimizers, self.scheduler, self.state)


def summarise_meta(diagnostics: list[dict]) -> dict:
    """Per-epoch means of the meta-learning diagnostics (see ``metabert.training.methods.meta.meta_gradient``)."""
    out = {}
    for key in ("query_loss", "inner_step_relative", "cosine_to_query_gradient"):
        values = [d[key] for d in diagnostics if key in d]
        if values:
            out[key] = sum(values) / len(values)
    out["meta_updates"] = len(diagnostics)
    return out


def train(config: TrainConfig, progress: bool = True, resume: bool = False,
          callbacks: list[Callback] | None = None) -> dict:
    """Train, evaluate on dev after each epoch, keep the best checkpoint in ``config.output``.

    With ``config.save_every`` N, the full training state is saved every N steps (and after each
    epoch) beside the checkpoint; ``resume=True`` continues from it exactly (same data order, RNG
    states, optimizer and scheduler), as if the run had never stopped. ``callbacks`` run after the
    default ones (``metabert.training.trainer``)."""
    return Trainer(config, progress, callbacks).fit(resume)


def resume_config(output: str | Path) -> TrainConfig:
    """The options of the interrupted run whose checkpoint folder is ``output``."""
    path = state_file(Path(output))
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (was the run started with "
                                "--save-every, and has it finished already?)")
    return TrainConfig.from_dict(torch.load(path, weights_only=False)["config"])
