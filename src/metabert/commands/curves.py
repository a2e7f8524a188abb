"""``metabert curves``: score against layer speed-up and against measured speed-up, several exit
policies on one figure, and each policy's score at equal layer speed-ups."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from metabert.data import tasks as data_mod
from metabert.data.batching import encode
from metabert.commands.common import add_data_options, add_progress_option
from metabert.eval.calibrate import evaluation_set
from metabert.bench.curves import at_speedup, measured_speedups, plot_curves, policy_curves
from metabert.eval.evaluate import all_exit_logits, candidate_policies
from metabert.engine.policies import POLICIES
from metabert.model.multi_exit import MultiExitBert
from metabert.common.options import comma_list


def add_parser(sub, name):
    p = sub.add_parser(name, help="compare exit policies: score vs layer and measured speed-up", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    add_data_options(p)
    p.add_argument("--split", default="dev")
    p.add_argument("--policies", type=comma_list, default=",".join(POLICIES), help="comma-separated policies (default: all)")
    p.add_argument("--patience", type=int, default=2, help="t for patience-entropy")
    p.add_argument("--speedups", default="1.5,2,2.5,3", help="layer speed-ups at which to compare policies")
    p.add_argument("--measure-points", type=int, default=5, help="settings per policy to time (0: none)")
    p.add_argument("--measure-examples", type=int, default=200, help="examples to time them on")
    p.add_argument("--output", required=True, help="JSON file; the PNG is written beside it")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args) -> int:
    model = MultiExitBert.from_pretrained(args.checkpoint).eval()
    task, spec, dataset = evaluation_set(model, args.task, args.split, args.data_dir, args.dev_file)
    names = list(args.policies)
    for n in names:
        if n not in POLICIES:
            raise ValueError(f"unknown exit policy {n!r}; choose from {', '.join(POLICIES)}")
    encoded = encode(dataset, model.tokenizer, args.max_seq_length)
    logits = all_exit_logits(model, encoded)
    curves = policy_curves(model, logits, encoded.labels, spec.metric, names, args.patience)
    targets = [float(s) for s in args.speedups.split(",")]
    table = {n: {f"{t:g}x": at_speedup(rows, t) for t in targets} for n, rows in curves.items()}
    measured = {}
    if args.measure_points:
        subset = data_mod.Dataset(dataset.examples[: args.measure_examples], dataset.label_names, dataset.source)
        sub_enc = encode(subset, model.tokenizer, args.max_seq_length)
        for n in names:
            cands = candidate_policies(logits, n, args.patience)
            picks = sorted({round(i * (len(cands) - 1) / max(args.measure_points - 1, 1))
                            for i in range(args.measure_points)})
            chosen = [cands[i] for i in picks]
            rows = [curves[n][i] for i in picks]
            measured[n] = {"settings": [c.describe() for c in chosen], "score": [r.score for r in rows],
                           "layer_speedup": [r.layer_speedup for r in rows],
                           "speedup": measured_speedups(model, sub_enc, chosen, progress=args.progress)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"task": task, "split": args.split, "metric": spec.metric, "torch_threads": torch.get_num_threads(),
              "measured_on_examples": args.measure_examples,
              "curves": {n: [r.to_dict() for r in rows] for n, rows in curves.items()}, "score_at_layer_speedup": table,
              "measured": measured}
    out.write_text(json.dumps(report, indent=2))
    plot_curves(curves, measured, spec.metric, out.with_suffix(".png"), title=f"{task} {args.split}")
    print(f"{spec.metric} at equal layer speed-up ({task} {args.split}, interpolated between settings):\n")
    print("| policy | " + " | ".join(f"{t:g}x" for t in targets) + " |")
    print("|---|" + "---|" * len(targets))
    for n, row in table.items():
        print(f"| {n} | " + " | ".join("n/a" if v is None else f"{v:.2f}" for v in row.values()) + " |")
    for n, m in measured.items():
        print(f"\n{n}: measured b1 speed-up " + ", ".join(f"{s:.2f}x (layers {l:.2f}x)" for s, l in
                                                          zip(m["speedup"], m["layer_speedup"])))
    print(f"\nreport: {out}, plot: {out.with_suffix('.png')}")
    return 0
