"""``metabert serve --checkpoint DIR``: an HTTP endpoint with early exit and micro-batching.

POST /predict {"texts": [...]} or {"pairs": [[a, b], ...]}, optional "threshold"; GET /healthz;
GET /metrics (Prometheus); GET /docs and /openapi.json. Binds 127.0.0.1 unless --host says otherwise;
any other host needs --api-key-file (or --allow-unauthenticated). See docs/SERVING.md."""

from __future__ import annotations

import argparse

from metabert.commands.common import add_policy_options, add_runner_options


def add_parser(sub, name):
    # defaults are ServerConfig's (named in the help; importing the server here would slow every command)
    p = sub.add_parser(name, help="serve a checkpoint over HTTP", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    add_policy_options(p)
    add_runner_options(p)
    p.add_argument("--max-items", type=int, help="items per request (default 64)")
    p.add_argument("--max-batch", type=int, help="items per model call (default 32)")
    p.add_argument("--max-wait-ms", type=float, help="how long a micro-batch waits to fill (default 5)")
    p.add_argument("--max-seq-length", type=int, help="tokens per item, longer ones truncated (default 128)")
    p.add_argument("--max-queue", type=int,
                   help="items waiting for the model; a request that does not fit gets 503 with Retry-After "
                        "(default 256)")
    p.add_argument("--request-timeout", type=float, help="seconds from arrival to answer; later: 504 (default 30)")
    p.add_argument("--max-body-bytes", type=int,
                   help="larger request bodies get 413 before they are parsed (default 8388608)")
    p.add_argument("--api-key-file", help="file holding one key; requests then need 'Authorization: Bearer KEY'")
    p.add_argument("--protect-probes", action="store_true",
                   help="/healthz and /metrics need the key too (default: they stay open for probes and scrapers)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="bind a non-loopback --host without --api-key-file (access controlled in front of it)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes, each with its own model")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to finish accepted requests before exiting (default 30)")
    p.add_argument("--threads", type=int, help="PyTorch (and ONNX Runtime) threads, per worker")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from metabert.deploy.server.config import ServerConfig
    from metabert.deploy.server.process import serve

    given = {"max_items": args.max_items, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
             "max_seq_length": args.max_seq_length, "max_queue": args.max_queue,
             "request_timeout_s": args.request_timeout, "max_body_bytes": args.max_body_bytes}
    config = ServerConfig(**{k: v for k, v in given.items() if v is not None}, protect_probes=args.protect_probes)
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    serve(args.checkpoint, args.host, args.port, args.policy, args.threshold, args.patience, config, args.threads,
          api_key_file=args.api_key_file, allow_unauthenticated=args.allow_unauthenticated, workers=args.workers,
          drain_timeout_s=args.drain_timeout, runner=args.runner, onnx=args.onnx)
    return 0
