"""The training loop: AdamW with linear warm-up and decay, dev evaluation after every epoch, the best
checkpoint kept, a JSONL log of every evaluation. How exit losses are combined is the ``method``'s job
(``metabert.methods``)."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from metabert import data as data_mod
from metabert import distributed
from metabert.batching import encode, iterate, train_batches
from metabert.evaluation import all_exit_logits, per_exit_scores
from metabert.meta import ADAPT, OPTIMIZERS, SCHEDULES
from metabert.meta import TASKS as META_TASKS
from metabert.methods import METHODS, get_method
from metabert.modeling import HEAD_INITS, HEADS, POOLINGS, MultiExitBert
from metabert.options import option

log = logging.getLogger(__name__)

SELECT_BY = ("last", "mean")
META_ORDERS = ("first", "second")


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``metabert train``: each is a command-line flag of the same name, documented here
    once (``metabert.options`` turns the fields into the command's options)."""

    task: str
    output: str = option(help="output folder")
    model: str = option("minilm-l6", help="minilm-l6 (default), tiny, a local folder or a hub name")
    method: str = option("joint", help="training method", choices=sorted(METHODS))
    data_dir: str | None = None
    train_file: str | None = option(None, help="--task custom: training file (TSV, CSV or JSONL)")
    dev_file: str | None = None  # --task custom
    text_columns: tuple[str, ...] = option((), help="--task custom: one or two comma-separated text columns")
    label_column: str | None = option(None, help="--task custom: label column")
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = option(5e-5, flags=("--learning-rate", "--lr"))
    weight_decay: float = 0.01
    warmup: float = option(0.1, help="fraction of steps for linear warm-up")
    max_seq_length: int = 128
    max_train_samples: int | None = option(None, help="train on a seeded random subset of this size")
    calibration_fraction: float = option(
        0.05, help="seeded slice of the training file held out for threshold calibration")
    seed: int = 42
    grad_clip: float = option(1.0, help="max gradient norm (0: off)")
    pooling: str = option("mean", help="how each exit reads its layer", choices=POOLINGS)
    dropout: float = option(0.1, help="dropout in the exit heads")
    eval_batch_size: int = 64
    select_by: str = option("last", help="keep the epoch with the best last exit, or best mean over exits",
                            choices=SELECT_BY)
    save_every: int = option(0, help="save the resumable training state every N steps (and after each epoch)")
    backbone_dropout: float | None = option(None, help="replace the encoder's dropout (default: its own)")
    num_layers: int | None = option(None, help="keep only the first k layers (static BERT-kL baseline)")
    head: str = option("pooler", help="exit classifier: pooler (DeeBERT) or linear", choices=HEADS)
    head_init: str = option("random", help="exit dense layers: random, or the backbone's pretrained pooler (DeeBERT)",
                            choices=HEAD_INITS)
    bucket_pool: int = option(
        50, help="batches per length-sorted pool when bucketing by length (1: random batches)")
    # --method meta (see metabert.meta.MetaConfig)
    meta_inner_lr: float = option(1e-4, help="α, inner SGD step (Eq. 2); 0: the ablation without an inner step")
    meta_lr: float = option(1e-5, help="β, meta step (Eq. 4)")
    meta_inner_steps: int = 1
    meta_support_size: int = option(16, help="K: examples per support (and query) batch")
    meta_batch: int = option(2, help="tasks per meta-update")
    meta_order: str = option("first", choices=META_ORDERS)
    meta_adapt: str = option("all", help="what the inner loop adapts", choices=ADAPT)
    meta_task: str = option("episode", choices=META_TASKS)
    meta_schedule: str = option("interleaved", choices=SCHEDULES)
    meta_warmstart_epochs: int = 1
    meta_optimizer: str = option(
        "sgd", choices=OPTIMIZERS,
        help="meta step: plain SGD θ - βg (Eq. 4) or Adam with rate β (MAML's meta-optimiser)")
    meta_diagnose_every: int = option(
        20, help="steps between checks of the meta-gradient against the plain gradient (0: never)")
    meta_share_gradients: bool = option(
        False, help="first order: the inner step and the Adam step share the gradients at θ "
                    "(a meta-update costs one pass over the query rows, not two over the task rows)")

    def to_dict(self) -> dict:
        """The flat JSON form stored in ``train_config.json``, training states and result files."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from ``to_dict``'s form (a stored file); an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(data)
        if "text_columns" in data:
            data["text_columns"] = tuple(data["text_columns"] or ())
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` (keys as in ``to_dict``)."""
        return self.from_dict({**self.to_dict(), **changes})

    def meta_config(self):
        from metabert.meta import MetaConfig

        if self.meta_order not in META_ORDERS:
            raise ValueError(f"invalid meta_order {self.meta_order!r}; choose first or second")
        return MetaConfig(inner_lr=self.meta_inner_lr, meta_lr=self.meta_lr, inner_steps=self.meta_inner_steps,
                          support_size=self.meta_support_size, meta_batch=self.meta_batch,
                          first_order=self.meta_order == "first", adapt=self.meta_adapt, task=self.meta_task,
                          schedule=self.meta_schedule, warmstart_epochs=self.meta_warmstart_epochs,
                          optimizer=self.meta_optimizer, share_gradients=self.meta_share_gradients)

    def __post_init__(self):
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "warmup": 0 <= self.warmup < 1,
            "max_seq_length": self.max_seq_length >= 8,
            "calibration_fraction": 0 <= self.calibration_fraction < 0.5,
            "grad_clip": self.grad_clip >= 0,
            "max_train_samples": self.max_train_samples is None or self.max_train_samples >= 1,
            "backbone_dropout": self.backbone_dropout is None or 0 <= self.backbone_dropout < 1,
            "save_every": self.save_every >= 0,
            "meta_diagnose_every": self.meta_diagnose_every >= 0,
            "head_init": self.head_init in HEAD_INITS,
            "bucket_pool": self.bucket_pool >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")
        if self.method not in METHODS:
            raise ValueError(f"invalid method {self.method!r}; choose one of: {', '.join(METHODS)}")
        get_method(self.method, self.epochs, self.meta_config())  # a method may refuse the epoch count
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"invalid num_layers: {self.num_layers}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"invalid pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"invalid select_by {self.select_by!r}; choose one of: {', '.join(SELECT_BY)}")
        if self.task == "custom" and not (self.train_file and self.dev_file and self.text_columns and self.label_column):
            raise ValueError("--task custom needs --train-file, --dev-file, --text-columns and --label-column")


