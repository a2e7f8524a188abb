"""``metabert calibrate``: choose the exit threshold (or patience) for a target speed-up, a maximum
score drop or an agreement with the full model, on data held out from training, and store it in the
checkpoint. ``--max-drop`` and ``--consistency`` hold with confidence 1-δ on new data from the same
distribution (``metabert.eval.risk``); ``--no-guarantee`` takes the point estimate on the slice instead."""

from __future__ import annotations

import json

from metabert.data import tasks as data_mod
from metabert.data.batching import encode
from metabert.eval.calibrate import (calibrate_checkpoint, calibration_set, guaranteed_record, point_record,
                                    unlabelled_set, ways_out)
from metabert.commands.common import add_inference_options
from metabert.engine.policies import POLICIES, policy_from_dict
from metabert.model.multi_exit import MultiExitBert
from metabert.engine.resolve import resolve_name, store_record
from metabert.deploy.runners import load_runner
from metabert.engine.dataset import runner_logits as all_exit_logits


def add_parser(sub, name):
    p = sub.add_parser(name, help="choose and store the exit threshold", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", help="the checkpoint's task (checked against the one it was trained on)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-speedup", type=float, help="required layer speed-up S (L / mean exit layer)")
    goal.add_argument("--max-drop", type=float, help="largest allowed score drop, in points, against the last exit")
    goal.add_argument("--consistency", type=float,
                      help="least agreement with the full model's predictions, e.g. 0.99 (no labels needed)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="1-δ: the promise of --max-drop/--consistency holds with this probability (default 0.95)")
    p.add_argument("--no-guarantee", action="store_true",
                   help="--max-drop: the fastest setting within the budget on the calibration data (a point "
                        "estimate that new data breaks about half the time)")
    p.add_argument("--texts", help="--consistency: unlabelled texts (.txt one per line, or TSV/CSV/JSONL with the "
                                   "checkpoint's text columns); default: the held-out slice, labels unused")
    p.add_argument("--policy", choices=sorted(POLICIES), help="exit policy (default: the stored one, else entropy)")
    p.add_argument("--patience", type=int, help="t for patience-entropy (patience itself is tuned; default 2)")
    p.add_argument("--calibration-data", help="file to calibrate on (default: the slice held out at training)")
    p.add_argument("--data-dir", help="GLUE folder, if it moved since training")
    add_inference_options(p, runner=True)
    p.add_argument("--dry-run", action="store_true", help="print the choice without storing it")
    p.set_defaults(run=run)


def run(args) -> int:
    model = MultiExitBert.from_pretrained(args.checkpoint)
    stored_task = model.config.task.get("name")
    if args.task and stored_task and args.task != stored_task:
        raise ValueError(f"the checkpoint was trained on {stored_task}, not {args.task}")
    check_goal(args)
    if model.config.calibration.get("kind") == "texts" and not (args.texts or args.calibration_data):
        # a retrofitted checkpoint: its held-out texts, agreement with the fp32 model for every runner
        if args.consistency is None or args.no_guarantee:
            raise ValueError("this checkpoint holds out unlabelled texts (metabert retrofit): calibrate with "
                             "--consistency C (agreement with the original fp32 model), or give --calibration-data")
        record = calibrate_checkpoint(args.checkpoint, delta=round(1 - args.confidence, 12), batch_size=args.batch_size,
                                      max_length=args.max_seq_length, runner=args.runner, onnx=args.onnx,
                                      consistency=args.consistency, store=not args.dry_run, model=model)
        print(summary(record, "accuracy", args.checkpoint))
        if not args.dry_run:
            print(f"stored in {args.checkpoint} for {record['runner']}")
        return 0
    if args.texts:
        encoded, what = unlabelled_set(model, args.texts, args.max_seq_length)
    else:
        dataset, what = calibration_set(model, args.data_dir, args.calibration_data)
        encoded = encode(dataset, model.tokenizer, args.max_seq_length)
    runner = load_runner(args.runner, model, args.onnx, args.checkpoint)
    logits = all_exit_logits(runner, encoded, model.tokenizer.pad_token_id, args.batch_size)  # this runner's own
    metric = data_mod.spec_from_dict(model.config.task).metric
    name, patience, _ = resolve_name(args.policy, args.patience, model.config.exit_policy, runner.name)
    if args.target_speedup is not None or args.no_guarantee:
        record = point_record(logits, encoded.labels, metric, name, patience, target_speedup=args.target_speedup,
                              max_drop=args.max_drop, chosen_on=what)
        record["runner"] = runner.name
    else:
        labels = None if args.consistency is not None else encoded.labels
        record = guaranteed_record(logits, labels, metric, name, patience, max_drop=args.max_drop,
                                   consistency=args.consistency, delta=round(1 - args.confidence, 12), chosen_on=what,
                                   runner=runner.name)
    print(summary(record, metric, args.checkpoint) + f"\n  (with {runner.name} logits)")
    if args.dry_run:
        print(json.dumps(record, indent=2))
        return 0
    model.with_config(exit_policy=store_record(model.config.exit_policy, runner.name, record))
    model.save_config(args.checkpoint)
    print(f"stored in {args.checkpoint} for {runner.name}: predict, serve and bench with that runner now use it by default")
    return 0


def check_goal(args) -> None:
    if not 0 < args.confidence < 1:
        raise ValueError(f"--confidence must be between 0 and 1 (it is 1-δ), got {args.confidence}")
    if args.no_guarantee and args.max_drop is None:
        raise ValueError("--no-guarantee goes with --max-drop (--target-speedup has no guarantee to drop)")
    if args.texts and args.consistency is None:
        raise ValueError("--texts holds no labels: it goes with --consistency")
    if args.texts and args.calibration_data:
        raise ValueError("give --texts or --calibration-data, not both")


def summary(record: dict, metric: str, checkpoint: str | None = None) -> str:
    policy = policy_from_dict(record)
    lines = [f"{policy.describe()} chosen for {record['goal']} on {record['chosen_on']}:"]
    if "calibration_score" in record:
        lines.append(f"  calibration {metric} {record['calibration_score']:.2f} (last exit "
                     f"{record['calibration_last_exit_score']:.2f}), layer speed-up {record['calibration_layer_speedup']:.2f}x")
    else:
        lines.append(f"  layer speed-up {record['calibration_layer_speedup']:.2f}x on the calibration data")
    promise = record.get("promise")
    if promise:
        lines.append(f"  bounded: {promise['bounded']} (p-value {promise['p_value']:.3g}, rate on the calibration "
                     f"data {promise['calibration_loss_rate']:.4f}, {promise['calibration_size']} examples)")
        if not promise["certified"]:
            lines.append(ways_out(promise, checkpoint))
        if not promise["decomposable"]:
            lines.append(f"  {metric} does not decompose over examples: the per-example rate above is what is "
                         "bounded, not the metric's drop")
    return "\n".join(lines)
