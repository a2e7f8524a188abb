"""``metabert train``: fine-tune a multi-exit classifier, keep the best checkpoint, and calibrate its
exit threshold on the slice held out from training (at most 1 point below the full model with
confidence 0.95, by default), so that ``metabert predict`` can use it straight away. ``--task custom``
finds the text and label columns by name when they are not given."""

from __future__ import annotations

import json

from metabert.eval.calibrate import calibrate_checkpoint, ways_out
from metabert.commands.common import add_training_options, config_fields
from metabert.common.options import add_options
from metabert.training.config import TrainConfig
from metabert.training.trainer import resume_config, train


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a multi-exit classifier", description=__doc__)
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


def run(args) -> int:
    if not args.no_calibrate and not 0 < args.calibrate_confidence < 1:
        raise ValueError(f"--calibrate-confidence must be between 0 and 1, got {args.calibrate_confidence}")
    if args.resume:
        config = resume_config(args.resume)
        summary = train(config, progress=args.progress, resume=True)
    else:
        if not args.task or not args.output:
            raise ValueError("--task and --output are required (or --resume DIR)")
        config = TrainConfig(**config_fields(args))
        summary = train(config, progress=args.progress)
    code = report(summary)
    if not args.no_calibrate and not summary.get("rank") and summary.get("best"):
        calibrated(calibrate_checkpoint(summary["output"], args.calibrate_max_drop, round(1 - args.calibrate_confidence, 12),
                                        config.data_dir, config.eval_batch_size, config.max_seq_length),
                   summary["output"])
    return code


def calibrated(record: dict | None, checkpoint: str) -> None:
    if record is None:
        print("not calibrated (no held-out slice): predict runs the full model until `metabert calibrate`")
        return
    promise = record["promise"]
    print(f"calibrated on {record['chosen_on']}: {record['name']} γ={record['threshold']:g} for {record['goal']}, "
          f"layer speed-up {record['calibration_layer_speedup']:.2f}x"
          + ("" if promise["certified"] else " (nothing certified: the full model)"))
    if not promise["certified"]:
        print(ways_out(promise, checkpoint))


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
