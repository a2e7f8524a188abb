"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import logging

from metabert.data.tasks import detect_columns
from metabert.common.options import add_options, from_args
from metabert.training.config import TrainConfig

log = logging.getLogger(__name__)

DATA_FIELDS = ("task", "data_dir", "dev_file", "max_seq_length")  # the data options every command shares


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--task``, ``--data-dir``, ``--dev-file`` and ``--max-seq-length``, from ``TrainConfig``'s fields."""
    add_options(parser, TrainConfig, only=DATA_FIELDS)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Every option of a training run but the method (``train`` and ``reproduce``), from
    ``TrainConfig``'s fields (the meta options in their own group), and ``--progress``."""
    if not any(a.dest == "data_dir" for a in parser._actions):
        add_data_options(parser)
    add_options(parser, TrainConfig, exclude=("method", *DATA_FIELDS))
    add_progress_option(parser)


def config_fields(args: argparse.Namespace) -> dict:
    """``TrainConfig``'s keyword arguments from the parsed options (``method`` joint when there is
    none); for ``--task custom``, the columns not given are found by name in the training file."""
    values = {"method": "joint", **from_args(TrainConfig, args)}
    if values.get("task") == "custom" and values.get("train_file") and not (
            values.get("text_columns") and values.get("label_column")):
        texts, label = detect_columns(values["train_file"], values.get("text_columns") or (),
                                      values.get("label_column"))
        log.info("columns of %s: text %s, label %s", values["train_file"], texts, label)
        values.update(text_columns=tuple(texts), label_column=label)
    return values


INFERENCE_BATCH_SIZE = 64  # examples per model call for evaluation, calibration and prediction


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` (on by default; bars go to stderr)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars on stderr")


def add_inference_options(parser: argparse.ArgumentParser, runner: bool = False) -> None:
    """Batch size and sequence length of inference work, with one default each; with ``runner``,
    the backend too (``add_runner_options``)."""
    if not any(a.dest == "max_seq_length" for a in parser._actions):
        add_options(parser, TrainConfig, only=("max_seq_length",))
    parser.add_argument("--batch-size", type=int, default=INFERENCE_BATCH_SIZE,
                        help=f"examples per model call (default {INFERENCE_BATCH_SIZE})")
    add_progress_option(parser)
    if runner:
        add_runner_options(parser)


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


POLICY_FIELDS = ("policy", "threshold", "patience")  # the options add_policy_options adds


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    from metabert.engine.policies import POLICIES

    parser.add_argument("--policy", choices=sorted(POLICIES),
                        help="exit policy (default: the checkpoint's calibrated one; uncalibrated: the full model)")
    parser.add_argument("--threshold", type=float, help="threshold γ of the policy")
    parser.add_argument("--patience", type=int, help="t for the patience policies (default 2)")


def resolve_policy(args, stored: dict | None, warn: bool = True, runner: str = "eager"):
    """``metabert.engine.resolve.resolve`` with the options of ``add_policy_options``, for ``runner``'s
    calibrated record."""
    from metabert.engine.resolve import resolve

    return resolve(name=args.policy, threshold=args.threshold, patience=args.patience, stored=stored, warn=warn,
                   runner=runner)


def add_runner_options(parser: argparse.ArgumentParser) -> None:
    """``--runner`` and ``--onnx`` (see ``metabert.deploy.runners.load_runner``)."""
    from metabert.deploy.runners import RUNNERS

    parser.add_argument("--runner", choices=RUNNERS,
                        help="backend and precision (default: as the --onnx folder is, else eager)")
    parser.add_argument("--onnx", help="exported folder for the ort runners (`metabert export`; default: "
                                       "export to a temporary folder)")
