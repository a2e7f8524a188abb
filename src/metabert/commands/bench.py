"""``metabert bench``: the full model against early exit, in eager PyTorch and ONNX Runtime, batch-1
latency and batch-32 throughput, on the same dev inputs in one process (see ``metabert.bench``)."""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path

import torch

from metabert import data as data_mod
from metabert.batching import encode
from metabert.bench import format_table, run_bench, speedups, time_tokenizer, variants
from metabert.calibration import calibration_set, choose
from metabert.commands.common import add_data_options, add_policy_options, add_progress_option, resolve_policy
from metabert.calibration import evaluation_set
from metabert.evaluation import all_exit_logits
from metabert.modeling import MultiExitBert
from metabert.machine import hardware


def add_parser(sub, name):
    p = sub.add_parser(name, help="measure speed: full vs early exit, eager vs ONNX Runtime", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    add_data_options(p)
    p.add_argument("--split", default="dev")
    add_policy_options(p)
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target-speedup", type=float, help="calibrate (on held-out data) for this layer speed-up")
    goal.add_argument("--max-drop", type=float, help="calibrate (on held-out data) for at most this score drop")
    p.add_argument("--calibration-data", help="file to calibrate on (default: the training slice held out)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--max-examples", type=int, help="bench on the first N examples only")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of the throughput test")
    p.add_argument("--onnx", help="exported folder (default: export to a temporary folder)")
    p.add_argument("--no-onnx", action="store_true", help="eager PyTorch only")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for PyTorch and ORT")
    p.add_argument("--output", help="JSON file for the results")
    add_progress_option(p)
    p.set_defaults(run=run)


def pick_policy(model: MultiExitBert, args):
    from metabert.policy import resolve_name

    name, patience, _ = resolve_name(args.policy, args.patience, model.config.exit_policy)
    if args.target_speedup is not None or args.max_drop is not None:
        held, what = calibration_set(model, args.data_dir, args.calibration_data)
        enc = encode(held, model.tokenizer, args.max_seq_length)
        metric = data_mod.spec_from_dict(model.config.task).metric
        choice = choose(all_exit_logits(model, enc), enc.labels, metric, name, patience,
                        target_speedup=args.target_speedup, max_drop=args.max_drop)
        goal = f"target speed-up {args.target_speedup}x" if args.target_speedup else f"max drop {args.max_drop}"
        return choice["policy"], f"calibrated for {goal} on {what}"
    resolved = resolve_policy(args, model.config.exit_policy)
    return resolved.policy, resolved.source


def run(args) -> int:
    torch.set_num_threads(args.threads)
    model = MultiExitBert.from_pretrained(args.checkpoint).eval()
    task, spec, dataset = evaluation_set(model, args.task, args.split, args.data_dir, args.dev_file)
    if args.max_examples:
        dataset = data_mod.Dataset(dataset.examples[: args.max_examples], dataset.label_names, dataset.source)
    policy, source = pick_policy(model, args)
    encoded = encode(dataset, model.tokenizer, args.max_seq_length)
    from metabert.modeling import EagerRunner

    runners = [EagerRunner(model)]
    if not args.no_onnx:
        from metabert.onnx_runtime import OrtMultiExit, check_export, export

        folder = args.onnx or export(model, args.checkpoint, tempfile.mkdtemp(prefix="metabert-onnx-"))
        runtime = OrtMultiExit(folder, threads=args.threads)
        diff = check_export(model, runtime)
        if diff > 1e-4:
            raise ValueError(f"{folder}: ONNX graphs differ from the checkpoint by {diff:.2e}; export again")
        runners.append(runtime)
    results = run_bench(model, encoded, spec.metric, variants(runners, policy), args.repeats, args.warmup, args.batch_size,
                        progress=args.progress)
    ratios = speedups(results, args.batch_size)
    texts = [(e.text, e.text_pair) for e in dataset.examples]
    report = {
        "task": task, "split": args.split, "checkpoint": args.checkpoint, "num_examples": len(dataset),
        "policy": policy.describe(), "policy_source": source, **ratios, "variants": results,
        "tokenization": time_tokenizer(model.tokenizer, texts, args.max_seq_length, args.batch_size),
        "batch_size": args.batch_size, "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads, "hardware": hardware(),
        "python": platform.python_version(),
    }
    print(f"{task} {args.split}, {len(dataset)} examples, policy {policy.describe()} ({source})\n")
    print(format_table(results, ratios, args.batch_size))
    tok = report["tokenization"]
    print(f"\ntokenisation (not included above): {tok['tokenize_b1_ms']:.3f} ms per example at batch 1")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"report: {args.output}")
    return 0
