"""``metabert loadtest --url http://127.0.0.1:8000``: N concurrent clients for a bounded time against a
running server (loopback only); reports throughput, p50/p99 latency and errors. Several --url values
are driven one after another in the same run, for comparison."""

from __future__ import annotations

import json
from pathlib import Path

from metabert.data import tasks as data_mod

SAMPLE = ["a gorgeous , witty , seductive movie", "it 's slow -- very , very slow", "good fun",
          "the acting , costumes , music , cinematography and sound are all astounding", "bad",
          "unflinchingly bleak and desperate", "a charming and often affecting journey"]


def add_parser(sub, name):
    p = sub.add_parser(name, help="load-test a running server", description=__doc__)
    p.add_argument("--url", action="append", required=True, help="server base URL (repeatable)")
    p.add_argument("--label", action="append", help="a name for each --url, in order")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per URL")
    p.add_argument("--items", type=int, default=1, help="texts per request")
    p.add_argument("--task", default="sst2", help="GLUE task whose dev texts to send (default sst2)")
    p.add_argument("--data-dir")
    p.add_argument("--output", help="JSON file for the results")
    p.set_defaults(run=run)


def run(args) -> int:
    from metabert.deploy.server.loadtest import run_load

    try:
        texts = [e.text for e in data_mod.load_glue(args.task, "dev", args.data_dir).examples]
        source = f"{args.task} dev"
    except data_mod.DataError:
        texts, source = SAMPLE, "built-in sample sentences"
    labels = args.label or [f"server {i + 1}" for i in range(len(args.url))]
    results = []
    for url, label in zip(args.url, labels):
        r = run_load(url, texts, args.clients, args.duration, args.items)
        r["label"] = label
        results.append(r)
        print(f"{label} ({url}): {r['requests']} requests in {r['duration_s']:.1f}s, "
              f"{r['throughput_requests_per_s']:.1f} req/s, p50 {r['latency_ms_p50']:.1f} ms, "
              f"p99 {r['latency_ms_p99']:.1f} ms, errors {r['errors'] or 0}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"texts": source, "results": results}, indent=2))
    return 1 if any(r["server_errors_5xx"] for r in results) else 0
