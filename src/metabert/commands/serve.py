"""``metabert serve --checkpoint DIR``: an HTTP endpoint with early exit and micro-batching.

POST /predict {"texts": [...]} or {"pairs": [[a, b], ...]}, optional "threshold"; GET /healthz;
GET /metrics (Prometheus); GET /docs and /openapi.json."""

from __future__ import annotations

from metabert.commands.common import add_policy_options, add_runner_options


def add_parser(sub, name):
    p = sub.add_parser(name, help="serve a checkpoint over HTTP", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    add_policy_options(p)
    add_runner_options(p)
    p.add_argument("--max-items", type=int, default=64, help="items per request")
    p.add_argument("--max-batch", type=int, default=32, help="items per model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a micro-batch waits to fill")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--threads", type=int, help="PyTorch (and ONNX Runtime) threads")
    p.set_defaults(run=run)


def run(args) -> int:
    from metabert.server import ServerConfig, serve

    config = ServerConfig(max_items=args.max_items, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                          max_seq_length=args.max_seq_length)
    serve(args.checkpoint, args.host, args.port, args.policy, args.threshold, args.patience, config, args.threads,
          runner=args.runner, onnx=args.onnx)
    return 0
