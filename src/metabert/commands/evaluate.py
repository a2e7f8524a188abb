"""``metabert evaluate``: the score of every exit and entropy early exit at one or many thresholds."""

from __future__ import annotations

import json
from pathlib import Path

from metabert.data.batching import encode
from metabert.commands.common import (
    add_data_options, add_inference_options, add_policy_options, float_list, resolve_policy,
)
from metabert.engine.policies import policy_from_dict
from metabert.engine.resolve import record_for
from metabert.eval.evaluate import all_exit_logits, evaluate, format_report, simulate, sweep_policies, write_sweep_csv
from metabert.eval.plots import plot_report
from metabert.eval.calibrate import data_name, evaluation_set
from metabert.model.multi_exit import MultiExitBert
from metabert.eval import risk as risk
from metabert.eval.reports import EarlyExitReport


def add_parser(sub, name):
    p = sub.add_parser(name, help="score every exit and early exit", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="folder written by `metabert train`")
    add_data_options(p)
    p.add_argument("--split", default="dev", help="GLUE split to evaluate (default dev)")
    add_policy_options(p)
    p.add_argument("--thresholds", type=float_list, help="comma-separated thresholds to sweep, or auto (spread over the entropies seen)")
    p.add_argument("--output", help="write the report as JSON here (a sweep also writes .csv and .png beside it)")
    p.add_argument("--plot", help="PNG path for the plot (default: beside --output, or <task>_sweep.png)")
    add_inference_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    if args.threshold is not None and args.thresholds:
        raise ValueError("give --threshold (one timed run) or --thresholds (a sweep), not both")
    model = MultiExitBert.from_pretrained(args.checkpoint)
    task, spec, dataset = evaluation_set(model, args.task, args.split, args.data_dir, args.dev_file)
    encoded = encode(dataset, model.tokenizer, args.max_seq_length)
    policy, sweep, logits, resolved = None, None, None, None
    if args.thresholds:
        from metabert.engine.resolve import resolve_name

        name, patience, _ = resolve_name(args.policy, args.patience, model.config.exit_policy)
        logits = all_exit_logits(model, encoded, args.batch_size, args.progress)
        sweep = sweep_policies(logits, args.thresholds, name, patience)
    else:
        resolved = resolve_policy(args, model.config.exit_policy, warn=False)
        policy = None if resolved.default else resolved.policy  # uncalibrated: the per-exit scores say it all
        as_stored = args.policy is None and args.threshold is None and args.patience is None
        if policy is not None and as_stored and model.config.exit_policy.get("promise"):
            logits = all_exit_logits(model, encoded, args.batch_size, args.progress)  # for the promise check
    report = evaluate(model, encoded, spec.metric, policy=policy, sweep=sweep, batch_size=args.batch_size,
                      progress=args.progress, logits=logits)
    context = {"policy_source": resolved.source} if policy is not None else {}
    if logits is not None and policy is not None:
        context["promise"] = promise_check(model.config.exit_policy["promise"], report, logits, encoded.labels, policy)
    report = report.with_context(task=task, split=args.split, data=data_name(dataset.source, task),
                                 checkpoint=args.checkpoint, **context)
    print(format_report(report))
    if "promise" in report.context:
        print(format_promise(report.context["promise"]))
    stem = Path(args.output).with_suffix("") if args.output else Path(f"{task}_sweep")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"report: {args.output}")
    if args.thresholds:
        write_sweep_csv(report, stem.with_suffix(".csv"))
        plot = Path(args.plot) if args.plot else stem.with_suffix(".png")
        marked, label = calibrated_run(model, logits, encoded.labels, spec.metric, sweep[0].name)
        plot_report(report, plot, title=f"{task} {args.split}, {report.num_examples} examples: checkpoint "
                                        f"{args.checkpoint}", marked=marked, marked_label=label)
        print(f"sweep: {stem.with_suffix('.csv')}, plot: {plot}"
              + (f" (the calibrated threshold marked: {label}, {marked.layer_speedup:.2f}x, {marked.score:.2f})"
                 if marked else ""))
    return 0


def calibrated_run(model, logits, labels, metric: str, policy: str):
    """The checkpoint's calibrated policy (eager) run on this data set, and a label saying what it
    promised; (None, "") when it has none for ``policy``."""
    record = record_for(model.config.exit_policy, "eager", warn=False)[0]
    if not record or record.get("name") != policy:
        return None, ""
    chosen = policy_from_dict(record)
    goal = record.get("goal", "")
    return simulate(logits, labels, metric, chosen), f"calibrated: {chosen.describe()}" + (f", {goal}" if goal else "")


def promise_check(promise: dict, report: EarlyExitReport, logits, labels, policy) -> dict:
    """What calibration promised beside what this data set measures."""
    measured = risk.measured(logits, policy, labels)
    measured["drop"] = report.per_exit[-1]["score"] - report.timed.score
    return {"promised": promise, "measured": measured}


def format_promise(check: dict) -> str:
    promised, measured = check["promised"], check["measured"]
    if promised["kind"] == "max_drop":
        goal = f"{promised['metric']} drop ≤ {promised['max_drop']:g} points"
        found = (f"drop {measured['drop']:.2f} points, early exit wrong where the full model is right on "
                 f"{100 * measured['wrong_where_full_right']:.2f}% of examples")
    else:
        goal = f"agreement with the full model ≥ {100 * promised['consistency']:g}%"
        found = f"agreement {100 * measured['agreement']:.2f}%"
    note = "" if promised.get("decomposable", True) else " (the per-example rate is bounded, not the metric)"
    return (f"promised at calibration: {goal} with confidence {promised['confidence']:g} "
            f"({promised['calibration_size']} calibration examples, runner {promised['runner']}){note}\n"
            f"measured here: {found}")
