"""``metabert validate-calibration``: check the promise of ``calibrate --max-drop D`` on a real
checkpoint by resampling calibration/test splits of its held-out slice plus dev (the violation rate
must be at most δ up to sampling error), against the point estimate; ``--summarise`` turns the JSON
results into a Markdown page and a plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metabert.eval import validate as calibration_check
from metabert.recipes.pages import calibration as pages
from metabert.data.batching import encode
from metabert.eval.calibrate import calibration_set, evaluation_set
from metabert.commands.common import add_inference_options
from metabert.data.tasks import DataError, spec_from_dict
from metabert.eval.evaluate import all_exit_logits
from metabert.engine.policies import POLICIES
from metabert.model.multi_exit import MultiExitBert
from metabert.engine.resolve import resolve_name


def numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(sub, name):
    p = sub.add_parser(name, help="check a calibration's promise on resampled splits", description=__doc__)
    p.add_argument("--checkpoint", help="checkpoint with a held-out calibration slice")
    p.add_argument("--max-drop", type=numbers, default=[1.0, 2.0], help="budgets D in points (default 1,2)")
    p.add_argument("--confidence", type=float, default=0.95, help="1-δ (default 0.95)")
    p.add_argument("--splits", type=int, default=200, help="resampled calibration/test splits (default 200)")
    p.add_argument("--calibration-size", type=float,
                   help="examples per calibration split, or a fraction of the pool if below 1 "
                        "(default: the size of the held-out slice)")
    p.add_argument("--policy", choices=sorted(POLICIES), help="exit policy (default: the stored one, else entropy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="GLUE folder, if it moved since training")
    p.add_argument("--dev-file", help="--task custom checkpoints: the dev file")
    p.add_argument("--logits-cache", help="all-exit logits of the pool are kept in (and reused from) this file")
    p.add_argument("--output", help="JSON results file")
    p.add_argument("--summarise", nargs="+", metavar="JSON", help="write --markdown and --plot from these results")
    p.add_argument("--markdown", help="--summarise: the Markdown page to write")
    p.add_argument("--plot", help="--summarise: the PNG to write (linked from the page by file name)")
    add_inference_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    if args.summarise:
        return summarise(args)
    if not args.checkpoint:
        raise ValueError("give --checkpoint (or --summarise JSON...)")
    if args.splits < 100:
        raise ValueError(f"--splits {args.splits}: at least 100 are needed to read a violation rate near δ")
    model = MultiExitBert.from_pretrained(args.checkpoint)
    logits, labels, held = pool_logits(model, args)
    metric = spec_from_dict(model.config.task).metric
    name, patience, _ = resolve_name(args.policy, None, model.config.exit_policy)
    delta = round(1 - args.confidence, 12)
    size = args.calibration_size or held
    size = int(round(size * len(labels))) if size < 1 else int(size)
    report = calibration_check.validate(logits, labels, metric, args.max_drop, size,
                                        args.splits, delta, name, patience, args.seed)
    deploy = [calibration_check.deployment(logits[:, :held], labels[:held], logits[:, held:], labels[held:], metric,
                                           d, delta, name, patience) for d in args.max_drop]
    record = calibration_check.run_record(model.config.task["name"], args.checkpoint, args.command_line, report, deploy)
    for b in record["budgets"]:
        g, p = b["guaranteed"], b["point_estimate"]
        print(f"{record['task']} D={b['max_drop']:g}: violation rate guaranteed {g['violation_rate']:.3f} "
              f"(95% CI {g['ci95'][0]:.3f}-{g['ci95'][1]:.3f}), point estimate {p['violation_rate']:.3f}; "
              f"speed-up {g['mean_speedup']:.2f}x against {p['mean_speedup']:.2f}x")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {args.output}")
    return 0


def pool_logits(model, args) -> tuple[torch.Tensor, list[int], int]:
    """All-exit logits and labels of the held-out slice followed by dev, and the slice's size;
    from ``--logits-cache`` when it holds the same examples."""
    held, _ = calibration_set(model, args.data_dir)
    _, _, dev = evaluation_set(model, None, "dev", args.data_dir, args.dev_file)
    labels = [e.label for e in held.examples] + [e.label for e in dev.examples]
    cache = Path(args.logits_cache) if args.logits_cache else None
    if cache and cache.is_file():
        stored = torch.load(cache)
        if stored["labels"] == labels and stored["held"] == len(held):
            return stored["logits"], labels, len(held)
    parts = [all_exit_logits(model, encode(d, model.tokenizer, args.max_seq_length), args.batch_size, args.progress)
             for d in (held, dev)]
    logits = torch.cat(parts, dim=1)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"logits": logits, "labels": labels, "held": len(held)}, cache)
    return logits, labels, len(held)


def summarise(args) -> int:
    if not (args.markdown and args.plot):
        raise ValueError("--summarise needs --markdown and --plot")
    records = []
    for name in args.summarise:
        try:
            records.append(json.loads(Path(name).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{name}: cannot read validation results ({err})") from None
    order = {"sst2": 0, "mrpc": 1, "rte": 2}
    records.sort(key=lambda r: (order.get(r["task"], 9), r["task"], r["calibration_size"]))
    pages.plot(records, args.plot)
    page = pages.markdown(records, Path(args.plot).name, args.command_line)
    Path(args.markdown).write_text(page)
    print(f"wrote {args.markdown} and {args.plot}")
    return 0
