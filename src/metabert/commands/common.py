"""Options shared by several subcommands."""

from __future__ import annotations

import argparse

from metabert.data import TASK_NAMES


def add_data_options(parser: argparse.ArgumentParser, task_required: bool = True) -> None:
    parser.add_argument("--task", required=task_required, choices=TASK_NAMES,
                        help="GLUE task, or 'custom' for your own file")
    parser.add_argument("--data-dir", help="GLUE folder in the original layout (default: $GLUE_DIR)")
    parser.add_argument("--dev-file", help="--task custom: evaluation file (TSV, CSV or JSONL)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens per example (longer ones truncated)")


def float_list(text: str) -> list[float] | str:
    """Comma-separated numbers, or ``auto`` (thresholds spread over the exits' own entropies)."""
    if text.strip() == "auto":
        return "auto"
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values
