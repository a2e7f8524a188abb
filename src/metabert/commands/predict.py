"""``metabert predict --checkpoint DIR --input FILE|-``: early-exit predictions as JSON lines (label,
probabilities, exit layer), streamed, with the checkpoint's calibrated exit policy by default."""

from __future__ import annotations

import sys
from pathlib import Path

from metabert.data.tasks import DataError
from metabert.commands.common import add_inference_options, add_policy_options, resolve_policy
from metabert.model.multi_exit import MultiExitBert
from metabert.common.options import comma_list
from metabert.deploy.predict import predict_stream, read_rows
from metabert.deploy.runners import load_runner

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def add_parser(sub, name):
    p = sub.add_parser(name, help="predict a file with early exit", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="TSV, CSV (with a header) or JSONL file, or - for stdin")
    p.add_argument("--format", choices=["tsv", "csv", "jsonl"], help="default: from the extension (stdin: jsonl)")
    p.add_argument("--text-columns", type=comma_list, help="one or two columns/fields (default: the checkpoint's, else 'text')")
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
    if args.text_columns:
        columns = list(args.text_columns)
    else:
        stored = model.config.task.get("text_columns", [])
        columns = list(stored) if stored and all(isinstance(c, str) for c in stored) else ["text"]
    fmt = args.format or ("jsonl" if args.input == "-" else FORMATS.get(Path(args.input).suffix.lower()))
    if fmt is None:
        raise DataError(f"{args.input}: cannot tell the format from the extension; pass --format")
    if args.input != "-" and not Path(args.input).is_file():
        raise DataError(f"{args.input}: file not found")
    source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    sink = sys.stdout if args.output == "-" else open(args.output, "w")
    try:
        counts = predict_stream(model, read_rows(source, fmt, columns, args.input), sink, policy, args.batch_size,
                                args.max_seq_length, args.skip_bad, args.input, runner=runner)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if sink is not sys.stdout:
            sink.close()
    lines = counts["skipped_lines"]
    print(f"{counts['predicted']} rows predicted, {counts['skipped']} skipped"
          + (f" (lines {', '.join(map(str, lines[:20]))}{' ...' if len(lines) > 20 else ''})" if lines else "")
          + f"; {runner.name}, exit policy {policy.describe()} ({resolved.source})", file=sys.stderr)
    return 0
