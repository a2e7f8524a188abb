"""``metabert train``: fine-tune a multi-exit classifier and keep the best checkpoint."""

from __future__ import annotations

import json

from metabert.commands.common import add_training_options, config_fields
from metabert.options import add_options
from metabert.training import TrainConfig, resume_config, train


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a multi-exit classifier", description=__doc__)
    add_training_options(p)
    add_options(p, TrainConfig, only=("method",))
    p.add_argument("--resume", metavar="DIR",
                   help="continue the interrupted run whose --output was DIR, with its options")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.resume:
        config = resume_config(args.resume)
        summary = train(config, progress=args.progress, resume=True)
        return report(summary)
    if not args.task or not args.output:
        raise ValueError("--task and --output are required (or --resume DIR)")
    config = TrainConfig(**config_fields(args))
    return report(train(config, progress=args.progress))


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
