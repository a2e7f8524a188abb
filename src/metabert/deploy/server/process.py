"""Running the server: one process (draining accepted requests on SIGTERM) or several uvicorn workers,
each building its own app from the options ``serve`` hands over."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict

import torch
from fastapi import FastAPI

from metabert.deploy.runners import load_runner
from metabert.deploy.server.app import create_app
from metabert.deploy.server.batcher import Batcher
from metabert.deploy.server.config import ServerConfig, is_loopback, read_api_key
from metabert.model.multi_exit import MultiExitBert

log = logging.getLogger(__name__)

OPTIONS_ENV = "METABERT_SERVE_OPTIONS"  # how `serve(workers=N)` hands its options to each worker


def _build(options: dict) -> FastAPI:
    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    model = MultiExitBert.from_pretrained(options["checkpoint"])
    key = read_api_key(options["api_key_file"]) if options.get("api_key_file") else None
    runner = load_runner(options.get("runner"), model, options.get("onnx"), options["checkpoint"], options.get("threads"))
    return create_app(model, ServerConfig(**options["config"]), options.get("policy_name"),
                      options.get("threshold"), options.get("patience"), api_key=key, runner=runner)


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers (``uvicorn --factory metabert.deploy.server.process:app_from_env``), reading
    the options ``serve`` wrote to ``$METABERT_SERVE_OPTIONS`` (JSON)."""
    return _build(json.loads(os.environ[OPTIONS_ENV]))


def serve(checkpoint: str, host: str, port: int, policy_name: str | None = None, threshold: float | None = None,
          patience: int | None = None, config: ServerConfig | None = None, threads: int | None = None,
          api_key_file: str | None = None, allow_unauthenticated: bool = False, workers: int = 1,
          drain_timeout_s: float = 30.0, runner: str | None = None, onnx: str | None = None) -> None:
    """Run the server until SIGTERM/SIGINT. A host other than loopback needs ``api_key_file`` unless
    ``allow_unauthenticated`` says the network in front of it is trusted."""
    import uvicorn

    if not is_loopback(host) and not api_key_file and not allow_unauthenticated:
        raise ValueError(f"--host {host} is reachable from other machines: give --api-key-file, or "
                         "--allow-unauthenticated if a proxy or firewall in front of it controls access")
    options = {"checkpoint": checkpoint, "policy_name": policy_name, "threshold": threshold, "patience": patience,
               "config": asdict(config or ServerConfig()), "threads": threads, "api_key_file": api_key_file,
               "runner": runner, "onnx": onnx}
    if api_key_file:
        read_api_key(api_key_file)  # a bad key file fails here, not in every worker
    settings = dict(host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain_timeout_s)
    if workers > 1:
        os.environ[OPTIONS_ENV] = json.dumps(options)
        uvicorn.run("metabert.deploy.server.process:app_from_env", factory=True, workers=workers, **settings)
        return
    app = _build(options)
    batcher: Batcher = app.state.batcher

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, whose exit signal also tells the batcher to answer what it holds now."""

        def handle_exit(self, sig, frame):
            if not self.should_exit and batcher.task is not None:
                log.warning("signal %d: draining %d in-flight requests (%d items queued)", sig,
                            batcher.in_flight, batcher.queue.qsize())
                batcher.task.get_loop().call_soon_threadsafe(batcher.drain)
            super().handle_exit(sig, frame)

    DrainingServer(uvicorn.Config(app, **settings)).run()
