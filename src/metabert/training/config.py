"""The options of a training run, ``TrainConfig``: every option of ``metabert train`` documented once,
in its field. Plain Python (no torch, no model): ``metabert.training.trainer`` runs a config, and
the training methods' own options are sections of it (``metabert.training.methods.options``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from metabert.common.options import flatten, option, section, unflatten
from metabert.data import DEFAULT_MAX_LENGTH
from metabert.data import tasks as data_mod
from metabert.model import HEAD_INITS, HEADS, POOLINGS
from metabert.training.methods import ENTRIES, check_options
from metabert.training.methods.options import (DistilConfig, GamlConfig, LayerDropConfig, MetaConfig, PKDConfig,
                                               StudentConfig, TheseusConfig)

SELECT_BY = ("last", "mean")
META_TITLE = "--method meta (MetaBERT's Algorithm 1; see metabert.training.methods.meta)"


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``metabert train``: each is a command-line flag of the same name, documented here
    once (``metabert.common.options`` turns the fields into the command's options)."""

    task: str = option(help="GLUE task, or 'custom' for your own file", choices=data_mod.TASK_NAMES)
    output: str = option(help="output folder")
    model: str = option("minilm-l6", help="minilm-l6 (default), tiny, a local folder or a hub name")
    method: str = option("joint", help="training method", choices=sorted(ENTRIES))
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
    max_seq_length: int = option(DEFAULT_MAX_LENGTH, help="tokens per example (longer ones truncated)")
    max_train_samples: int | None = option(None, help="train on a seeded random subset of this size")
    calibration_fraction: float | None = option(
        None, help="seeded slice of the training file held out for threshold calibration (default: 5%%, but at "
                   f"least {data_mod.MIN_CALIBRATION_ROWS} rows, up to {100 * data_mod.MAX_CALIBRATION_SHARE:.0f}%% of the file)")
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
            "calibration_fraction": self.calibration_fraction is None or 0 <= self.calibration_fraction < 0.5,
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
        if self.method not in ENTRIES:
            raise ValueError(f"invalid method {self.method!r}; choose one of: {', '.join(ENTRIES)}")
        check_options(self.method, self.epochs, self.meta, self.num_layers)
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"invalid num_layers: {self.num_layers}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"invalid pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"invalid select_by {self.select_by!r}; choose one of: {', '.join(SELECT_BY)}")
        if self.task == "custom" and not (self.train_file and self.dev_file and self.text_columns and self.label_column):
            raise ValueError("--task custom needs --train-file, --dev-file, --text-columns and --label-column")

