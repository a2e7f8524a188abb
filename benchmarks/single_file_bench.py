"""Speed of the single early-exit file (``early_exit.onnx``, metabert.deploy.single_file) beside
today's ONNX Runtime paths, in one process, on SST-2 dev.

* batch 1: the file (with its batch-1 path, the default) and the file without it
  (``--no-batch-one-path``: batches of one row through the row bookkeeping), against the fused
  batch-1 graph (``OrtMultiExit.early_exit_one``, what ``engine.run`` takes at batch 1) and the
  full graph. An example's latency is the median of its
  rounds, a variant's the mean over examples (as metabert.bench.timing).
* batch B (32): the file against the per-layer runner (``engine.run`` over ``OrtMultiExit``) and
  the full graph, over batches in file order (mixed lengths, as served); a variant's time is the
  median of its rounds' totals. The *layer speed-up* is L / mean exit layer (what the exits
  promise); a path's measured speed-up is full time / its time, and "kept" is measured / layer.

Variants take turns in blocks (``--block`` examples or batches each) and the order rotates between
rounds, so that all see the same moments of a shared machine. Every path reads the same ONNX
Runtime thread pool (``--threads``). The policy is the file's stored one (the runner's calibrated
γ), and the engine runs the same.

Usage: GLUE_DIR=... python benchmarks/single_file_bench.py EXPORT_FOLDER [--examples 300]
[--rounds 5] [--batch 32] [--threads 2] [--output results.json]
(EXPORT_FOLDER: from ``metabert export ... --single-file``, fp32 or INT8).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from metabert.engine import loop as engine
from metabert.data.batching import collate, encode, model_inputs
from metabert.data.tasks import load_glue
from metabert.deploy.single_file import FILE_NAME, read_metadata, write
from metabert.engine.policies import get_policy
from metabert.deploy.ort_runner import OrtMultiExit


def cpu() -> str:
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    found = [f for f in ("avx2", "avx512_vnni", "amx_int8") if f" {f}" in flags]
    return f"{name}, {os.cpu_count()} logical CPUs, {' '.join(found)}"


def interleaved(variants: dict, items: list, rounds: int, block: int) -> dict[str, list[list[float]]]:
    """{variant: [round][item] seconds}: in each round the variants run ``block`` items in turn,
    block after block, their order rotating from round to round."""
    names = list(variants)
    times = {n: [[0.0] * len(items) for _ in range(rounds)] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for start in range(0, len(items), block):
            for name in order:
                run = variants[name]
                for k in range(start, min(start + block, len(items))):
                    t0 = time.perf_counter()
                    run(items[k])
                    times[name][r][k] = time.perf_counter() - t0
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--examples", type=int, default=300, help="dev examples timed at batch 1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--output")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    folder = Path(args.folder)
    runner = OrtMultiExit(folder, threads=args.threads)  # sets up the shared ORT pool the file uses too
    props = read_metadata(folder / FILE_NAME)  # the policy: the file's
    policy = get_policy(props["policy"], float(props["threshold"]), int(props["patience"]))
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:  # both variants, whichever the folder holds
        with_b1 = write(folder, Path(tmp) / "with.onnx", policy=policy, batch_one=True)
        session = ort.InferenceSession(str(with_b1), options, providers=["CPUExecutionProvider"])
        without = write(folder, Path(tmp) / "without.onnx", policy=policy, batch_one=False)
        session_without = ort.InferenceSession(str(without), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def single(inputs):
        return session.run(None, {n: np.asarray(inputs[n], dtype=np.int64) for n in names})

    def single_without(inputs):
        return session_without.run(None, {n: np.asarray(inputs[n], dtype=np.int64) for n in names})

    data = encode(load_glue("sst2", "dev", os.environ.get("GLUE_DIR")), runner.tokenizer, args.max_length)
    pad = runner.tokenizer.pad_token_id
    n = len(data.input_ids)
    ones = [model_inputs(collate(data, [i], pad)) for i in range(min(args.examples, n))]
    batches = [model_inputs(collate(data, list(range(s, min(s + args.batch, n))), pad))
               for s in range(0, n, args.batch)]

    # the same exits, or the timings compare different work
    one_file = [int(single(x)[1][0]) for x in ones]
    assert one_file == [int(single_without(x)[1][0]) for x in ones]
    one_fused = [int(engine.run(runner, x, policy).exit_layer[0]) for x in ones]
    many_file = np.concatenate([single(b)[1] for b in batches])
    many_engine = np.concatenate([engine.run(runner, b, policy).exit_layer.numpy() for b in batches])
    agree_one = float(np.mean(np.array(one_file) == np.array(one_fused)))
    agree_many = float(np.mean(many_file == many_engine))

    results = {"cpu": cpu(), "date": datetime.date.today().isoformat(), "onnxruntime": ort.__version__,
               "precision": props["precision"], "policy": policy.describe(), "threads": args.threads,
               "rounds": args.rounds,
               "command": (f"python benchmarks/single_file_bench.py EXPORT_FOLDER --examples {args.examples} "
                           f"--rounds {args.rounds} --batch {args.batch} --block {args.block} "
                           f"--threads {args.threads} --max-length {args.max_length}"),
               "exits_equal_batch1": agree_one, "exits_equal_batched": agree_many}
    b1 = interleaved({"single_file": single, "single_file_no_batch_one_path": single_without,
                      "fused_batch1": lambda x: engine.run(runner, x, policy), "full": runner.full},
                     ones, args.rounds, args.block)
    mean_ms = {k: 1e3 * statistics.fmean(statistics.median(r[i] for r in v) for i in range(len(ones)))
               for k, v in b1.items()}
    results["batch1"] = {"examples": len(ones), "mean_ms": mean_ms,
                         "mean_exit_layer": statistics.fmean(one_file),
                         "single_over_fused": mean_ms["single_file"] / mean_ms["fused_batch1"],
                         "single_no_batch_one_path_over_fused": mean_ms["single_file_no_batch_one_path"]
                         / mean_ms["fused_batch1"]}
    bb = interleaved({"single_file": single, "per_layer": lambda b: engine.run(runner, b, policy),
                      "full": runner.full}, batches, args.rounds, max(1, args.block // 4))
    total = {k: statistics.median(sum(r) for r in v) for k, v in bb.items()}
    layer_speedup = runner.num_layers / float(np.mean(many_file))
    speedup = {k: total["full"] / total[k] for k in ("single_file", "per_layer")}
    results[f"batch{args.batch}"] = {
        "examples": n, "samples_per_s": {k: n / v for k, v in total.items()},
        "layer_speedup": layer_speedup, "measured_speedup": speedup,
        "kept_of_layer_speedup": {k: v / layer_speedup for k, v in speedup.items()},
        "single_over_per_layer_time": total["single_file"] / total["per_layer"]}
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
