"""``metabert report DIR --output docs/RESULTS.md``: Markdown (and a PNG beside it) from a results
folder written by scripts/foundation_results.sh."""

from __future__ import annotations

import sys

from metabert.report import write


def add_parser(sub, name):
    p = sub.add_parser(name, help="write a Markdown results page from a results folder", description=__doc__)
    p.add_argument("directory", help="folder holding <task>/ checkpoints and <task>.sweep.json reports")
    p.add_argument("--output", default="docs/RESULTS.md")
    p.set_defaults(run=run)


def run(args) -> int:
    command = "metabert report " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["report"] else ""
    path = write(args.directory, args.output, command=command or f"metabert report {args.directory} --output {args.output}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