def task_spec(config: TrainConfig) -> data_mod.TaskSpec:
    if config.task != "custom":
        return data_mod.get_task(config.task)
    spec = data_mod.custom_spec(config.train_file, list(config.text_columns), config.label_column)
    labels = data_mod.infer_labels(Path(config.train_file), spec)
    return data_mod.TaskSpec(**{**asdict(spec), "labels": labels})


def load_split(spec: data_mod.TaskSpec, split: str, data_dir=None, file=None) -> data_mod.Dataset:
    if spec.name == "custom":
        return data_mod.read_file(Path(file), data_mod.for_file(spec, file), spec.labels)
    return data_mod.load_glue(spec.name, split, data_dir)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


RESUME_FREE = ("save_every",)  # options that may change between a run and its resumption


def train(config: TrainConfig, progress: bool = True, resume: bool = False) -> dict:
    """Train, evaluate on dev after each epoch, keep the best checkpoint in ``config.output``.

    With ``config.save_every`` N, the full training state is saved every N steps (and after each
    epoch) beside the checkpoint; ``resume=True`` continues from it exactly (same data order, RNG
    states, optimizer and scheduler), as if the run had never stopped."""
    world = distributed.init()
    progress = progress and world.main
    seed_everything(config.seed)
    spec = task_spec(config)
    train_set = load_split(spec, "train", config.data_dir, config.train_file)
    dev_set = load_split(spec, "dev", config.data_dir, config.dev_file)
    train_set, calib_set, _ = data_mod.split_off(train_set, config.calibration_fraction, config.seed)
    train_set = data_mod.subsample(train_set, config.max_train_samples, config.seed)
    log.info("train %d examples, dev %d, calibration slice %d", len(train_set), len(dev_set), len(calib_set))

    model = MultiExitBert.from_backbone(
        config.model, list(spec.labels), pooling=config.pooling, dropout=config.dropout,
        task=data_mod.spec_to_dict(spec), seed=config.seed, backbone_dropout=config.backbone_dropout,
        head=config.head, head_init=config.head_init,
    )
    model.with_config(calibration={
        "source": train_set.source, "fraction": config.calibration_fraction,
        "seed": config.seed, "count": len(calib_set),
    })
    tokenizer = model.tokenizer
    train_enc = encode(train_set, tokenizer, config.max_seq_length)
    dev_enc = encode(dev_set, tokenizer, config.max_seq_length)
    method = get_method(config.method, config.epochs, config.meta_config())
    meta_only = getattr(method, "meta_only_epochs", 0)  # warm-start epochs: meta-updates, no Adam
    if config.num_layers:
        model.truncate(config.num_layers)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": config.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    optimizers = {"optimizer": optimizer}
    if (meta_opt := method.make_optimizer(model)) is not None:
        optimizers["meta_optimizer"] = meta_opt  # stateful meta-optimiser (Adam): saved and resumed too
    steps_per_epoch = -(-len(train_enc) // config.batch_size)
    total = steps_per_epoch * sum(method.updates_per_batch(e) for e in range(config.epochs))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup * total), total)

    output = Path(config.output)
    state_dir = state_path(output)
    run = {"epoch": 0, "batch": 0, "step": 0, "records": [], "best": [-float("inf")] * 2, "best_record": None,
           "epoch_rng": None, "rng": None, "elapsed": 0.0}
    rng = random.Random(config.seed)
    if resume:
        run = load_state(state_dir, config, model, optimizers, scheduler)
        log.info("resuming at epoch %d, batch %d (step %d)", run["epoch"] + 1, run["batch"], run["step"])
    started = time.perf_counter() - run["elapsed"]
    if world.size > 1:  # the same initial weights everywhere (seeded), different dropout masks per process
        torch.manual_seed(config.seed * 1000 + world.rank)
    pad = tokenizer.pad_token_id
    hook = getattr(method, "before_step", None)  # meta-learning's update before each step
    for epoch in range(run["epoch"], config.epochs):
        model.train()
        for name, param in model.named_parameters():
            param.requires_grad_(method.trainable(name, epoch, model.num_layers))
        if resume and run["batch"] > 0:
            rng.setstate(run["epoch_rng"])  # the same batches as the interrupted epoch
        elif resume and run.get("rng") is not None:
            rng.setstate(run["rng"])  # stopped between epochs
        resume = False
        run["epoch_rng"] = rng.getstate()
        batches = train_batches(train_enc, config.batch_size, rng, pool=config.bucket_pool)
        first = run["batch"]
        bar = tqdm(iterate(train_enc, batches[first:], pad), total=len(batches), initial=first,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, unit="batch",
                   mininterval=1.0)
        seen, epoch_start, running, diagnostics = 0, time.perf_counter(), None, []
        if first:  # resumed mid-epoch: the epoch's time, examples, loss and diagnostics before the cut count too
            seen, epoch_start = run.get("epoch_seen", 0), epoch_start - run.get("epoch_seconds", 0.0)
            running, diagnostics = run.get("epoch_running"), list(run.get("epoch_diagnostics", []))
        for batch in bar:
            if hook is not None:
                info = hook(model, batch, epoch, run["step"], world=world, optimizer=optimizers.get("meta_optimizer"),
                            diagnose=bool(config.meta_diagnose_every) and run["step"] % config.meta_diagnose_every == 0)
                if info:
                    diagnostics.append(info)
            if epoch < meta_only:
                run["step"] += 1
                run["batch"] += 1
                seen += len(batch["labels"])
                if diagnostics:
                    meta_loss = diagnostics[-1]["query_loss"]
                    running = meta_loss if running is None else 0.98 * running + 0.02 * meta_loss
                    bar.set_postfix(meta_loss=f"{running:.4f}")
                continue
            for update in method.update_batches(batch, epoch):  # one Adam step each (two: joint-matched)
                if update is None:  # the hook left this step's gradients in .grad (meta, shared gradients)
                    loss = torch.tensor(info["batch_loss"])
                else:
                    part, weight = distributed.shard(update, world)
                    loss = method.loss(model, part, epoch, run["step"])
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"non-finite loss {loss.item()} at step {run['step']} (epoch {epoch + 1})")
                    optimizer.zero_grad(set_to_none=True)
                    (loss * weight).backward()
                    distributed.all_reduce_gradients(model.parameters(), world)
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
            run["step"] += 1
            run["batch"] += 1
            seen += len(batch["labels"])
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}", ex_s=f"{seen / (time.perf_counter() - epoch_start):.0f}")
            if (config.save_every and world.main and run["step"] % config.save_every == 0
                    and run["batch"] < len(batches)):
                now = time.perf_counter()
                run["elapsed"], run["rng"] = now - started, rng.getstate()
                run["epoch_seconds"], run["epoch_seen"] = now - epoch_start, seen
                run["epoch_running"], run["epoch_diagnostics"] = running, diagnostics
                save_state(state_dir, config, model, optimizers, scheduler, run)
        train_seconds = time.perf_counter() - epoch_start
        run["epoch"], run["batch"] = epoch + 1, 0
        if not world.main:  # evaluation, checkpoints and logs are the main process's job
            continue
        logits = all_exit_logits(model, dev_enc, config.eval_batch_size)
        per_exit = per_exit_scores(logits, dev_enc.labels, spec.metric)
        scores = [e["score"] for e in per_exit]
        mean = sum(scores) / len(scores)
        # ties (e.g. a last exit frozen in a second stage) go to the better mean over exits
        chosen = [scores[-1], mean] if config.select_by == "last" else [mean, scores[-1]]
        record = {
            "epoch": epoch + 1, "step": run["step"], "train_loss": running, "train_seconds": train_seconds,
            "examples_per_second": seen / train_seconds if train_seconds else 0.0, "resumed_at_batch": first or None,
            "dev_per_exit": per_exit, "dev_last_exit": scores[-1], "dev_mean_over_exits": sum(scores) / len(scores),
            "elapsed_seconds": time.perf_counter() - started,
        }
        if diagnostics:
            record["meta"] = summarise_meta(diagnostics)
        # staged methods: only a model whose every exit has trained may be kept
        improved = epoch >= method.first_selectable_epoch and chosen > run["best"]
        record["saved"] = improved
        run["records"].append(record)
        log.info("epoch %d: dev score per exit %s", epoch + 1, " ".join(f"{s:.2f}" for s in scores))
        if progress:
            tqdm.write(f"epoch {epoch + 1}: dev {spec.metric} per exit: " + " ".join(f"{s:.2f}" for s in scores)
                       + ("  (best so far, saved)" if improved else ""))
        if improved:
            run["best"], run["best_record"] = chosen, record
            model.save_pretrained(output, {"train_config.json": json.dumps(config.to_dict(), indent=2)})
        write_log(output / "log.jsonl", run["records"])
        run["elapsed"], run["rng"] = time.perf_counter() - started, rng.getstate()
        if config.save_every and epoch + 1 < config.epochs:
            save_state(state_dir, config, model, optimizers, scheduler, run)
    distributed.barrier(world)
    if not world.main:
        return {"output": str(output), "best": None, "rank": world.rank}
    shutil.rmtree(state_dir, ignore_errors=True)
    return {"output": str(output), "best": run["best_record"], "log": str(output / "log.jsonl"),
            "train_examples": len(train_set), "seconds": time.perf_counter() - started}


