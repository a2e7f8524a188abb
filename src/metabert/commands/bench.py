"""``metabert bench``: the full model against early exit for every runner (eager PyTorch and ONNX
Runtime, fp32 and INT8), batch-1 latency and batch-B throughput, dev score, artifact size and peak
memory, on the same dev inputs in one process (``metabert.bench.run.bench``; how time is measured:
``metabert.bench.timing``).
Each runner early-exits with its own γ: calibrated here (``--max-drop``/``--target-speedup``, on the
held-out slice, with that runner's logits) or the one stored for it in the checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


from metabert.bench import report as bench_report
from metabert.bench.run import BenchOptions, bench
from metabert.bench.timing import format_table
from metabert.commands.common import DATA_FIELDS, POLICY_FIELDS, add_data_options, add_policy_options, add_progress_option
from metabert.common.options import add_options, from_args
from metabert.recipes.pages import bench as pages


def add_parser(sub, name):
    p = sub.add_parser(name, help="measure speed: full vs early exit, every runner", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    add_data_options(p)
    add_policy_options(p)
    goal = p.add_mutually_exclusive_group()  # BenchOptions says so too; argparse says it before any work
    add_options(goal, BenchOptions, only=("target_speedup", "max_drop"))
    add_options(p, BenchOptions, exclude=(*DATA_FIELDS, *POLICY_FIELDS, "target_speedup", "max_drop", "no_guarantee"))
    p.add_argument("--no-guarantee", action="store_true",
                   help="--max-drop by the point estimate on the calibration data (no guarantee)")
    p.add_argument("--no-onnx", action="store_true", help="PyTorch runners only")
    p.add_argument("--output", help="JSON file for the results (a .png plot beside it)")
    p.add_argument("--markdown", help="also write the benchmarks page (docs/BENCHMARKS.md) from this run")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args) -> int:
    given = from_args(BenchOptions, args)
    runners = [r for r in given.pop("runners") if not (args.no_onnx and r.startswith("ort"))]
    plain = [r for r in given.pop("plain") if not (args.no_onnx and "ort" in r)]
    options = BenchOptions(**given, runners=tuple(runners), plain=tuple(plain))
    report = bench(args.checkpoint, options, progress=args.progress)
    report.json_name = Path(args.output).name if args.output else None
    source_line = "; ".join(f"{k}: {v}" for k, v in report.calibration.items())
    for name, note in report.plain_notes.items():
        print(f"{name}: {note}")
    print(f"{report.task} {report.split}, {report.num_examples} examples, {report.threads} threads, load average "
          f"{report.load_average_start:.2f} -> {report.load_average_end:.2f}; policies: {source_line}\n")
    print(format_table(report.variants, report.ratios, report.batch_size))
    print("\n| target | needed | measured | met |\n|---|---|---|---|")
    for t in report.targets:
        print(f"| {t['target']} | {t['needed']:.2f} | {t['measured']:.2f} | {'yes' if t['met'] else 'no'} |")
    plot_name = None
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=2))
        bench_report.plot(report.rows, out.with_suffix(".png"), f"{report.task} {report.split}: score against speed-up")
        plot_name = out.with_suffix(".png").name
        print(f"report: {out} (plot {plot_name})")
    if args.markdown:
        page = Path(args.markdown)
        if plot_name and Path(args.output).parent.resolve() != page.parent.resolve():
            shutil.copy(Path(args.output).with_suffix(".png"), page.parent / plot_name)
        page.write_text(pages.markdown(report.to_dict(), _command(args), plot_name))
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
