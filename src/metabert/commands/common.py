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
                        help="exit policy (default: the checkpoint's calibrated one, else entropy)")
    parser.add_argument("--threshold", type=float, help="threshold γ of the policy")
    parser.add_argument("--patience", type=int, help="t for the patience policies (default 2)")


def policy_name_and_patience(args, stored: dict) -> tuple[str, int]:
    """The policy the options name (else the stored one, else entropy) and its patience t."""
    name = args.policy or stored.get("name", "entropy")
    patience = args.patience or (stored.get("patience") if stored.get("name") == name else None) or 2
    return name, patience


def policy_from_args(args, stored: dict):
    """The policy the options name, or None when they name none (then the checkpoint's is used)."""
    from metabert.exits import get_policy

    if args.policy is None and args.threshold is None and args.patience is None:
        return None
    name, patience = policy_name_and_patience(args, stored)
    same = stored.get("name") == name
    threshold = args.threshold if args.threshold is not None else (stored.get("threshold") if same else None)
    policy = get_policy(name, threshold, patience)
    if threshold is None and policy.parameter == "threshold":
        raise ValueError(f"--policy {name} needs --threshold (the checkpoint holds no calibrated {name} threshold)")
    return policy
