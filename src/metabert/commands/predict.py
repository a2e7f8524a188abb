"""``metabert predict --checkpoint DIR --input FILE|-``: early-exit predictions as JSON lines (label,
probabilities, exit layer), streamed, with the checkpoint's calibrated exit policy by default."""

from __future__ import annotations

import sys
from pathlib import Path

from metabert.data.files import DataError
from metabert.data.tasks import spec_from_dict, texts_of
from metabert.commands.common import add_inference_options, add_policy_options, resolve_policy
from metabert.model.multi_exit import MultiExitBert
from metabert.common.options import comma_list
from metabert.deploy.predict import predict_stream
from metabert.deploy.runners import load_runner

def add_parser(sub, name):
    p = sub.add_parser(name, help="predict a file with early exit", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="TSV, CSV or JSONL file, a .txt file of one text per line, or - "
                                                   "for stdin")
    p.add_argument("--format", choices=["tsv", "csv", "jsonl", "txt"], help="default: from the extension (stdin: jsonl)")
    p.add_argument("--text-columns", type=comma_list,
                   help="one or two columns/fields (default: the ones the checkpoint was trained on, found by name "
                        "in the file's header, else text/sentence/sentence1+sentence2)")
    p.add_argument("--output", default="-", help="JSONL output file (default: stdout)")
    add_policy_options(p)
    add_inference_options(p, runner=True)
    p.add_argument("--skip-bad", action="store_true", help="report bad rows on stderr and go on")
    p.set_defaults(run=run)


def run(args) -> int:
    model = MultiExitBert.from_pretrained(args.checkpoint)
    runner = load_runner(args.runner, model, args.onnx, args.checkpoint)
    resolved = resolve_policy(args, model.config.exit_policy, runner=runner.name)
    policy = resolved.policy
    spec = spec_from_dict(model.config.task) if model.config.task else None
    stdin = args.input == "-"
    if not stdin and not Path(args.input).is_file():
        raise DataError(f"{args.input}: file not found")
    rows = texts_of(sys.stdin.buffer if stdin else args.input, spec, args.format or ("jsonl" if stdin else None),
                    args.text_columns or (), name=args.input, on_error="report")
    sink = sys.stdout if args.output == "-" else open(args.output, "w")
    try:
        counts = predict_stream(model, rows, sink, policy, args.batch_size, args.max_seq_length, args.skip_bad,
                                args.input, runner=runner, progress=args.progress and args.output != "-")
    finally:
        if sink is not sys.stdout:
            sink.close()
    lines = counts["skipped_lines"]
    print(f"{counts['predicted']} rows predicted, {counts['skipped']} skipped"
          + (f" (lines {', '.join(map(str, lines[:20]))}{' ...' if len(lines) > 20 else ''})" if lines else "")
          + f"; {runner.name}, exit policy {policy.describe()} ({resolved.source})", file=sys.stderr)
    return 0
