"""``metabert calibrate``: choose the exit threshold (or patience) for a target speed-up or a maximum
score drop, on data held out from training, and store it in the checkpoint."""

from __future__ import annotations

import json

from metabert import data as data_mod
from metabert.batching import encode
from metabert.calibration import calibration_set, choose
from metabert.commands.common import add_inference_options, add_runner_options
from metabert.exits import POLICIES, policy_to_dict
from metabert.modeling import MultiExitBert
from metabert.policy import resolve_name, store_record
from metabert.runners import all_exit_logits, load_runner


def add_parser(sub, name):
    p = sub.add_parser(name, help="choose and store the exit threshold", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", help="the checkpoint's task (checked against the one it was trained on)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-speedup", type=float, help="required layer speed-up S (L / mean exit layer)")
    goal.add_argument("--max-drop", type=float, help="largest allowed score drop, in points, against the last exit")
    p.add_argument("--policy", choices=sorted(POLICIES), help="exit policy (default: the stored one, else entropy)")
    p.add_argument("--patience", type=int, help="t for patience-entropy (patience itself is tuned; default 2)")
    p.add_argument("--calibration-data", help="file to calibrate on (default: the slice held out at training)")
    p.add_argument("--data-dir", help="GLUE folder, if it moved since training")
    add_inference_options(p)
    add_runner_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the choice without storing it")
    p.set_defaults(run=run)


def run(args) -> int:
    model = MultiExitBert.from_pretrained(args.checkpoint)
    stored_task = model.config.task.get("name")
    if args.task and stored_task and args.task != stored_task:
        raise ValueError(f"the checkpoint was trained on {stored_task}, not {args.task}")
    dataset, what = calibration_set(model, args.data_dir, args.calibration_data)
    encoded = encode(dataset, model.tokenizer, args.max_seq_length)
    runner = load_runner(args.runner, model, args.onnx, args.checkpoint)
    logits = all_exit_logits(runner, encoded, model.tokenizer.pad_token_id, args.batch_size)  # this runner's own
    metric = data_mod.spec_from_dict(model.config.task).metric
    name, patience, _ = resolve_name(args.policy, args.patience, model.config.exit_policy, runner.name)
    choice = choose(logits, encoded.labels, metric, name, patience,
                    target_speedup=args.target_speedup, max_drop=args.max_drop)
    policy, result = choice["policy"], choice["result"]
    goal = (f"target layer speed-up {args.target_speedup}x" if args.target_speedup is not None
            else f"at most {args.max_drop} points below the last exit")
    record = {
        **policy_to_dict(policy),
        "runner": runner.name,
        "chosen_on": what,
        "goal": goal,
        "calibration_score": result.score,
        "calibration_last_exit_score": choice["full_score"],
        "calibration_layer_speedup": result.layer_speedup,
    }
    print(f"{policy.describe()} chosen for {goal} on {what}, with {runner.name} logits:")
    print(f"  calibration {metric} {result.score:.2f} (last exit {choice['full_score']:.2f}), "
          f"layer speed-up {result.layer_speedup:.2f}x, exits per layer {list(result.exit_counts)}")
    if args.dry_run:
        print(json.dumps(record, indent=2))
        return 0
    model.with_config(exit_policy=store_record(model.config.exit_policy, runner.name, record))
    model.save_config(args.checkpoint)
    print(f"stored in {args.checkpoint} for {runner.name}: predict, serve and bench with that runner now use it by default")
    return 0
