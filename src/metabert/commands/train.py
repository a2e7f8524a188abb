"""``metabert train``: fine-tune a multi-exit classifier and keep the best checkpoint."""

from __future__ import annotations

import json
from dataclasses import fields

from metabert.commands.common import add_data_options
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
    if args.resume:
        config = resume_config(args.resume)
        summary = train(config, progress=not args.no_progress, resume=True)
        return report(summary)
    if not args.task or not args.output:
        raise ValueError("--task and --output are required (or --resume DIR)")
    config = TrainConfig(**config_fields(args))
    return report(train(config, progress=not args.no_progress))


def config_fields(args) -> dict:
    """``TrainConfig``'s keyword arguments from the parsed options (``method`` joint when there is none)."""
    return {"method": "joint", **from_args(TrainConfig, args)}


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