def summarise_meta(diagnostics: list[dict]) -> dict:
    """Per-epoch means of the meta-learning diagnostics (see ``metabert.meta.meta_gradient``)."""
    out = {}
    for key in ("query_loss", "inner_step_relative", "cosine_to_query_gradient"):
        values = [d[key] for d in diagnostics if key in d]
        if values:
            out[key] = sum(values) / len(values)
    out["meta_updates"] = len(diagnostics)
    return out


def resume_config(output: str | Path) -> TrainConfig:
    """The options of the interrupted run whose checkpoint folder is ``output``."""
    path = state_file(Path(output))
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (was the run started with "
                                "--save-every, and has it finished already?)")
    return TrainConfig.from_dict(torch.load(path, weights_only=False)["config"])


def state_path(output: Path) -> Path:
    """Where the resumable training state lives: beside the checkpoint, removed when training ends."""
    return output.with_name(output.name + ".state")


def state_file(output: Path) -> Path:
    """The saved training state of the run whose checkpoint folder is ``output`` (present only while
    a run started with ``save_every`` is unfinished)."""
    return state_path(output) / "state.pt"


def save_state(directory: Path, config: TrainConfig, model, optimizers: dict, scheduler, run: dict) -> None:
    """Everything needed to continue exactly: weights, optimizer, scheduler, RNG states, position."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({
        "config": config.to_dict(), "model": model.state_dict(),
        **{name: opt.state_dict() for name, opt in optimizers.items()},
        "scheduler": scheduler.state_dict(), "run": run, "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
    }, tmp / "state.pt")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_state(directory: Path, config: TrainConfig, model, optimizers: dict, scheduler) -> dict:
    path = directory / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (was the run started with "
                                "--save-every, and has it finished already?)")
    state = torch.load(path, weights_only=False)
    stored = {k: v for k, v in state["config"].items() if k not in RESUME_FREE}
    given = {k: v for k, v in config.to_dict().items() if k not in RESUME_FREE}
    changed = sorted(k for k in given if json.dumps(given[k]) != json.dumps(stored.get(k)))
    if changed:
        raise ValueError(f"--resume with different options than the interrupted run: {', '.join(changed)}")
    model.load_state_dict(state["model"])
    for name, opt in optimizers.items():
        opt.load_state_dict(state[name])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    return state["run"]


def read_log(checkpoint: str | Path) -> list[dict]:
    """Every evaluation a training run logged (``write_log``), oldest first."""
    path = Path(checkpoint) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_log(path: Path, records: list[dict]) -> None:
    """Every evaluation so far, one JSON object per line (rewritten whole, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)  # before a staged method's first checkpoint
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
