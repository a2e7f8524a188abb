"""Training: the options of a run (``TrainConfig``) and ``train``, which runs them with the ``Trainer``
(``metabert.training.trainer``: the loop and its callbacks). How exit losses are combined is the ``method``'s
job (``metabert.training.methods.core``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from metabert.data import tasks as data_mod
from metabert.training.methods.compression import DistilConfig, LayerDropConfig, PKDConfig, StudentConfig, TheseusConfig
from metabert.training.methods.exit_peers import GamlConfig
from metabert.training.methods.meta import MetaConfig
from metabert.training.methods.core import METHODS, get_method
from metabert.model.multi_exit import HEAD_INITS, HEADS, POOLINGS
from metabert.common.options import flatten, option, section, unflatten
from metabert.training.trainer import RESUME_FREE, Callback, Trainer, read_log, state_file, state_path, write_log

__all__ = ["TrainConfig", "train", "resume_config", "read_log", "write_log", "state_file", "state_path",
           "RESUME_FREE", "task_spec", "load_split"]

SELECT_BY = ("last", "mean")
META_TITLE = "--method meta (MetaBERT's Algorithm 1; see metabert.training.methods.meta)"


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``metabert train``: each is a command-line flag of the same name, documented here
    once (``metabert.common.options`` turns the fields into the command's options)."""

    task: str = option(help="GLUE task, or 'custom' for your own file", choices=data_mod.TASK_NAMES)
    output: str = option(help="output folder")
    model: str = option("minilm-l6", help="minilm-l6 (default), tiny, a local folder or a hub name")
    method: str = option("joint", help="training method", choices=sorted(METHODS))
    data_dir: str | None = option(None, help="GLUE folder in the original layout (default: $GLUE_DIR)")
    train_file: str | None = option(None, help="--task custom: training file (TSV, CSV or JSONL)")
    dev_file: str | None = option(None, help="--task custom: evaluation file (TSV, CSV or JSONL)")
    text_columns: tuple[str, ...] = option((), help="--task custom: one or two comma-separated text columns")
    label_column: str | None = option(None, help="--task custom: label column")
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = option(5e-5, flags=("--learning-rate", "--lr"))
    weight_decay: float = 0.01
    warmup: float = option(0.1, help="fraction of steps for linear warm-up")
    max_seq_length: int = option(128, help="tokens per example (longer ones truncated)")
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
    early_stopping: int = option(0, help="stop after N epochs without a better dev score (0: never)")
    meta: MetaConfig = section(MetaConfig, "meta_", META_TITLE)
    # MetaBERT's Table I systems (metabert.training.methods.peers; their readings in docs/METHODS_TABLE1.md)
    teacher: str | None = option(None, help="--method distilbert, pkd or theseus: the fine-tuned full-depth "
                                            "checkpoint (e.g. of --method last, same seed) the student learns from")
    student: StudentConfig = section(StudentConfig, "student_", "the static systems' student (distilbert, pkd, theseus)")
    distil: DistilConfig = section(DistilConfig, "distil_", "--method distilbert (Sanh et al. 2019)")
    pkd: PKDConfig = section(PKDConfig, "pkd_", "--method pkd (BERT-PKD, PKD-Skip; Sun et al. 2019)")
    theseus: TheseusConfig = section(TheseusConfig, "theseus_", "--method theseus (BERT-of-Theseus; Xu et al. 2020)")
    layerdrop: LayerDropConfig = section(LayerDropConfig, "layerdrop_", "--method layerdrop (Fan et al. 2019)")
    gaml: GamlConfig = section(GamlConfig, "gaml_", "--method gaml (GAML-BERT; Zhu et al. 2021)")

    def to_dict(self) -> dict:
        """The flat JSON form stored in ``train_config.json``, training states and result files (the
        meta options as ``meta_*`` keys)."""
        return json.loads(json.dumps(flatten(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from ``to_dict``'s form (a stored file); an unknown key is an error naming it."""
        kwargs = unflatten(cls, data)
        if "text_columns" in kwargs:
            kwargs["text_columns"] = tuple(kwargs["text_columns"] or ())
        return cls(**kwargs)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` (keys as in ``to_dict``)."""
        return self.from_dict({**self.to_dict(), **changes})

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
            "early_stopping": self.early_stopping >= 0,
            "head_init": self.head_init in HEAD_INITS,
            "bucket_pool": self.bucket_pool >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")
        if self.method not in METHODS:
            raise ValueError(f"invalid method {self.method!r}; choose one of: {', '.join(METHODS)}")
        get_method(self.method, self.epochs, self.meta, config=self)  # a method may refuse the epoch count
        if self.num_layers and getattr(METHODS[self.method], "static", False) and self.method != "last":
            raise ValueError(f"--method {self.method} sets its own depth (--student-layers, --layerdrop-prune); "
                             "leave --num-layers out")
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
