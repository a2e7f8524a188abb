"""``metabert report DIR --output docs/RESULTS.md``: Markdown (and a PNG beside it) from a results
folder written by benchmarks/foundation_results.sh."""

from __future__ import annotations

from metabert.recipes.report import write


def add_parser(sub, name):
    p = sub.add_parser(name, help="write a Markdown results page from a results folder", description=__doc__)
    p.add_argument("directory", nargs="?", help="folder holding <task>/ checkpoints and <task>.sweep.json reports")
    p.add_argument("--bench", nargs="+", help="instead: `metabert bench`/`curves` JSON files -> a benchmarks page")
    p.add_argument("--output", default="docs/RESULTS.md")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.bench:
        from pathlib import Path

        from metabert.recipes.report import render_bench

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(render_bench(args.bench, "metabert report --bench " + " ".join(args.bench)
                                                  + f" --output {args.output}"))
        print(f"wrote {args.output}")
        return 0
    if not args.directory:
        raise ValueError("give a results folder, or --bench FILE.json ...")
    path = write(args.directory, args.output, command=args.command_line)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
