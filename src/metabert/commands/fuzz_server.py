"""``metabert fuzz-server [--cases 10000]``: property-based fuzzing of the HTTP server, in-process.

Schemathesis generates requests from the server's own OpenAPI schema (following it and breaking it)
and checks every response against the schema; hypothesis adds requests no schema describes (any
method, path, content type, bytes). Fails (exit 1) on any 5xx or non-conforming response. The
server is built around a random tiny model, or around --checkpoint. See metabert.deploy.server.fuzzing."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from metabert.commands.common import add_progress_option


def add_parser(sub, name):
    p = sub.add_parser(name, help="fuzz the HTTP server from its OpenAPI schema", description=__doc__)
    p.add_argument("--cases", type=int, default=10_000, help="requests to generate (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="serve this checkpoint (default: a random 3-layer model, fast)")
    p.add_argument("--max-items", type=int, default=8, help="the server's --max-items (small: more limits reached)")
    p.add_argument("--max-chars", type=int, default=500, help="the server's characters per text (small: faster)")
    p.add_argument("--output", help="JSON file for the report")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from metabert.deploy.server.fuzzing import fuzz_app, tiny_app
    except ImportError as err:  # pragma: no cover - schemathesis is in the `test` extra
        raise ValueError(f"fuzz-server needs schemathesis: pip install 'metabert[test]' ({err})") from None
    if args.cases < 1:
        raise ValueError(f"--cases must be at least 1, got {args.cases}")

    def make_app():
        if not args.checkpoint:
            return tiny_app(args.seed, max_items=args.max_items, max_chars=args.max_chars)
        from metabert.model.multi_exit import MultiExitBert
        from metabert.deploy.server.app import create_app
        from metabert.deploy.server.config import ServerConfig

        return create_app(MultiExitBert.from_pretrained(args.checkpoint),
                          ServerConfig(max_items=args.max_items, max_chars=args.max_chars))

    start = time.perf_counter()
    report = fuzz_app(make_app, args.cases, args.seed, progress=args.progress).to_dict()
    report.update(seconds=round(time.perf_counter() - start, 1), command=args.command_line,
                  model=args.checkpoint or "random tiny (3 layers, hidden 32)")
    print(f"{report['cases']} cases in {report['seconds']} s ({report['cases_by_source']}); "
          f"statuses {report['statuses']}; failed cases {report['failed_cases']}, "
          f"distinct failures {report['distinct_failures']}")
    for failure in report["failures"]:
        print("FAIL", failure)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
    return 1 if report["failed_cases"] else 0
