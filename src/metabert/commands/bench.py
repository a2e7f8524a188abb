"""``metabert bench``: the full model against early exit for every runner (eager PyTorch and ONNX
Runtime, fp32 and INT8), batch-1 latency and batch-B throughput, dev score, artifact size and peak
memory, on the same dev inputs in one process (see ``metabert.bench.timing`` and ``metabert.bench.report``).
Each runner early-exits with its own γ: calibrated here (``--max-drop``/``--target-speedup``, on the
held-out slice, with that runner's logits) or the one stored for it in the checkpoint."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path

import torch

from metabert.bench import report as bench_report
from metabert.data import tasks as data_mod
from metabert.data import metrics as metrics
from metabert.data.batching import collate, encode, model_inputs
from metabert.bench.timing import INTERLEAVE, format_table, run_bench, speedups, time_tokenizer, variants
from metabert.eval.calibrate import calibration_set, evaluation_set, guaranteed_record, point_record
from metabert.commands.common import add_data_options, add_policy_options, add_progress_option, resolve_policy
from metabert.model.multi_exit import MultiExitBert
from metabert.common.machine import hardware, hardware_summary
from metabert.engine.policies import policy_from_dict
from metabert.common.options import comma_list
from metabert.engine.resolve import resolve_name
from metabert.deploy.runners import RUNNERS, all_exit_logits, export_for, load_runner, temporary_folder


def add_parser(sub, name):
    p = sub.add_parser(name, help="measure speed: full vs early exit, every runner", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    add_data_options(p)
    p.add_argument("--split", default="dev")
    add_policy_options(p)
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target-speedup", type=float, help="calibrate each runner (held-out data) for this layer speed-up")
    goal.add_argument("--max-drop", type=float, help="calibrate each runner (held-out data) for at most this score drop")
    p.add_argument("--calibration-data", help="file to calibrate on (default: the training slice held out)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="--max-drop holds on new data with this confidence, as `metabert calibrate` (default 0.95)")
    p.add_argument("--no-guarantee", action="store_true",
                   help="--max-drop by the point estimate on the calibration data (no guarantee)")
    p.add_argument("--runners", type=comma_list, default=list(RUNNERS), help=f"comma-separated, of {', '.join(RUNNERS)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--interleave", choices=INTERLEAVE, default="block",
                   help="batch 1: each variant runs 50 consecutive examples in turn, block after block (block, as "
                        "served) or each example is run by every variant in turn (example; evicts each other's "
                        "weights from the caches)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--max-examples", type=int, help="bench on the first N examples only")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of the throughput test")
    p.add_argument("--onnx", help="fp32 exported folder (default: export to a temporary folder)")
    p.add_argument("--onnx-int8", help="INT8 exported folder (default: quantize the fp32 export, dynamic)")
    p.add_argument("--no-onnx", action="store_true", help="PyTorch runners only")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for PyTorch and ORT")
    p.add_argument("--profile-examples", type=int, default=100, help="examples for the batch-1 profiles (0: none)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="peak memory of each runner (fresh processes)")
    p.add_argument("--output", help="JSON file for the results (a .png plot beside it)")
    p.add_argument("--markdown", help="also write the benchmarks page (docs/BENCHMARKS.md) from this run")
    add_progress_option(p)
    p.set_defaults(run=run)


def pick_policy(model: MultiExitBert, runner, args, held=None):
    """The policy ``runner`` early-exits with: calibrated on the held-out slice with its own logits,
    or the record stored for it (``metabert.engine.resolve.resolve``)."""
    name, patience, _ = resolve_name(args.policy, args.patience, model.config.exit_policy, runner.name)
    if args.target_speedup is not None or args.max_drop is not None:
        enc, what = held
        metric = data_mod.spec_from_dict(model.config.task).metric
        logits = all_exit_logits(runner, enc, model.tokenizer.pad_token_id)
        if args.max_drop is not None and not args.no_guarantee:  # what `metabert calibrate` stores
            record = guaranteed_record(logits, enc.labels, metric, name, patience, max_drop=args.max_drop,
                                       delta=round(1 - args.confidence, 12), chosen_on=what, runner=runner.name)
            goal = f"max drop {args.max_drop} with confidence {args.confidence:g}"
        else:
            record = point_record(logits, enc.labels, metric, name, patience, target_speedup=args.target_speedup,
                                  max_drop=args.max_drop, chosen_on=what)
            goal = (f"target speed-up {args.target_speedup}x" if args.target_speedup
                    else f"max drop {args.max_drop} (point estimate, no guarantee)")
        policy, promise = policy_from_dict(record), record.get("promise")
        note = (f"{policy.describe()}: calibration score {record['calibration_score']:.2f} (last exit "
                f"{record['calibration_last_exit_score']:.2f}), layer speed-up {record['calibration_layer_speedup']:.2f}x"
                + ("" if promise is None else ", " + (f"certified (p = {promise['p_value']:.3f})" if promise["certified"]
                                                      else "nothing certified: the full model")))
        return policy, f"calibrated per runner with its own logits for {goal} on {what}", note
    resolved = resolve_policy(args, model.config.exit_policy, runner=runner.name)
    return resolved.policy, resolved.source, resolved.source


def run(args) -> int:
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    model = MultiExitBert.from_pretrained(args.checkpoint).eval()
    task, spec, dataset = evaluation_set(model, args.task, args.split, args.data_dir, args.dev_file)
    if args.max_examples:
        dataset = data_mod.Dataset(dataset.examples[: args.max_examples], dataset.label_names, dataset.source)
    encoded = encode(dataset, model.tokenizer, args.max_seq_length)
    wanted = [r for r in args.runners if not (args.no_onnx and r.startswith("ort"))]
    unknown = [r for r in wanted if r not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown runner(s) {', '.join(unknown)}; choose from {', '.join(RUNNERS)}")
    folders = {}
    if "ort" in wanted or "ort-int8" in wanted:
        folders["ort"] = args.onnx or export_for(model, args.checkpoint, "ort")
    if "ort-int8" in wanted:
        if args.onnx_int8:
            folders["ort-int8"] = args.onnx_int8
        else:
            from metabert.deploy.quantize import quantize_export

            folders["ort-int8"] = quantize_export(folders["ort"], temporary_folder("metabert-onnx-int8-"))
    runners = [load_runner(name, model, folders.get(name), args.checkpoint, args.threads) for name in wanted]
    held = None
    if args.target_speedup is not None or args.max_drop is not None:
        data, what = calibration_set(model, args.data_dir, args.calibration_data)
        held = (encode(data, model.tokenizer, args.max_seq_length), what)
    policies, sources, calibration = {}, {}, {}
    for runner in runners:
        policies[runner.name], sources[runner.name], calibration[runner.name] = pick_policy(model, runner, args, held)
    per_exit = {}
    for runner in runners:
        logits = all_exit_logits(runner, encoded, model.tokenizer.pad_token_id)
        per_exit[runner.name] = [metrics.compute(spec.metric, logits[i].argmax(-1).tolist(), encoded.labels)["score"]
                                 for i in range(runner.num_layers)]
    results = run_bench(model, encoded, spec.metric, variants(runners, policies), args.repeats, args.warmup,
                        args.batch_size, progress=args.progress, interleave=args.interleave)
    profile = {}
    if args.profile_examples:
        singles = [model_inputs(collate(encoded, [i], model.tokenizer.pad_token_id)) for i in range(len(encoded))]
        for runner in runners:
            if runner.name.startswith("ort") and policies[runner.name].name in ("entropy", "norm-entropy", "max-prob"):
                profile[runner.name] = bench_report.profile_ort(runner, singles, policies[runner.name], args.profile_examples)
            elif runner.name.startswith("eager"):
                profile[runner.name] = bench_report.profile_eager(runner, singles, policies[runner.name],
                                                                  args.profile_examples)
    artifacts = {r.name: bench_report.artifact_bytes(r, args.checkpoint) for r in runners}
    memory, floor = {}, None
    if args.memory:
        texts = [e.text for e in dataset.examples]
        floor = bench_report.peak_rss_mb("none", args.checkpoint, None, texts, args.batch_size, args.threads)
        for r in runners:
            memory[r.name] = bench_report.peak_rss_mb(r.name, args.checkpoint, folders.get(r.name), texts,
                                                      args.batch_size, args.threads)
    ratios = speedups(results, args.batch_size) if "eager_early" in results else {}
    rows = bench_report.rows(results, args.batch_size, artifacts, memory)
    texts = [(e.text, e.text_pair) for e in dataset.examples]
    source_line = "; ".join(f"{k}: {calibration[k]}" for k in policies)
    one_source = sources[runners[0].name] if len(set(sources.values())) == 1 else "; ".join(f"{k}: {v}" for k, v in sources.items())
    report = {
        "task": task, "split": args.split, "checkpoint": Path(args.checkpoint).name, "num_examples": len(dataset),
        "date": dt.date.today().isoformat(), "policy_source": one_source, "calibration": calibration,
        "rows": rows, "targets": bench_report.targets(results, args.batch_size, artifacts),
        **ratios, "variants": results, "per_exit": per_exit, "profile": profile, "rss_floor_mb": floor,
        "tokenization": time_tokenizer(model.tokenizer, texts, args.max_seq_length, args.batch_size),
        "batch_size": args.batch_size, "repeats": args.repeats, "interleave": args.interleave, "warmup": args.warmup, "threads": args.threads,
        "hardware": hardware(), "hardware_summary": hardware_summary(),
        "python": platform.python_version(), "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
        "json_name": Path(args.output).name if args.output else None,
    }
    print(f"{task} {args.split}, {len(dataset)} examples, {args.threads} threads, load average "
          f"{load_start:.2f} -> {report['load_average_end']:.2f}; policies: {source_line}\n")
    print(format_table(results, ratios, args.batch_size))
    print("\n| target | needed | measured | met |\n|---|---|---|---|")
    for t in report["targets"]:
        print(f"| {t['target']} | {t['needed']:.2f} | {t['measured']:.2f} | {'yes' if t['met'] else 'no'} |")
    plot_name = None
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        bench_report.plot(rows, out.with_suffix(".png"), f"{task} {args.split}: score against speed-up")
        plot_name = out.with_suffix(".png").name
        print(f"report: {out} (plot {plot_name})")
    if args.markdown:
        page = Path(args.markdown)
        command = _command(args)
        if plot_name and Path(args.output).parent.resolve() != page.parent.resolve():
            import shutil

            shutil.copy(Path(args.output).with_suffix(".png"), page.parent / plot_name)
        page.write_text(bench_report.markdown(report, command, plot_name))
        print(f"page: {page}")
    return 0


def _command(args) -> str:
    """The command line as docs show it: files by name, never a machine's path."""
    parts = ["metabert bench", f"--checkpoint {Path(args.checkpoint).name}"]
    for flag, value in (("--task", args.task), ("--split", args.split if args.split != "dev" else None),
                        ("--max-drop", args.max_drop), ("--target-speedup", args.target_speedup),
                        ("--confidence", args.confidence if args.max_drop is not None and not args.no_guarantee
                         and args.confidence != 0.95 else None),
                        ("--runners", ",".join(args.runners)), ("--repeats", args.repeats),
                        ("--interleave", args.interleave if args.interleave != "block" else None), ("--warmup", args.warmup),
                        ("--threads", args.threads), ("--max-examples", args.max_examples),
                        ("--output", args.output and f"results/bench/{Path(args.output).name}"),
                        ("--markdown", args.markdown and f"docs/{Path(args.markdown).name}")):
        if value is not None:
            parts.append(f"{flag} {value}")
    if args.no_guarantee:
        parts.append("--no-guarantee")
    return " ".join(parts)
