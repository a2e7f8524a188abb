"""Where ONNX Runtime's batched early exit spends its time, over SST-2 dev in file order.

Times, in one process, over all batches: the full graph; embeddings and the six layer steps
(every row to the end); the engine's early exit; the layer steps alone at the sizes the early exit
ran them (the work early exit cannot avoid); and the engine's early exit with torch held at 2
threads, which is what ``engine.host_threads`` avoids (torch's OpenMP workers spinning beside
ORT's pool).

Usage: GLUE_DIR=... python benchmarks/ort_batch_profile.py ONNX_FOLDER GAMMA [BATCH] (2 threads;
median of 3 runs of each). Run it on an otherwise idle machine."""

import os
import sys
import time

import numpy as np
import torch

from metabert.engine import loop as engine
from metabert.data.batching import collate, encode, model_inputs
from metabert.data.tasks import load_glue
from metabert.engine.policies import get_policy
from metabert.deploy.ort_runner import OrtMultiExit


def main(folder: str, gamma: float, batch_size: int = 32) -> None:
    torch.set_num_threads(2)
    runner = OrtMultiExit(folder, threads=2)
    data = encode(load_glue("sst2", "dev", os.environ.get("GLUE_DIR")), runner.tokenizer, 128)
    n, pad = len(data.input_ids), runner.tokenizer.pad_token_id
    batches = [model_inputs(collate(data, list(range(s, min(s + batch_size, n))), pad)) for s in range(0, n, batch_size)]
    policy = get_policy("entropy", gamma)
    exits = [engine.run(runner, b, policy).exit_layer.numpy() for b in batches]

    def full():
        for b in batches:
            runner.full(b)

    def every_step():
        for b in batches:
            state = runner.start(b)
            for i in range(runner.num_layers):
                state, _ = runner.step(i, state)

    def early():
        for b in batches:
            engine.run(runner, b, policy)

    def survivor_steps():
        for b, layers in zip(batches, exits):
            state, alive = runner.start(b), np.ones(len(layers), bool)
            for i in range(runner.num_layers):
                now = layers > i
                if not now.any():
                    break
                state = runner.select(state, torch.from_numpy(now[alive]))
                alive = now
                state, _ = runner.step(i, state)

    def early_torch_2_threads():
        wanted, runner.host_threads = runner.host_threads, None
        try:
            early()
        finally:
            runner.host_threads = wanted

    timings = {}
    for name, fn in [("full graph", full), ("embeddings + every layer step", every_step), ("engine early exit", early),
                     ("layer steps at the early exit's sizes", survivor_steps),
                     ("engine early exit, torch at 2 threads", early_torch_2_threads)]:
        fn()
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        timings[name] = float(np.median(runs)) * 1e3
    layers = np.concatenate(exits)
    print(f"SST-2 dev, {n} examples, batch {batch_size}, γ={gamma}: layer speed-up {runner.num_layers / layers.mean():.2f}x")
    for name, ms in timings.items():
        print(f"{name:40s} {ms:8.1f} ms  ({timings['full graph'] / ms:.2f}x of the full graph's speed)")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))
