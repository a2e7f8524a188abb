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


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    from metabert.exits import POLICIES

    parser.add_argument("--policy", choices=sorted(POLICIES),
                        help="exit policy (default: the checkpoint's calibrated one; uncalibrated: the full model)")
    parser.add_argument("--threshold", type=float, help="threshold γ of the policy")
    parser.add_argument("--patience", type=int, help="t for the patience policies (default 2)")


def resolve_policy(args, stored: dict | None, runner: str | None = None, warn: bool = True):
    """``metabert.policy.resolve`` with the options of ``add_policy_options``."""
    from metabert.policy import resolve

    return resolve(name=args.policy, threshold=args.threshold, patience=args.patience, stored=stored,
                   runner=runner, warn=warn)
