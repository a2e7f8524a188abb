"""``metabert train``: fine-tune a multi-exit classifier, keep the best checkpoint, and calibrate its
exit threshold on the slice held out from training (at most 1 point below the full model with
confidence 0.95, by default), so that ``metabert predict`` can use it straight away. ``--task custom``
finds the text and label columns by name when they are not given."""

from __future__ import annotations

import json
import logging
from dataclasses import fields

from metabert.calibration import calibrate_checkpoint
from metabert.commands.common import add_data_options
from metabert.data import detect_columns
from metabert.options import add_options, from_args
from metabert.training import TrainConfig, resume_config, train

DATA_FIELDS = ("task", "data_dir", "dev_file", "max_seq_length")  # add_data_options' (shared with evaluate)
META_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name.startswith("meta_"))
META_TITLE = "--method meta (MetaBERT's Algorithm 1; see metabert.meta)"


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a multi-exit classifier", description=__doc__)
    add_data_options(p, task_required=False)
    add_training_options(p)
    add_options(p, TrainConfig, only=("method",))
    p.add_argument("--resume", metavar="DIR",
                   help="continue the interrupted run whose --output was DIR, with its options")
    g = p.add_argument_group("calibration after training (see `metabert calibrate`)")
    g.add_argument("--no-calibrate", action="store_true",
                   help="store no exit policy (predict then runs the full model until `metabert calibrate`)")
    g.add_argument("--calibrate-max-drop", type=float, default=1.0,
                   help="points below the full model allowed (default 1)")
    g.add_argument("--calibrate-confidence", type=float, default=0.95,
                   help="1-δ for that promise (default 0.95)")
    p.set_defaults(run=run)


def add_training_options(p) -> None:
    """Every option of a training run but the task and method (shared with ``reproduce``), from
    ``TrainConfig``'s fields."""
    if not any(a.dest == "data_dir" for a in p._actions):
        add_data_options(p, task_required=False)
    add_options(p, TrainConfig, exclude=("method", *DATA_FIELDS, *META_FIELDS))
    add_options(p, TrainConfig, only=META_FIELDS, title=META_TITLE)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if not args.no_calibrate and not 0 < args.calibrate_confidence < 1:
        raise ValueError(f"--calibrate-confidence must be between 0 and 1, got {args.calibrate_confidence}")
    if args.resume:
        config = resume_config(args.resume)
        summary = train(config, progress=not args.no_progress, resume=True)
    else:
        if not args.task or not args.output:
            raise ValueError("--task and --output are required (or --resume DIR)")
        config = TrainConfig(**config_fields(args))
        summary = train(config, progress=not args.no_progress)
    code = report(summary)
    if not args.no_calibrate and not summary.get("rank") and summary.get("best"):
        calibrated(calibrate_checkpoint(summary["output"], args.calibrate_max_drop, round(1 - args.calibrate_confidence, 12),
                                        config.data_dir, config.eval_batch_size, config.max_seq_length))
    return code


def config_fields(args) -> dict:
    """``TrainConfig``'s keyword arguments from the parsed options (``method`` joint when there is
    none); for ``--task custom``, the columns not given are found by name in the training file."""
    values = {"method": "joint", **from_args(TrainConfig, args)}
    if values.get("task") == "custom" and values.get("train_file") and not (
            values.get("text_columns") and values.get("label_column")):
        texts, label = detect_columns(values["train_file"], values.get("text_columns") or (),
                                      values.get("label_column"))
        logging.getLogger(__name__).info("columns of %s: text %s, label %s", values["train_file"], texts, label)
        values.update(text_columns=tuple(texts), label_column=label)
    return values


def calibrated(record: dict | None) -> None:
    if record is None:
        print("not calibrated (no held-out slice): predict runs the full model until `metabert calibrate`")
        return
    promise = record["promise"]
    print(f"calibrated on {record['chosen_on']}: {record['name']} γ={record['threshold']:g} for {record['goal']}, "
          f"layer speed-up {record['calibration_layer_speedup']:.2f}x"
          + ("" if promise["certified"] else " (too few examples to certify early exit: the full model)"))


def report(summary: dict) -> int:
    if summary.get("rank"):  # a worker process of a distributed run: the main one reports
        return 0
    best = summary["best"]
    print(f"best epoch {best['epoch']}: dev per exit "
          + " ".join(f"{e['score']:.2f}" for e in best["dev_per_exit"])
          + f"; {summary['train_examples']} training examples, {summary['seconds']:.0f}s")
    print(f"checkpoint: {summary['output']} (log: {summary['log']})")
    print(json.dumps({"output": summary["output"], "seconds": round(summary["seconds"], 1)}))
    return 0
