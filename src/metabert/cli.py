"""``metabert`` command line: one module per subcommand under ``metabert.commands``."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from metabert.commands import (bench, calibrate, curves, download_glue, evaluate, export, fuzz_server, loadtest,
                               predict, report, reproduce, retrofit, serve, train, validate_calibration)
from metabert.data.tasks import DataError

COMMANDS = {"train": train, "retrofit": retrofit, "evaluate": evaluate, "calibrate": calibrate, "validate-calibration": validate_calibration,
            "export": export, "bench": bench, "curves": curves, "predict": predict, "serve": serve,
            "fuzz-server": fuzz_server, "loadtest": loadtest, "reproduce": reproduce, "report": report,
            "download-glue": download_glue}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metabert", description="Early-exit BERT classifiers (MetaBERT and peers).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["metabert", *argv])  # what a generated page says made it, re-runnable
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # transformers' own load reports and progress bars are noise here
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        return args.run(args) or 0
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"metabert {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
