"""ONNX Runtime's fused BERT kernels against the plain ops they replace, one kernel at a time on CPU.

Usage: python benchmarks/ort_kernels.py [--output results/bench/ort_kernels.json] [--threads 1 2]
         [--rounds 50] [--hidden 384] [--intermediate 1536] [--tokens 25 1920]

Each graph holds one kernel (or the plain ops it stands for) on (1, T, hidden) or (1, T,
intermediate) floats: T = 25 (a batch-1 SST-2 sentence) and 1920 (a batch of 32 such padded to 60).
Every variant of one shape runs interleaved with the others, ``--rounds`` times; a figure is the
fastest round in µs (the machine is shared: the minimum carries the least of other people's load).
The sessions are created with and without ONNX Runtime's own graph fusions where it matters: with
its defaults, Add + LayerNormalization becomes SkipLayerNormalization and Add + Gelu becomes
BiasGelu. This is what ``metabert.deploy.fused_layers.SLOW_FUSIONS`` rests on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from metabert.common.machine import INT8_FLAGS, cpu_flags, cpu_model

MS = "com.microsoft"


def cpu_info() -> dict:
    """The CPU model, its cores and which of the instruction sets INT8 speed depends on it has."""
    has = cpu_flags()
    return {"model": cpu_model(), "cores": os.cpu_count(), "flags": {f: f in has for f in INT8_FLAGS}}


def session(nodes, inputs, inits, threads: int, disabled=()) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "kernel", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled))


def variants(tokens: int, hidden: int, inter: int, threads: int) -> dict:
    rng = np.random.default_rng(0)

    def const(name, size):
        return numpy_helper.from_array(rng.standard_normal(size).astype(np.float32), name)

    gamma, beta, bias, ibias = const("gamma", hidden), const("beta", hidden), const("bias", hidden), const("ibias", inter)
    h, i = [1, tokens, hidden], [1, tokens, inter]
    norm_in = [("x", h), ("skip", h)]
    add_ln = [helper.make_node("Add", ["x", "bias"], ["xb"]), helper.make_node("Add", ["xb", "skip"], ["a"]),
              helper.make_node("LayerNormalization", ["a", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    add_gelu = [helper.make_node("Add", ["xi", "ibias"], ["a"]), helper.make_node("Gelu", ["a"], ["y"], domain=MS)]
    return {
        "SkipLayerNormalization (bias, residual, norm)": session(
            [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"], domain=MS,
                              epsilon=1e-12)], norm_in, [gamma, beta, bias], threads),
        "Add + Add + LayerNormalization, left apart": session(add_ln, norm_in, [gamma, beta, bias], threads,
                                                              ("SkipLayerNormFusion",)),
        "Add + Add + LayerNormalization, ORT default fusions": session(add_ln, norm_in, [gamma, beta, bias], threads),
        "LayerNormalization alone": session(
            [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)],
            [("x", h)], [gamma, beta], threads),
        "BiasGelu": session([helper.make_node("BiasGelu", ["xi", "ibias"], ["y"], domain=MS)], [("xi", i)], [ibias],
                            threads),
        "Add + Gelu, left apart": session(add_gelu, [("xi", i)], [ibias], threads, ("BiasGeluFusion",)),
        "Add + Gelu, ORT default fusions": session(add_gelu, [("xi", i)], [ibias], threads),
        "Gelu alone": session([helper.make_node("Gelu", ["xi"], ["y"], domain=MS)], [("xi", i)], [], threads),
        "FastGelu (tanh) with bias": session([helper.make_node("FastGelu", ["xi", "ibias"], ["y"], domain=MS)],
                                             [("xi", i)], [ibias], threads),
    }


def measure(tokens: int, hidden: int, inter: int, threads: int, rounds: int) -> dict:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, tokens, hidden), dtype=np.float32),
             "skip": rng.standard_normal((1, tokens, hidden), dtype=np.float32),
             "xi": rng.standard_normal((1, tokens, inter), dtype=np.float32)}
    sessions = variants(tokens, hidden, inter, threads)
    inputs = {name: {i.name: feeds[i.name] for i in s.get_inputs()} for name, s in sessions.items()}
    times = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(rounds + 3):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            sessions[name].run(None, inputs[name])
            if r >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: {"min_us": float(np.min(t) * 1e6), "median_us": float(np.median(t) * 1e6)} for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="results/bench/ort_kernels.json")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--tokens", type=int, nargs="+", default=[25, 1920])
    args = parser.parse_args(argv)
    report = {"date": dt.date.today().isoformat(), "cpu": cpu_info(), "onnxruntime": ort.__version__,
              "command": "python benchmarks/ort_kernels.py " + " ".join(
                  f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
                  if k != "output"),
              "load_average_start": os.getloadavg()[0], "results": {}}
    for threads in args.threads:
        for tokens in args.tokens:
            key = f"threads {threads}, tokens {tokens}"
            report["results"][key] = measure(tokens, args.hidden, args.intermediate, threads, args.rounds)
            print(key, {k: round(v["min_us"], 1) for k, v in report["results"][key].items()})
    report["load_average_end"] = os.getloadavg()[0]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
